# Everything a fresh machine needs is installed by these targets; `make test` is what CI runs.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < app/pyproject.toml | cut -d' ' -f1)
# Debian packages the tests run for real: Prometheus + promtool, Alertmanager + amtool, and
# docker-compose (1.29, validates the compose file without a Docker engine).
DEBIAN_TOOLS    := prometheus promtool prometheus-alertmanager amtool docker-compose
DEBIAN_PACKAGES := prometheus prometheus-alertmanager docker-compose
PYTEST_ARGS ?=

.PHONY: setup system-deps test bench run-local up down clean

setup: $(STAMP) system-deps

$(STAMP): app/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e 'app[dev]'
	rm -f $(VENV)/.installed-* && touch $@

system-deps:
	@missing=""; for tool in $(DEBIAN_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
	fi

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/pip install --quiet -e 'app[dev,bench]'
	$(PY) -m bench

run-local: $(STAMP)
	$(PY) -m demo.run_local

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

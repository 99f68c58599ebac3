# Everything a fresh machine needs is installed by these targets; `make test` is what CI runs.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < app/pyproject.toml | cut -d' ' -f1)
# Debian packages the tests run for real: Prometheus + promtool, Alertmanager + amtool,
# docker-compose (1.29, validates the compose file without a Docker engine) and redis-server (the
# Celery broker of the notifications worker; `make run-local` uses it too when present), and
# chromium (headless, loads the trail page in tests/trail/web/test_browser.py), and nginx (the HA
# stack's config is loaded and its refusals checked by a real nginx in tests/stack/test_config.py).
DEBIAN_TOOLS    := prometheus promtool prometheus-alertmanager amtool docker-compose redis-server chromium nginx
DEBIAN_PACKAGES := prometheus prometheus-alertmanager docker-compose redis-server chromium nginx-light
PYTEST_ARGS ?=
# Debian puts nginx in /usr/sbin, which a non-login PATH (CI, env -i) may lack.
export PATH := $(PATH):/usr/sbin:/sbin
# Linted and format-checked by `make lint` (settings: [tool.ruff] in app/pyproject.toml); in README.md
# and docs/*.md, ruff format checks the Python examples.
LINTED := app tests bench README.md docs
# The demo (app/demo) is not installed with the library: it runs from source.
DEMO_ENV := PYTHONPATH=$(CURDIR)/app

.PHONY: setup system-deps lint test bench run-local up down clean

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

# Style first: it takes a second, the tests take minutes.
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

test: setup lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/pip install --quiet -e 'app[dev,bench]'
	$(DEMO_ENV) $(PY) -m bench

run-local: $(STAMP)
	$(DEMO_ENV) $(PY) -m demo.run_local

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

"""Configuration: defaults, and bad values refused at start with a message naming the variable."""

from __future__ import annotations

import pytest

from correlation.settings import ConfigError, LokiSettings, Settings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.service, settings.env, settings.header) == ("app", "local", "X-Correlation-ID")
    assert settings.loki.url == "" and settings.loki.tls_verify is True
    assert settings.loki.batch_max_bytes == 1024 * 1024 and settings.loki.batch_max_wait_seconds == 1.0


def test_values_from_env_and_overrides() -> None:
    env = {
        "SERVICE_NAME": "orders",
        "DEPLOY_ENV": "prod",
        "CORRELATION_HEADER": "X-Request-Trace",
        "LOKI_URL": "https://loki.example:3100/",
        "LOKI_TENANT": "team-a",
        "LOKI_BEARER_TOKEN": "t0k",
        "LOKI_TLS_VERIFY": "false",
        "LOKI_BUFFER_MAX_BYTES": "1000",
    }
    settings = Settings.from_env(env, service="payments")
    assert settings.service == "payments" and settings.env == "prod" and settings.header == "X-Request-Trace"
    loki = settings.loki
    assert loki.push_url == "https://loki.example:3100/loki/api/v1/push"
    assert loki.auth_headers() == {"X-Scope-OrgID": "team-a", "Authorization": "Bearer t0k"}
    assert loki.tls_verify is False and loki.buffer_max_bytes == 1000


def test_basic_auth() -> None:
    loki = LokiSettings.from_env({"LOKI_URL": "http://l:3100", "LOKI_USERNAME": "u", "LOKI_PASSWORD": "p"})
    assert loki.basic_auth == ("u", "p") and "Authorization" not in loki.auth_headers()


@pytest.mark.parametrize(
    "env, names",
    [
        ({"LOKI_URL": "loki:3100"}, "LOKI_URL"),
        ({"LOKI_URL": "ftp://loki"}, "LOKI_URL"),
        ({"LOKI_BATCH_MAX_BYTES": "lots"}, "LOKI_BATCH_MAX_BYTES"),
        ({"LOKI_BATCH_MAX_BYTES": "-5"}, "LOKI_BATCH_MAX_BYTES"),
        ({"LOKI_TIMEOUT_SECONDS": "0"}, "LOKI_TIMEOUT_SECONDS"),
        ({"LOKI_TLS_VERIFY": "/no/such/ca.pem"}, "LOKI_TLS_VERIFY"),
        ({"LOKI_USERNAME": "u"}, "LOKI_PASSWORD"),
        ({"LOKI_USERNAME": "u", "LOKI_PASSWORD": "p", "LOKI_BEARER_TOKEN": "t"}, "LOKI_BEARER_TOKEN"),
        ({"SERVICE_NAME": "my service"}, "SERVICE_NAME"),
        ({"DEPLOY_ENV": "prod\n"}, None),  # stripped: valid
        ({"CORRELATION_HEADER": "X Bad"}, "CORRELATION_HEADER"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LOG_STDOUT": "maybe"}, "LOG_STDOUT"),
        ({"LOG_STDOUT": "false"}, "LOG_STDOUT=false needs LOKI_URL"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], names: str | None) -> None:
    if names is None:
        Settings.from_env(env)
        return
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert names in str(error.value)

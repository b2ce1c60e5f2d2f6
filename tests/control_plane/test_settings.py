"""Production refuses to boot misconfigured, listing every problem, before binding a port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from control_plane.settings import Settings, SettingsError
from tests.conftest import free_port

GOOD = {
    "MAGISTRATE_ENV": "production",
    "MAGISTRATE_SECRET_KEY": "s" * 20 + "-a-long-random-production-key-9f8e7d",
    "MAGISTRATE_PUBLIC_URL": "https://magistrate.example.com",
    "MAGISTRATE_ALLOWED_HOSTS": "magistrate.example.com",
    "MAGISTRATE_DEBUG": "false",
    "MAGISTRATE_KEY_PROVIDER": "aws-kms",
    "MAGISTRATE_DATABASE_URL": "postgresql://m:pw@db.internal:5432/magistrate_control"
                               "?sslmode=verify-full",
    "MAGISTRATE_REDIS_URL": "rediss://:pw@redis.internal:6380/0",
}


def problems(**changes: str | None) -> list[str]:
    env = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return Settings.from_env(env).production_problems()


def test_a_good_production_configuration_has_no_problems():
    assert problems() == []


@pytest.mark.parametrize(("changes", "expected"), [
    ({"MAGISTRATE_SECRET_KEY": None}, "MAGISTRATE_SECRET_KEY is not set"),
    ({"MAGISTRATE_SECRET_KEY": "short-key"}, "it must be at least 32"),
    ({"MAGISTRATE_SECRET_KEY": "please-change-this-secret-key-in-production"},
     "known default"),
    ({"MAGISTRATE_PUBLIC_URL": "http://magistrate.example.com"}, "must start with https://"),
    ({"MAGISTRATE_DEBUG": "true"}, "MAGISTRATE_DEBUG is on"),
    ({"MAGISTRATE_ALLOWED_HOSTS": ""}, "MAGISTRATE_ALLOWED_HOSTS is empty"),
    ({"MAGISTRATE_ALLOWED_HOSTS": "magistrate.example.com,*"}, "accepts any Host header"),
    ({"MAGISTRATE_KEY_PROVIDER": "local"}, "'local', which is for development only"),
    ({"MAGISTRATE_DATABASE_URL": "postgresql://m:pw@db.internal/magistrate_control"},
     "MAGISTRATE_DATABASE_URL points off this machine without TLS"),
    ({"MAGISTRATE_DATABASE_URL": None}, "MAGISTRATE_DATABASE_URL is not set"),
    ({"MAGISTRATE_REDIS_URL": "redis://redis.internal:6379/0"},
     "MAGISTRATE_REDIS_URL points off this machine without TLS"),
    ({"MAGISTRATE_REDIS_URL": None}, "MAGISTRATE_REDIS_URL is not set"),
    ({"MAGISTRATE_ADMIN_PASSWORD": "admin"}, "known default password"),
    ({"MAGISTRATE_ADMIN_PASSWORD": "Short1!"}, "at least 12 characters"),
    ({"MAGISTRATE_METRICS_TOKEN": "short-token"}, "MAGISTRATE_METRICS_TOKEN must be at least"),
    ({"MAGISTRATE_METRICS_TOKEN": "changeme"}, "MAGISTRATE_METRICS_TOKEN must be at least"),
    ({"MAGISTRATE_OTLP_ENDPOINT": "http://collector.internal:4318/v1/traces"},
     "MAGISTRATE_OTLP_ENDPOINT points off this machine without TLS"),
])
def test_each_misconfiguration_is_named(changes, expected):
    found = problems(**changes)
    assert len(found) == 1, found
    assert expected in found[0]


@pytest.mark.parametrize(("changes", "expected"), [
    ({"MAGISTRATE_TRUST_PROXY_HEADERS": "true"}, "does not say which proxies to trust"),
    ({"MAGISTRATE_TRUST_PROXY_HEADERS": "false", "MAGISTRATE_TRUSTED_PROXIES": "10.0.0.0/8"},
     "contradicts MAGISTRATE_TRUSTED_PROXIES"),
    ({"MAGISTRATE_TRUSTED_PROXIES": "10.0.0.0/8,0.0.0.0/0"}, "trusts every address"),
    ({"MAGISTRATE_TRUSTED_PROXIES": "::/0"}, "trusts every address"),
])
def test_proxy_trust_must_be_explicit_in_production(changes, expected):
    found = problems(**changes)
    assert len(found) == 1, found
    assert expected in found[0]
    assert problems(MAGISTRATE_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.1") == []
    assert problems(MAGISTRATE_TRUSTED_PROXIES="10.0.0.0/8",
                    MAGISTRATE_TRUST_PROXY_HEADERS="true") == []


def test_trusted_proxies_must_be_addresses_or_networks():
    with pytest.raises(SettingsError, match="MAGISTRATE_TRUSTED_PROXIES must list networks"):
        Settings.from_env({"MAGISTRATE_TRUSTED_PROXIES": "proxy.internal"})


def test_loopback_database_and_redis_need_no_tls():
    assert problems(MAGISTRATE_DATABASE_URL="postgresql://m:pw@127.0.0.1:5432/c",
                    MAGISTRATE_REDIS_URL="redis://localhost:6379/0") == []


def test_secrets_never_print():
    settings = Settings.from_env(GOOD)
    text = repr(settings) + str(settings)
    assert GOOD["MAGISTRATE_SECRET_KEY"] not in text
    assert "pw@db.internal" not in text


def test_unparseable_values_are_explained():
    with pytest.raises(SettingsError, match="MAGISTRATE_PORT must be a whole number"):
        Settings.from_env({"MAGISTRATE_PORT": "eighty"})
    with pytest.raises(SettingsError, match="MAGISTRATE_ENV must be one of"):
        Settings.from_env({"MAGISTRATE_ENV": "prod"})


@pytest.mark.parametrize("command", ["web", "worker", "migrate", "up"])
def test_production_refuses_to_boot_listing_every_problem(command, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update({
        "MAGISTRATE_ENV": "production",
        "MAGISTRATE_SECRET_KEY": "changeme",
        "MAGISTRATE_PUBLIC_URL": "http://example.com",
        "MAGISTRATE_DEBUG": "true",
        "MAGISTRATE_ALLOWED_HOSTS": "",
        "MAGISTRATE_KEY_PROVIDER": "local",
        "MAGISTRATE_DATABASE_URL": "postgresql://m:pw@db.example.com/c",
        "MAGISTRATE_REDIS_URL": "redis://redis.example.com:6379/0",
        "MAGISTRATE_ADMIN_PASSWORD": "password",
        "MAGISTRATE_PORT": str(port),
        "MAGISTRATE_HOME": str(tmp_path / "home"),
    })
    result = subprocess.run([sys.executable, "-m", "control_plane", command], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refuses to start in production" in result.stderr
    for expected in ("MAGISTRATE_SECRET_KEY", "MAGISTRATE_PUBLIC_URL", "MAGISTRATE_DEBUG",
                     "MAGISTRATE_ALLOWED_HOSTS", "MAGISTRATE_KEY_PROVIDER",
                     "MAGISTRATE_DATABASE_URL", "MAGISTRATE_REDIS_URL",
                     "MAGISTRATE_ADMIN_PASSWORD"):
        assert expected in result.stderr, expected
    assert "9 problem(s)" not in result.stderr and "8 problem(s)" in result.stderr
    # nothing was started: no port bound, no home folder created
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "home").exists()


def test_observability_settings_in_production_when_sound():
    assert problems(MAGISTRATE_METRICS_TOKEN="t" * 20 + "-scrape-token-0123456789",
                    MAGISTRATE_OTLP_ENDPOINT="http://127.0.0.1:4318/v1/traces") == []
    assert problems(MAGISTRATE_OTLP_ENDPOINT="https://collector.internal/v1/traces") == []


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("MAGISTRATE_OTLP_ENDPOINT", "collector:4318", "must be an http:// or https:// URL"),
    ("MAGISTRATE_TRACE_SAMPLE_RATIO", "half", "must be a number from 0 to 1"),
    ("MAGISTRATE_TRACE_SAMPLE_RATIO", "1.5", "must be from 0 to 1"),
])
def test_observability_settings_that_cannot_be_read_are_named(name, value, expected):
    with pytest.raises(SettingsError, match=expected):
        Settings.from_env({name: value})


def test_the_metrics_token_never_prints():
    settings = Settings.from_env({"MAGISTRATE_METRICS_TOKEN": "scrape-secret-value"})
    assert "scrape-secret-value" not in repr(settings)
    assert settings.metrics_token is not None
    assert settings.metrics_token.reveal() == "scrape-secret-value"

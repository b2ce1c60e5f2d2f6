"""Every setting Magistrate reads, read once, typed and documented.

Nothing else in the code base reads a setting from ``os.environ``: ``Settings.from_env()`` is the
one place (``magistrate up`` only copies the environment on to the processes it starts).
Each entry of ``SETTINGS`` is documented in the tables of ``docs/configuration.md`` (a test checks).

In production (``MAGISTRATE_ENV=production``) ``production_problems()`` lists every unsafe
combination, and the CLI refuses to start, before binding a port, when the list is not empty.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ENVIRONMENTS = ("development", "test", "production")
KEY_PROVIDERS = ("local", "aws-kms", "azure-keyvault", "gcp-kms")
SMTP_TLS_MODES = ("starttls", "ssl", "none")

# Values that appear in docs, examples and tutorials: never acceptable in production.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "secret",
        "secret-key",
        "dev",
        "development",
        "insecure",
        "magistrate",
        "please-change-this-secret-key-in-production",
        "x" * 32,
        "0" * 32,
    }
)
KNOWN_DEFAULT_PASSWORDS = frozenset(
    {"admin", "password", "changeme", "magistrate", "123456", "12345678", "letmein", "owner"}
)
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
MIN_SECRET_KEY_BYTES = 32
MIN_ADMIN_PASSWORD_LENGTH = 12


class Secret:
    """A string that never prints: ``repr``/``str`` show asterisks; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SettingDoc:
    name: str
    default: str
    description: str


# The documented list. docs/configuration.md's tables must name every one (tests/test_docs.py).
SETTINGS: tuple[SettingDoc, ...] = (
    SettingDoc("MAGISTRATE_ENV", "development", "`development`, `test` or `production`."),
    SettingDoc(
        "MAGISTRATE_HOME",
        "./.magistrate",
        "Folder (mode 0700) for embedded Postgres and Redis data, the development secret key "
        "and local key files.",
    ),
    SettingDoc(
        "MAGISTRATE_SECRET_KEY",
        "generated into `$MAGISTRATE_HOME/secret_key` outside production",
        "Signs session cookies and derives the control plane's sealing key. Production: required, "
        "at least 32 bytes, not a known default.",
    ),
    SettingDoc(
        "MAGISTRATE_PUBLIC_URL",
        "http://$MAGISTRATE_HOST:$MAGISTRATE_PORT",
        "The address users reach. Production: must be `https://`. The CSRF Origin check accepts "
        "its origin (outside production also the request's own `scheme://Host`)."),
    SettingDoc(
        "MAGISTRATE_ALLOWED_HOSTS",
        "127.0.0.1,localhost",
        "Comma-separated Host header values the web app answers. Production: must not be empty.",
    ),
    SettingDoc("MAGISTRATE_DEBUG", "false", "Verbose logs. Production: must be off."),
    SettingDoc(
        "MAGISTRATE_DATABASE_URL",
        "embedded Postgres under `$MAGISTRATE_HOME`",
        "Control-plane Postgres (`postgresql://…`). Its role needs CREATEDB and CREATEROLE. "
        "Production: required; off-loopback it must use `sslmode=require`, `verify-ca` or "
        "`verify-full`.",
    ),
    SettingDoc(
        "MAGISTRATE_REDIS_URL",
        "embedded Redis under `$MAGISTRATE_HOME`",
        "Redis for jobs and rate limits. Production: required; off-loopback it must be `rediss://`.",
    ),
    SettingDoc(
        "MAGISTRATE_KEY_PROVIDER",
        "local",
        "Default key provider for new tenants: `local`, `aws-kms`, `azure-keyvault`, `gcp-kms`. "
        "Production: `local` is refused.",
    ),
    SettingDoc(
        "MAGISTRATE_ADMIN_EMAIL",
        "owner@magistrate.local",
        "E-mail of the first Owner, created by `magistrate up` when no user exists.",
    ),
    SettingDoc(
        "MAGISTRATE_ADMIN_PASSWORD",
        "a random one-time password, printed once",
        "Password of the first Owner. Production: at least 12 characters and not a known default.",
    ),
    SettingDoc("MAGISTRATE_HOST", "127.0.0.1", "Address `magistrate web` binds."),
    SettingDoc("MAGISTRATE_PORT", "8000", "Port `magistrate web` binds."),
    SettingDoc("MAGISTRATE_LOG_LEVEL", "INFO", "Python log level of the structured logs."),
    SettingDoc(
        "MAGISTRATE_TRUSTED_PROXIES",
        "",
        "Comma-separated addresses or networks of the reverse proxies in front of Magistrate "
        "(e.g. `127.0.0.1` or `10.0.0.0/8`). Only from these peers are `X-Forwarded-For` and "
        "`X-Forwarded-Proto` believed; the client address is the right-most `X-Forwarded-For` "
        "entry that is not a trusted proxy. Empty: the TCP peer is the client. Production: must "
        "not trust every address (`0.0.0.0/0`, `::/0`).",
    ),
    SettingDoc(
        "MAGISTRATE_TRUST_PROXY_HEADERS",
        "false",
        "Deprecated, replaced by `MAGISTRATE_TRUSTED_PROXIES`. `true` with no trusted proxies "
        "named trusts proxies on this machine (loopback) only. Production: `true` without "
        "`MAGISTRATE_TRUSTED_PROXIES`, or `false` with it, is refused.",
    ),
    SettingDoc(
        "MAGISTRATE_LOGIN_MAX_PER_IP",
        "20",
        "Sign-in attempts allowed per client address per window before 429.",
    ),
    SettingDoc(
        "MAGISTRATE_LOGIN_MAX_PER_ACCOUNT",
        "5",
        "Failed sign-in attempts from one address on one account before that address must wait "
        "before each further attempt on it (2 s, doubling); other addresses are not slowed, "
        "except that an account under attack gives each new address one attempt.",
    ),
    SettingDoc(
        "MAGISTRATE_LOGIN_WINDOW_SECONDS", "300", "Length of the sign-in rate-limit window."
    ),
    SettingDoc(
        "MAGISTRATE_LOGIN_MAX_BACKOFF_SECONDS",
        "900",
        "Longest wait the sign-in backoff imposes on one address for one account.",
    ),
    SettingDoc("MAGISTRATE_EMBEDDED_PG_PORT", "54329", "Port of the embedded Postgres (loopback)."),
    SettingDoc("MAGISTRATE_EMBEDDED_REDIS_PORT", "63790", "Port of the embedded Redis (loopback)."),
    SettingDoc("MAGISTRATE_AWS_REGION", "us-east-1", "Region of the AWS KMS client."),
    SettingDoc(
        "MAGISTRATE_AWS_KMS_ENDPOINT",
        "AWS's public endpoint",
        "Endpoint URL of AWS KMS (a VPC endpoint, or a local test server).",
    ),
    SettingDoc(
        "MAGISTRATE_GCP_KMS_ENDPOINT",
        "Google's public endpoint",
        "Endpoint of Cloud KMS (a Private Service Connect endpoint, or a local test server).",
    ),
    SettingDoc(
        "MAGISTRATE_DEK_CACHE_SECONDS",
        "300",
        "How long an unwrapped tenant data key stays in memory; a revoked customer key stops "
        "working within this time.",
    ),
    SettingDoc(
        "MAGISTRATE_DEK_CACHE_USES",
        "10000",
        "How many uses an unwrapped data key serves before it is unwrapped again.",
    ),
    SettingDoc(
        "MAGISTRATE_GATEWAY_AMBIENT_IDENTITY",
        "false",
        "Let `azure-openai` and `bedrock` routes without a credential sign with the platform's "
        "own cloud identity (managed identity, the AWS default chain), towards the providers' "
        "own hosts only.",
    ),
    SettingDoc(
        "MAGISTRATE_GATEWAY_PRIVATE_NETWORKS",
        "",
        "Comma-separated networks (e.g. `10.0.0.0/8,127.0.0.0/8`) that gateway routes and "
        "tenants' webhooks may reach; other loopback, private and reserved addresses are "
        "refused at connect time, link-local always.",
    ),
    SettingDoc(
        "MAGISTRATE_SESSION_CLEANUP_SECONDS",
        "900",
        "How often the worker's periodic job deletes expired sessions.",
    ),
    SettingDoc(
        "MAGISTRATE_JOB_LEASE_SECONDS",
        "30",
        "How long a worker's lease on a running job lasts without renewal; a job whose worker "
        "died runs again once its lease has expired.",
    ),
    SettingDoc(
        "MAGISTRATE_JOB_HEARTBEAT_SECONDS",
        "10",
        "How often a worker renews the lease of the job it runs (less than the lease).",
    ),
    SettingDoc(
        "MAGISTRATE_JOB_REAPER_SECONDS",
        "10",
        "How often each worker returns jobs whose lease expired to the outbox.",
    ),
    SettingDoc(
        "MAGISTRATE_JOB_SHUTDOWN_GRACE_SECONDS",
        "60",
        "How long a worker told to stop (SIGTERM) lets its running job finish before it stops "
        "it and releases its lease, so another worker runs it again.",
    ),
    SettingDoc(
        "MAGISTRATE_SMTP_HOST",
        "unset (approval e-mails are skipped)",
        "SMTP server for approval notifications.",
    ),
    SettingDoc("MAGISTRATE_SMTP_PORT", "587", "Port of the SMTP server."),
    SettingDoc(
        "MAGISTRATE_SMTP_TLS",
        "starttls",
        "`starttls`, `ssl` (implicit TLS) or `none`. Production: `none` only to a loopback host.",
    ),
    SettingDoc("MAGISTRATE_SMTP_USERNAME", "unset", "SMTP user name (with the password)."),
    SettingDoc("MAGISTRATE_SMTP_PASSWORD", "unset", "SMTP password."),
    SettingDoc(
        "MAGISTRATE_SMTP_FROM", "magistrate@localhost", "Sender address of notification e-mails."
    ),
    SettingDoc(
        "MAGISTRATE_SIGNAL_UPLOAD_MAX_MB",
        "200",
        "Largest signal export file (MB) the dashboard upload and `magistrate signals import` "
        "accept; a larger one is refused whole.",
    ),
    SettingDoc(
        "MAGISTRATE_BACKUP_DESTINATION",
        "`$MAGISTRATE_HOME/backups`",
        "Where `magistrate backup` publishes encrypted dumps and their signed manifests: a local "
        "folder (made with mode 0700) or `s3://BUCKET/PREFIX` (ops/BACKUPS.md).",
    ),
    SettingDoc(
        "MAGISTRATE_BACKUP_S3_ENDPOINT",
        "unset",
        "Endpoint URL of an S3-compatible store (MinIO, Ceph, a moto server); unset for AWS S3.",
    ),
    SettingDoc(
        "MAGISTRATE_BACKUP_OBJECT_LOCK",
        "unset",
        "`GOVERNANCE:DAYS` or `COMPLIANCE:DAYS`: the S3 object-lock retention every published "
        "backup object and manifest gets (the bucket must have object lock enabled).",
    ),
    SettingDoc(
        "MAGISTRATE_BACKUP_KEY_PROVIDER",
        "`MAGISTRATE_KEY_PROVIDER`",
        "Key provider of the platform key that wraps the control-plane backup's data key.",
    ),
    SettingDoc(
        "MAGISTRATE_BACKUP_KEY_REF",
        "`platform-backups`",
        "Key reference (in that provider) of the platform key that wraps the control-plane "
        "backup's data key. With the `local` provider the key file is made on first use.",
    ),
    SettingDoc(
        "MAGISTRATE_BACKUP_AGE_RECIPIENTS",
        "unset",
        "age X25519 recipients (`age1...`, separated by commas or spaces): when set, the "
        "control-plane backup's data key is age-encrypted to them instead of the platform "
        "backup key; `magistrate restore control --age-identity FILE` restores it.",
    ),
    SettingDoc(
        "MAGISTRATE_MCP_CALLS_PER_MINUTE",
        "120",
        "Tool calls one MCP client (agent) may make per minute through the tenant's MCP "
        "endpoint.",
    ),
    SettingDoc(
        "MAGISTRATE_MCP_TOOL_CALLS_PER_MINUTE",
        "60",
        "Calls of one tool one MCP client (agent) may make per minute.",
    ),
    SettingDoc(
        "MAGISTRATE_MCP_SESSIONS_PER_CLIENT",
        "8",
        "Open MCP sessions (`Mcp-Session-Id`) one client (an API key or OAuth grant) may hold "
        "in one web process; one more is refused with 429 until one ends or expires.",
    ),
    SettingDoc(
        "MAGISTRATE_MCP_MAX_SESSIONS",
        "2000",
        "Open MCP sessions one web process holds for all clients together; one more is "
        "refused with 503.",
    ),
    SettingDoc(
        "MAGISTRATE_MCP_SESSION_IDLE_SECONDS",
        "1800",
        "Seconds an MCP session may stay idle (no request in flight, no open GET stream) "
        "before it is ended; its id then answers 404 and the client initializes again.",
    ),
    SettingDoc(
        "MAGISTRATE_MCP_SESSION_RECHECK_SECONDS",
        "30",
        "Seconds between re-checks of every live MCP session's credential (key or grant "
        "revoked or expired, tenant suspended, creator no longer entitled); a session whose "
        "credential no longer passes is ended with its GET stream and subscriptions, even "
        "when its client sends nothing more.",
    ),
    SettingDoc(
        "MAGISTRATE_METRICS_TOKEN",
        "unset (`/metrics` answers 404)",
        "Bearer token a Prometheus scraper sends (`Authorization: Bearer …`) to read `/metrics`. "
        "Production: at least 32 bytes and not a known default.",
    ),
    SettingDoc(
        "MAGISTRATE_OTLP_ENDPOINT",
        "unset (no traces)",
        "OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`) that receives a "
        "span per gateway call (docs/observability.md). Production: `https://` off this machine.",
    ),
    SettingDoc(
        "MAGISTRATE_TRACE_SAMPLE_RATIO",
        "1.0",
        "Share of gateway calls traced when `MAGISTRATE_OTLP_ENDPOINT` is set, from 0 to 1.",
    ),
)


class SettingsError(ValueError):
    """A setting has a value that cannot be parsed; the message names it."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}.")


def _int(name: str, raw: str, minimum: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}.")
    return value


def _networks(name: str, raw: str) -> tuple[str, ...]:
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise SettingsError(f"{name} must list networks such as 10.0.0.0/8, "
                                f"127.0.0.0/8; {item!r} is not one.") from None
    return tuple(out)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _object_lock(raw: str) -> tuple[str, int] | None:
    raw = raw.strip()
    if not raw:
        return None
    mode, _, days = raw.partition(":")
    if mode.upper() not in ("GOVERNANCE", "COMPLIANCE") or not days.strip().isdigit() \
            or int(days) < 1:
        raise SettingsError("MAGISTRATE_BACKUP_OBJECT_LOCK must be GOVERNANCE:DAYS or "
                            f"COMPLIANCE:DAYS (DAYS at least 1), not {raw!r}.")
    return mode.upper(), int(days)


def _age_recipients(raw: str) -> tuple[str, ...]:
    found = tuple(r for r in raw.replace(",", " ").split() if r)
    bad = [r for r in found if not (r.startswith("age1") and 50 <= len(r) <= 100)]
    if bad:
        raise SettingsError(f"MAGISTRATE_BACKUP_AGE_RECIPIENTS holds {bad[0][:40]!r}, which is "
                            "not an age X25519 recipient (age1...).")
    return found


def _ratio(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number from 0 to 1, not {raw!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"{name} must be from 0 to 1, not {value}.")
    return value


def _http_url(name: str, raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name} must be an http:// or https:// URL, not {raw!r}.")
    return raw


def _backup_provider(raw: str) -> str | None:
    raw = raw.strip()
    if raw and raw not in KEY_PROVIDERS:
        raise SettingsError(f"MAGISTRATE_BACKUP_KEY_PROVIDER must be one of "
                            f"{', '.join(KEY_PROVIDERS)}, not {raw!r}.")
    return raw or None


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    home: Path = Path(".magistrate")
    secret_key: Secret | None = None
    public_url: str = "http://127.0.0.1:8000"
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    debug: bool = False
    database_url: Secret | None = None
    redis_url: Secret | None = None
    key_provider: str = "local"
    admin_email: str = "owner@magistrate.local"
    admin_password: Secret | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    trust_proxy_headers: bool | None = None  # None: not set (deprecated setting)
    trusted_proxies: tuple[str, ...] = ()
    login_max_per_ip: int = 20
    login_max_per_account: int = 5
    login_window_seconds: int = 300
    login_max_backoff_seconds: int = 900
    embedded_pg_port: int = 54329
    embedded_redis_port: int = 63790
    session_cleanup_seconds: int = 900
    job_lease_seconds: int = 30
    job_heartbeat_seconds: int = 10
    job_reaper_seconds: int = 10
    job_shutdown_grace_seconds: int = 60
    aws_region: str = "us-east-1"
    aws_kms_endpoint: str | None = None
    gcp_kms_endpoint: str | None = None
    dek_cache_seconds: int = 300
    dek_cache_uses: int = 10_000
    # the gateway's per-process cache of checked API keys (control_plane/tenancy/key_cache.py):
    # the hard bound on an entry's age; 0 turns the cache off (every call reads the key)
    gateway_key_cache_seconds: int = 5
    # the gateway's call path on the web process's event loop (tenant_runtime/bridge.py); off:
    # in the thread pool, as before
    gateway_on_event_loop: bool = True
    gateway_ambient_identity: bool = False
    gateway_private_networks: tuple[str, ...] = ()
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_tls: str = "starttls"
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_from: str = "magistrate@localhost"
    signal_upload_max_mb: int = 200
    backup_destination: str | None = None  # None: $MAGISTRATE_HOME/backups
    backup_s3_endpoint: str | None = None
    backup_object_lock: tuple[str, int] | None = None
    backup_key_provider: str | None = None  # None: key_provider
    backup_key_ref: str = "platform-backups"
    backup_age_recipients: tuple[str, ...] = ()
    mcp_calls_per_minute: int = 120
    mcp_tool_calls_per_minute: int = 60
    mcp_sessions_per_client: int = 8
    mcp_max_sessions: int = 2000
    mcp_session_idle_seconds: int = 1800
    mcp_session_recheck_seconds: int = 30
    metrics_token: Secret | None = None
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = 1.0
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(name, default)

        def secret(name: str) -> Secret | None:
            raw = env.get(name)
            return Secret(raw) if raw else None

        environment = get("MAGISTRATE_ENV", "development").strip().lower()
        if environment not in ENVIRONMENTS:
            raise SettingsError(
                f"MAGISTRATE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}."
            )
        hosts = tuple(
            h.strip()
            for h in get("MAGISTRATE_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
            if h.strip()
        )
        provider = get("MAGISTRATE_KEY_PROVIDER", "local").strip()
        if provider not in KEY_PROVIDERS:
            raise SettingsError(
                f"MAGISTRATE_KEY_PROVIDER must be one of {', '.join(KEY_PROVIDERS)}, "
                f"not {provider!r}."
            )
        smtp_tls = get("MAGISTRATE_SMTP_TLS", "starttls").strip().lower()
        if smtp_tls not in SMTP_TLS_MODES:
            raise SettingsError(
                f"MAGISTRATE_SMTP_TLS must be one of {', '.join(SMTP_TLS_MODES)}, "
                f"not {smtp_tls!r}."
            )
        lease = _int("MAGISTRATE_JOB_LEASE_SECONDS", get("MAGISTRATE_JOB_LEASE_SECONDS", "30"))
        heartbeat = _int("MAGISTRATE_JOB_HEARTBEAT_SECONDS",
                         get("MAGISTRATE_JOB_HEARTBEAT_SECONDS", "10"))
        if heartbeat >= lease:
            raise SettingsError(
                f"MAGISTRATE_JOB_HEARTBEAT_SECONDS ({heartbeat}) must be less than "
                f"MAGISTRATE_JOB_LEASE_SECONDS ({lease}), or leases expire under live workers."
            )
        return cls(
            env=environment,
            home=Path(get("MAGISTRATE_HOME", ".magistrate")).expanduser().absolute(),
            secret_key=secret("MAGISTRATE_SECRET_KEY"),
            public_url=get(
                "MAGISTRATE_PUBLIC_URL",
                f"http://{get('MAGISTRATE_HOST', '127.0.0.1')}:{get('MAGISTRATE_PORT', '8000')}",
            ).rstrip("/"),
            allowed_hosts=hosts,
            debug=_bool("MAGISTRATE_DEBUG", get("MAGISTRATE_DEBUG", "false")),
            database_url=secret("MAGISTRATE_DATABASE_URL"),
            redis_url=secret("MAGISTRATE_REDIS_URL"),
            key_provider=provider,
            admin_email=get("MAGISTRATE_ADMIN_EMAIL", "owner@magistrate.local").strip().lower(),
            admin_password=secret("MAGISTRATE_ADMIN_PASSWORD"),
            host=get("MAGISTRATE_HOST", "127.0.0.1"),
            port=_int("MAGISTRATE_PORT", get("MAGISTRATE_PORT", "8000")),
            log_level=get("MAGISTRATE_LOG_LEVEL", "INFO").upper(),
            trust_proxy_headers=None if env.get("MAGISTRATE_TRUST_PROXY_HEADERS") is None
            else _bool("MAGISTRATE_TRUST_PROXY_HEADERS", env["MAGISTRATE_TRUST_PROXY_HEADERS"]),
            trusted_proxies=_networks("MAGISTRATE_TRUSTED_PROXIES",
                                      get("MAGISTRATE_TRUSTED_PROXIES", "")),
            login_max_per_ip=_int(
                "MAGISTRATE_LOGIN_MAX_PER_IP", get("MAGISTRATE_LOGIN_MAX_PER_IP", "20")
            ),
            login_max_per_account=_int(
                "MAGISTRATE_LOGIN_MAX_PER_ACCOUNT", get("MAGISTRATE_LOGIN_MAX_PER_ACCOUNT", "5")
            ),
            login_window_seconds=_int(
                "MAGISTRATE_LOGIN_WINDOW_SECONDS", get("MAGISTRATE_LOGIN_WINDOW_SECONDS", "300")
            ),
            login_max_backoff_seconds=_int(
                "MAGISTRATE_LOGIN_MAX_BACKOFF_SECONDS",
                get("MAGISTRATE_LOGIN_MAX_BACKOFF_SECONDS", "900"),
            ),
            embedded_pg_port=_int(
                "MAGISTRATE_EMBEDDED_PG_PORT", get("MAGISTRATE_EMBEDDED_PG_PORT", "54329")
            ),
            embedded_redis_port=_int(
                "MAGISTRATE_EMBEDDED_REDIS_PORT", get("MAGISTRATE_EMBEDDED_REDIS_PORT", "63790")
            ),
            session_cleanup_seconds=_int(
                "MAGISTRATE_SESSION_CLEANUP_SECONDS",
                get("MAGISTRATE_SESSION_CLEANUP_SECONDS", "900"),
            ),
            job_lease_seconds=lease,
            job_heartbeat_seconds=heartbeat,
            job_reaper_seconds=_int(
                "MAGISTRATE_JOB_REAPER_SECONDS", get("MAGISTRATE_JOB_REAPER_SECONDS", "10")
            ),
            job_shutdown_grace_seconds=_int(
                "MAGISTRATE_JOB_SHUTDOWN_GRACE_SECONDS",
                get("MAGISTRATE_JOB_SHUTDOWN_GRACE_SECONDS", "60"),
            ),
            aws_region=get("MAGISTRATE_AWS_REGION", "us-east-1"),
            aws_kms_endpoint=env.get("MAGISTRATE_AWS_KMS_ENDPOINT") or None,
            gcp_kms_endpoint=env.get("MAGISTRATE_GCP_KMS_ENDPOINT") or None,
            dek_cache_seconds=_int(
                "MAGISTRATE_DEK_CACHE_SECONDS", get("MAGISTRATE_DEK_CACHE_SECONDS", "300")
            ),
            dek_cache_uses=_int(
                "MAGISTRATE_DEK_CACHE_USES", get("MAGISTRATE_DEK_CACHE_USES", "10000")
            ),
            gateway_key_cache_seconds=_int(
                "MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS",
                get("MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS", "5"), minimum=0),
            gateway_on_event_loop=_bool("MAGISTRATE_GATEWAY_ON_EVENT_LOOP",
                                        get("MAGISTRATE_GATEWAY_ON_EVENT_LOOP", "true")),
            gateway_ambient_identity=_bool("MAGISTRATE_GATEWAY_AMBIENT_IDENTITY",
                                           get("MAGISTRATE_GATEWAY_AMBIENT_IDENTITY", "false")),
            gateway_private_networks=_networks("MAGISTRATE_GATEWAY_PRIVATE_NETWORKS",
                                               get("MAGISTRATE_GATEWAY_PRIVATE_NETWORKS", "")),
            smtp_host=get("MAGISTRATE_SMTP_HOST", "").strip() or None,
            smtp_port=_int("MAGISTRATE_SMTP_PORT", get("MAGISTRATE_SMTP_PORT", "587")),
            smtp_tls=smtp_tls,
            smtp_username=get("MAGISTRATE_SMTP_USERNAME", "").strip() or None,
            smtp_password=secret("MAGISTRATE_SMTP_PASSWORD"),
            smtp_from=get("MAGISTRATE_SMTP_FROM", "magistrate@localhost").strip(),
            signal_upload_max_mb=_int("MAGISTRATE_SIGNAL_UPLOAD_MAX_MB",
                                      get("MAGISTRATE_SIGNAL_UPLOAD_MAX_MB", "200")),
            backup_destination=env.get("MAGISTRATE_BACKUP_DESTINATION", "").strip() or None,
            backup_s3_endpoint=env.get("MAGISTRATE_BACKUP_S3_ENDPOINT", "").strip() or None,
            backup_object_lock=_object_lock(env.get("MAGISTRATE_BACKUP_OBJECT_LOCK", "")),
            backup_key_provider=_backup_provider(env.get("MAGISTRATE_BACKUP_KEY_PROVIDER", "")),
            backup_key_ref=get("MAGISTRATE_BACKUP_KEY_REF", "platform-backups").strip()
            or "platform-backups",
            backup_age_recipients=_age_recipients(env.get("MAGISTRATE_BACKUP_AGE_RECIPIENTS",
                                                          "")),
            mcp_calls_per_minute=_int("MAGISTRATE_MCP_CALLS_PER_MINUTE",
                                      get("MAGISTRATE_MCP_CALLS_PER_MINUTE", "120")),
            mcp_tool_calls_per_minute=_int("MAGISTRATE_MCP_TOOL_CALLS_PER_MINUTE",
                                           get("MAGISTRATE_MCP_TOOL_CALLS_PER_MINUTE", "60")),
            mcp_sessions_per_client=_int("MAGISTRATE_MCP_SESSIONS_PER_CLIENT",
                                         get("MAGISTRATE_MCP_SESSIONS_PER_CLIENT", "8")),
            mcp_max_sessions=_int("MAGISTRATE_MCP_MAX_SESSIONS",
                                  get("MAGISTRATE_MCP_MAX_SESSIONS", "2000")),
            mcp_session_idle_seconds=_int("MAGISTRATE_MCP_SESSION_IDLE_SECONDS",
                                          get("MAGISTRATE_MCP_SESSION_IDLE_SECONDS", "1800")),
            mcp_session_recheck_seconds=_int(
                "MAGISTRATE_MCP_SESSION_RECHECK_SECONDS",
                get("MAGISTRATE_MCP_SESSION_RECHECK_SECONDS", "30")),
            metrics_token=secret("MAGISTRATE_METRICS_TOKEN"),
            otlp_endpoint=_http_url("MAGISTRATE_OTLP_ENDPOINT",
                                    get("MAGISTRATE_OTLP_ENDPOINT", "")),
            trace_sample_ratio=_ratio("MAGISTRATE_TRACE_SAMPLE_RATIO",
                                      get("MAGISTRATE_TRACE_SAMPLE_RATIO", "1.0")),
        )

    # ---------------------------------------------------------------- derived values

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def public_origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def session_cookie_name(self) -> str:
        # The __Host- prefix makes the browser insist on Secure, Path=/ and no Domain.
        return "__Host-magistrate_session" if self.secure_cookies else "magistrate_session"

    @property
    def anon_cookie_name(self) -> str:
        return "__Host-magistrate_anon" if self.secure_cookies else "magistrate_anon"

    @property
    def metrics_dir(self) -> Path:
        """Where the processes of one machine leave their metrics for ``/metrics`` to add up
        (prometheus-client's multiprocess mode; docs/observability.md)."""
        return self.home / "metrics"

    @property
    def proxy_networks(self) -> tuple[str, ...]:
        """The proxies whose forwarding headers are believed: ``MAGISTRATE_TRUSTED_PROXIES``, or
        loopback for the deprecated ``MAGISTRATE_TRUST_PROXY_HEADERS=true`` alone."""
        if self.trusted_proxies:
            return self.trusted_proxies
        return LOOPBACK_NETWORKS if self.trust_proxy_headers else ()

    # ---------------------------------------------------------------- production checks

    def production_problems(self) -> list[str]:
        """Every reason this configuration is unsafe for production (empty when it is fine)."""
        problems: list[str] = []
        key = self.secret_key.reveal() if self.secret_key else ""
        if not key:
            problems.append(
                "MAGISTRATE_SECRET_KEY is not set; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`."
            )
        elif key.strip().lower() in KNOWN_DEFAULT_SECRETS:
            problems.append("MAGISTRATE_SECRET_KEY is a known default value; generate a new one.")
        elif len(key.encode()) < MIN_SECRET_KEY_BYTES:
            problems.append(
                f"MAGISTRATE_SECRET_KEY is {len(key.encode())} bytes; it must be at least "
                f"{MIN_SECRET_KEY_BYTES}."
            )
        if not self.public_url.startswith("https://"):
            problems.append(
                f"MAGISTRATE_PUBLIC_URL must start with https:// (it is {self.public_url!r})."
            )
        if self.debug:
            problems.append("MAGISTRATE_DEBUG is on; turn it off in production.")
        if not self.allowed_hosts:
            problems.append("MAGISTRATE_ALLOWED_HOSTS is empty; list the host names users reach.")
        elif "*" in self.allowed_hosts:
            problems.append("MAGISTRATE_ALLOWED_HOSTS contains '*', which accepts any Host "
                            "header; list the host names users reach.")
        if self.key_provider == "local":
            problems.append(
                "MAGISTRATE_KEY_PROVIDER is 'local', which is for development only; "
                "choose aws-kms, azure-keyvault or gcp-kms."
            )
        problems.extend(_database_url_problems(self.database_url))
        problems.extend(_redis_url_problems(self.redis_url))
        if self.smtp_host and self.smtp_tls == "none" and not is_loopback_host(self.smtp_host):
            problems.append("MAGISTRATE_SMTP_TLS is 'none' for an SMTP server off this machine; "
                            "use starttls or ssl.")
        problems.extend(self._proxy_problems())
        if self.admin_password is not None:
            pw = self.admin_password.reveal()
            if pw.lower() in KNOWN_DEFAULT_PASSWORDS:
                problems.append("MAGISTRATE_ADMIN_PASSWORD is a known default password.")
            elif len(pw) < MIN_ADMIN_PASSWORD_LENGTH:
                problems.append(
                    f"MAGISTRATE_ADMIN_PASSWORD must be at least "
                    f"{MIN_ADMIN_PASSWORD_LENGTH} characters."
                )
        problems.extend(self._observability_problems())
        return problems


    def _observability_problems(self) -> list[str]:
        problems: list[str] = []
        token = self.metrics_token.reveal() if self.metrics_token else None
        if token is not None and (token.strip().lower() in KNOWN_DEFAULT_SECRETS
                                  or len(token.encode()) < MIN_SECRET_KEY_BYTES):
            problems.append(
                f"MAGISTRATE_METRICS_TOKEN must be at least {MIN_SECRET_KEY_BYTES} bytes and "
                "not a known default; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")
        if self.otlp_endpoint:
            parts = urlsplit(self.otlp_endpoint)
            if parts.scheme != "https" and not is_loopback_host(parts.hostname):
                problems.append("MAGISTRATE_OTLP_ENDPOINT points off this machine without TLS; "
                                "use https://.")
        return problems

    def _proxy_problems(self) -> list[str]:
        problems: list[str] = []
        if self.trust_proxy_headers is True and not self.trusted_proxies:
            problems.append(
                "MAGISTRATE_TRUST_PROXY_HEADERS=true does not say which proxies to trust; name "
                "them in MAGISTRATE_TRUSTED_PROXIES (e.g. 127.0.0.1 for a proxy on this machine) "
                "and remove MAGISTRATE_TRUST_PROXY_HEADERS."
            )
        if self.trust_proxy_headers is False and self.trusted_proxies:
            problems.append(
                "MAGISTRATE_TRUST_PROXY_HEADERS=false contradicts MAGISTRATE_TRUSTED_PROXIES; "
                "remove MAGISTRATE_TRUST_PROXY_HEADERS (replaced by MAGISTRATE_TRUSTED_PROXIES)."
            )
        everyone = [n for n in self.trusted_proxies if n.endswith("/0")]
        if everyone:
            problems.append(
                f"MAGISTRATE_TRUSTED_PROXIES trusts every address ({', '.join(everyone)}), so "
                "any client could choose the address the sign-in limits see; name your proxies."
            )
        return problems


def _database_url_problems(url: Secret | None) -> list[str]:
    if url is None:
        return ["MAGISTRATE_DATABASE_URL is not set; production uses an external Postgres."]
    parts = urlsplit(url.reveal())
    if not parts.scheme.startswith("postgresql"):
        return ["MAGISTRATE_DATABASE_URL must be a postgresql:// URL."]
    sslmode = parse_qs(parts.query).get("sslmode", [""])[0]
    if not is_loopback_host(parts.hostname) and sslmode not in {
        "require",
        "verify-ca",
        "verify-full",
    }:
        return [
            "MAGISTRATE_DATABASE_URL points off this machine without TLS; add "
            "sslmode=verify-full (or require)."
        ]
    return []


def _redis_url_problems(url: Secret | None) -> list[str]:
    if url is None:
        return ["MAGISTRATE_REDIS_URL is not set; production uses an external Redis."]
    parts = urlsplit(url.reveal())
    if parts.scheme not in {"redis", "rediss"}:
        return ["MAGISTRATE_REDIS_URL must be a redis:// or rediss:// URL."]
    if parts.scheme == "redis" and not is_loopback_host(parts.hostname):
        return ["MAGISTRATE_REDIS_URL points off this machine without TLS; use rediss://."]
    return []

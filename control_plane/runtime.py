"""Where a process finds its database, Redis and secret key: the settings when given, otherwise
the embedded servers under ``$MAGISTRATE_HOME`` (which ``magistrate up`` starts)."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import IO, Any

from control_plane.embedded import EmbeddedPostgres, EmbeddedRedis, read_or_create_secret_key
from control_plane.settings import Settings
from control_plane.stack_state import running_state


class StartupRefused(SystemExit):
    """Raised (exit code 2) when production settings are unsafe; the message lists them all."""


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str
    secret_key: str
    embedded_postgres: bool
    embedded_redis: bool


def refuse_unsafe_production(settings: Settings) -> None:
    """In production, print every problem at once and exit non-zero before anything binds."""
    if not settings.is_production:
        return
    problems = settings.production_problems()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        print(f"Magistrate refuses to start in production; fix these {len(problems)} "
              f"problem(s):\n{lines}", file=sys.stderr)
        raise StartupRefused(2)


def resolve_endpoints(settings: Settings) -> Endpoints:
    """The settings' servers, or the embedded ones of the home; when ``magistrate up`` runs for
    this home, on the ports it recorded (a second shell need not repeat its port settings)."""
    running = running_state(settings.home)
    pg_port = settings.embedded_pg_port
    redis_port = settings.embedded_redis_port
    if running is not None and running.pid != os.getpid():
        pg_port = running.embedded_pg_port or pg_port
        redis_port = running.embedded_redis_port or redis_port
    pg = EmbeddedPostgres(settings.home, pg_port)
    rd = EmbeddedRedis(settings.home, redis_port)
    if settings.secret_key is not None:
        secret = settings.secret_key.reveal()
    else:
        secret = read_or_create_secret_key(settings.home)
    return Endpoints(
        database_url=(settings.database_url.reveal() if settings.database_url else pg.url()),
        redis_url=settings.redis_url.reveal() if settings.redis_url else rd.url(),
        secret_key=secret,
        embedded_postgres=settings.database_url is None,
        embedded_redis=settings.redis_url is None,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Request lines carry their fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
        }
        structured = getattr(record, "structured", None)
        if isinstance(structured, dict):
            entry.update(structured)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """JSON lines to ``stream`` (standard error unless given: ``up`` on a terminal passes its
    log file)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("DEBUG" if settings.debug else settings.log_level)
    # the HTTP clients' own line per request ("HTTP Request: POST …", INFO): a second log line
    # for every gateway call, saying less than the request log does; their warnings still show
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.DEBUG if settings.debug else logging.WARNING)

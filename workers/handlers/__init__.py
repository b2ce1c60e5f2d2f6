"""Outbox job handlers, one module per area; importing this package registers them all."""

from workers.handlers import (  # noqa: F401
    audit,
    backups,
    export,
    provisioning,
    recommendations,
    rotation,
)

"""Outbox job handlers, one module per area; importing this package registers them all."""

from workers.handlers import (
    export,  # noqa: F401
    provisioning,  # noqa: F401
)

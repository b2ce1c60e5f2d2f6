"""Job functions. Each opens its own unit of work and returns a JSON-safe result."""

from __future__ import annotations

import logging

from control_plane.auth.sessions import delete_expired_sessions
from workers.runtime import job_session

log = logging.getLogger("magistrate.jobs")


def expire_sessions() -> dict[str, int]:
    """Delete sessions past their absolute or idle expiry, and revoked ones older than a day."""
    with job_session() as s, s.begin():
        deleted = delete_expired_sessions(s)
    log.info("expired sessions deleted: %d", deleted)
    return {"deleted": deleted}

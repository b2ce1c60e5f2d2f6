"""Replay protection for the provider's tokens: an ID token's ``jti`` (when it has one), a
sign-in's ``nonce`` and a logout token's ``jti`` are each taken once.

The ``state`` row of a sign-in is already single use (``service._take_authorization``); this
store is the second lock, keyed by what the provider signed, so a token replayed through
another sign-in in flight, or a logout token posted twice, is refused too. A value is kept
until the token would have expired anyway (its ``exp`` plus the leeway), then swept."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from control_plane.db import utcnow
from control_plane.identity.oidc import LEEWAY_SECONDS
from control_plane.models import SsoUsedToken

SWEEP_BATCH = 500


def _key(kind: str, issuer: str, value: str) -> str:
    return hashlib.sha256(f"{kind}\0{issuer}\0{value}".encode()).hexdigest()


def take_once(s: Session, *, kind: str, issuer: str, value: str, expires: float) -> bool:
    """Record (kind, issuer, value); False when it was recorded before (a replay). Two
    sign-ins presenting it at once queue on the primary key: the second sees the first's."""
    until = datetime.fromtimestamp(expires, UTC) + timedelta(seconds=LEEWAY_SECONDS)
    s.execute(delete(SsoUsedToken).where(SsoUsedToken.token_hash.in_(
        select(SsoUsedToken.token_hash).where(SsoUsedToken.expires_at < utcnow())
        .limit(SWEEP_BATCH))))
    taken = s.scalar(insert(SsoUsedToken)
                     .values(token_hash=_key(kind, issuer, value), expires_at=until)
                     .on_conflict_do_nothing().returning(SsoUsedToken.token_hash))
    return taken is not None

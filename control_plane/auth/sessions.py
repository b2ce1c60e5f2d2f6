"""Server-side sessions behind an itsdangerous-signed cookie, and the CSRF tokens bound to them.

The cookie carries a random token, signed; the database keeps only its SHA-256, with the host it
was issued for, a 14-day absolute expiry and a 12-hour idle expiry. Signing out revokes the row,
so a replayed cookie is refused. A new token is issued at every sign-in (and after MFA).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from itsdangerous import BadSignature, Signer
from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from control_plane.db import utcnow
from control_plane.models import User, WebSession

ABSOLUTE_LIFETIME = timedelta(days=14)
IDLE_LIFETIME = timedelta(hours=12)
TOUCH_EVERY = timedelta(seconds=60)
MFA_PENDING_LIFETIME = timedelta(minutes=10)


class CookieSigner:
    """Signs and checks the session and anonymous cookies, and derives CSRF tokens."""

    def __init__(self, secret_key: str) -> None:
        self._session = Signer(secret_key, salt="magistrate.session")
        self._anon = Signer(secret_key, salt="magistrate.anon")
        self._csrf_key = hashlib.sha256(b"magistrate.csrf|" + secret_key.encode()).digest()

    def sign_session(self, token: str) -> str:
        return self._session.sign(token).decode()

    def unsign_session(self, cookie: str | None) -> str | None:
        return _unsign(self._session, cookie)

    def sign_anon(self, token: str) -> str:
        return self._anon.sign(token).decode()

    def unsign_anon(self, cookie: str | None) -> str | None:
        return _unsign(self._anon, cookie)

    def csrf_token(self, binding: str) -> str:
        return hmac.new(self._csrf_key, binding.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, binding: str | None, presented: str | None) -> bool:
        if not binding or not presented:
            return False
        return hmac.compare_digest(self.csrf_token(binding), presented)


def _unsign(signer: Signer, cookie: str | None) -> str | None:
    if not cookie or len(cookie) > 512:
        return None
    try:
        return signer.unsign(cookie).decode()
    except BadSignature:
        return None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    s: Session, user: User, *, host: str, ip: str | None, user_agent: str | None,
    mfa_pending: bool = False, sso: tuple[int, str, str | None] | None = None,
    mfa_by_provider: bool = False,
) -> str:
    """Create a session row for ``user``; returns the token to put in the cookie. ``sso`` is
    (provider id, subject, provider session id) for a session from single sign-on, which a
    back-channel logout finds by them; ``mfa_by_provider`` that the provider did the second
    factor (a tenant requiring two-factor sign-in accepts it)."""
    token = new_token()
    now = utcnow()
    lifetime = MFA_PENDING_LIFETIME if mfa_pending else ABSOLUTE_LIFETIME
    s.add(WebSession(
        token_hash=token_hash(token), user_id=user.id, host=host, mfa_pending=mfa_pending,
        ip=ip, user_agent=(user_agent or "")[:300], created_at=now, last_seen_at=now,
        expires_at=now + lifetime,
        sso_provider_id=sso[0] if sso else None, sso_subject=sso[1] if sso else None,
        sso_sid=sso[2] if sso else None, mfa_by_provider=mfa_by_provider,
    ))
    s.flush()
    return token


def load_session(s: Session, token: str | None, *, host: str,
                 now: datetime | None = None) -> WebSession | None:
    """The live session for ``token`` on this host, or None (revoked, expired, idle, moved)."""
    if not token:
        return None
    now = now or utcnow()
    row = s.scalars(select(WebSession).options(joinedload(WebSession.user))  # one round trip
                    .where(WebSession.token_hash == token_hash(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at <= now or row.last_seen_at + IDLE_LIFETIME <= now:
        return None
    if not hmac.compare_digest(row.host, host):
        return None
    if not row.user.is_active:
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return row


def revoke_session(s: Session, row: WebSession) -> None:
    row.revoked_at = utcnow()


def revoke_user_sessions(s: Session, user_id: int, *, except_id: int | None = None) -> int:
    stmt = update(WebSession).where(WebSession.user_id == user_id,
                                    WebSession.revoked_at.is_(None))
    if except_id is not None:
        stmt = stmt.where(WebSession.id != except_id)
    result = s.execute(stmt.values(revoked_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def delete_expired_sessions(s: Session, now: datetime | None = None) -> int:
    """Remove sessions that can no longer be used; what the worker's periodic job runs."""
    from sqlalchemy import delete, or_

    now = now or utcnow()
    result = s.execute(delete(WebSession).where(or_(
        WebSession.expires_at <= now,
        WebSession.last_seen_at <= now - IDLE_LIFETIME,
        WebSession.revoked_at <= now - timedelta(days=1),
    )))
    return int(getattr(result, "rowcount", 0) or 0)

"""Resolving who is calling, at the edge of each handler."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.requests import Request

from control_plane.auth import sessions
from control_plane.auth.credentials import RequestCredentials
from control_plane.exceptions import NotSignedIn, PasswordChangeRequired
from control_plane.models import User, WebSession


@dataclass(frozen=True)
class Viewer:
    """What templates may know about the signed-in user: a snapshot, valid after the
    transaction ends (even one rolled back by an error)."""

    id: int
    email: str
    display_name: str
    is_owner: bool
    mfa_enabled: bool

    @classmethod
    def of(cls, user: User) -> Viewer:
        return cls(user.id, user.email, user.display_name, user.is_owner, user.mfa_enabled)


@dataclass
class SignedIn:
    user: User
    session: WebSession


def client_ip(request: Request) -> str:
    """The client's address: the TCP peer, or what a trusted proxy says (the security edge
    resolved it once, from ``MAGISTRATE_TRUSTED_PROXIES``; control_plane/web/proxies.py)."""
    return request.client.host[:64] if request.client else "unknown"


def request_host(request: Request) -> str:
    return request.headers.get("host", "").lower()[:255]


def credentials(request: Request) -> RequestCredentials:
    """How the request authenticates, as the security edge read it (the one cookie parser,
    the one key-header reader): the CSRF decision and the handler see the same thing."""
    found = request.scope.get("state", {}).get("credentials")
    if not isinstance(found, RequestCredentials):
        raise RuntimeError("the security middleware did not run for this request")
    return found


def session_token(request: Request) -> str | None:
    """The verified session token, or None (no session cookie, a bad signature, or a request
    that presents an API key and so is authenticated by it alone)."""
    return credentials(request).session_token


def current_session(s: Session, request: Request) -> WebSession | None:
    return sessions.load_session(s, session_token(request), host=request_host(request))


def require_user(s: Session, request: Request, *, allow_password_change: bool = False
                 ) -> SignedIn:
    """The signed-in user, or NotSignedIn (pages redirect to the sign-in form).

    A session waiting for its MFA code is not signed in. A user who must change a one-time
    password may only reach the account page until they do."""
    row = current_session(s, request)
    if row is None or row.mfa_pending:
        raise NotSignedIn()
    request.state.user = Viewer.of(row.user)
    request.state.actor = f"user:{row.user.id}"
    if row.user.must_change_password and not allow_password_change:
        raise PasswordChangeRequired()
    return SignedIn(row.user, row)

"""Resolving who is calling, at the edge of each handler."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.requests import Request

from control_plane.auth import sessions
from control_plane.exceptions import NotSignedIn, PasswordChangeRequired
from control_plane.models import User, WebSession
from control_plane.web.services import services


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
    if services(request).settings.trust_proxy_headers:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else "unknown"


def request_host(request: Request) -> str:
    return request.headers.get("host", "").lower()[:255]


def session_token(request: Request) -> str | None:
    svc = services(request)
    return svc.signer.unsign_session(request.cookies.get(svc.settings.session_cookie_name))


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

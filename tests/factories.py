"""Plain factory functions for tests: real rows through the real service functions."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pyotp
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from control_plane.auth import service as auth_service
from control_plane.models import User
from control_plane.sealing import ControlSealer
from control_plane.users.service import do_create_user

DEFAULT_PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class MadeUser:
    id: int
    email: str
    password: str
    totp_secret: str | None = None
    backup_codes: list[str] | None = None


def make_user(db: sessionmaker[Session], email: str = "owner@example.com", *,
              password: str = DEFAULT_PASSWORD, is_owner: bool = True,
              must_change_password: bool = False) -> MadeUser:
    with db() as s, s.begin():
        created = do_create_user(s, email=email, display_name=email.split("@")[0],
                                 is_owner=is_owner, password=password, acting_user=None)
        created.user.must_change_password = must_change_password
        return MadeUser(created.user.id, created.user.email, password)


def enable_mfa(db: sessionmaker[Session], made: MadeUser, sealer: ControlSealer) -> MadeUser:
    with db() as s, s.begin():
        user = s.get(User, made.id)
        assert user is not None
        secret = auth_service.do_begin_mfa_enrollment(s, sealer=sealer, acting_user=user)
        codes = auth_service.do_confirm_mfa_enrollment(
            s, code=pyotp.TOTP(secret).now(), sealer=sealer, acting_user=user)
    made.totp_secret = secret
    made.backup_codes = codes
    return made


def next_code(secret: str) -> str:
    """The code of the next 30-second step (accepted: one step of drift is allowed). Used
    after a code of the current step was consumed, since a code is never accepted twice."""
    return pyotp.TOTP(secret).at(time.time() + 30)


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def csrf_token(client: TestClient, path: str = "/sign-in") -> str:
    return csrf_from(client.get(path).text)


def sign_in(client: TestClient, email: str, password: str = DEFAULT_PASSWORD, *,
            follow: bool = False):  # noqa: ANN201 - httpx.Response
    token = csrf_token(client)
    return client.post("/sign-in", data={"csrf_token": token, "email": email,
                                         "password": password},
                       follow_redirects=follow)


def post_form(client: TestClient, path: str, data: dict[str, str] | None = None, *,
              page: str = "/account", follow: bool = False):  # noqa: ANN201
    token = csrf_token(client, page)
    return client.post(path, data={"csrf_token": token, **(data or {})},
                       follow_redirects=follow)

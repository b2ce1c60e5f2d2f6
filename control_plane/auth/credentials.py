"""How a request authenticates, read once at the edge (DESIGN invariant 11: one parser per input).

Two inputs carry credentials: the ``Cookie`` header (the signed session cookie, and the anonymous
cookie the CSRF token of a signed-out browser is bound to) and the ``Authorization`` /
``x-api-key`` headers (a tenant API key). Each has exactly one reader here:

- ``parse_cookies`` is the only cookie parser in the code base (a test walks the syntax tree of
  every package for another). It is Starlette's lenient, browser-like parser, applied to every
  ``Cookie`` header of the request: a malformed cookie elsewhere in the header
  (``theme=dark mode``, a stray quote, a comma, a pair without ``=``, non-ASCII bytes) costs
  that cookie only, never the session cookie next to it;
- ``presented_key`` is the only reader of the API-key headers.

``read_credentials`` combines them into ``RequestCredentials``, which the security middleware
computes once per request, decides the CSRF exemption from, and leaves in the request state;
handlers find the session through it (``control_plane.web.deps.session_token``) and never parse a
cookie themselves. So the CSRF decision and the route cannot read two different sessions.

A request that presents an API key is authenticated by that key alone: its cookies are not
consulted for a session at all, so a browser's ambient cookie can never be what a key-bearing
request acts with (browsers cannot add these headers to a cross-site request without a CORS
preflight, which Magistrate never grants).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.datastructures import Headers
from starlette.requests import cookie_parser


class _Unsigner(Protocol):
    def unsign_session(self, cookie: str | None) -> str | None: ...

    def unsign_anon(self, cookie: str | None) -> str | None: ...


def parse_cookies(headers: Headers) -> dict[str, str]:
    """Every cookie of the request (all ``Cookie`` headers, in order; for a name sent twice the
    last one counts, as in Starlette's ``Request.cookies``)."""
    raw = "; ".join(headers.getlist("cookie"))
    return cookie_parser(raw) if raw else {}


def presented_key(authorization: str | None, x_api_key: str | None = None) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    return x_api_key.strip() if x_api_key and x_api_key.strip() else None


@dataclass(frozen=True)
class RequestCredentials:
    """What a request authenticates with, as the edge read it.

    ``session_token`` is the verified (signed) token of the session cookie, or None: when there
    is no such cookie, when its signature is wrong, and always when the request presents an API
    key. ``anon_token`` is the anonymous CSRF binding of a signed-out browser."""

    presents_key: bool
    session_token: str | None
    anon_token: str | None

    @property
    def uses_session(self) -> bool:
        return self.session_token is not None


def read_credentials(headers: Headers, *, session_cookie: str, anon_cookie: str,
                     signer: _Unsigner) -> RequestCredentials:
    keyed = presented_key(headers.get("authorization"), headers.get("x-api-key")) is not None
    cookies = parse_cookies(headers)
    session = None if keyed else signer.unsign_session(cookies.get(session_cookie))
    return RequestCredentials(presents_key=keyed, session_token=session,
                              anon_token=signer.unsign_anon(cookies.get(anon_cookie)))

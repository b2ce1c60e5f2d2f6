"""The edge of every HTTP request, as one ASGI middleware:

1. a request id (returned in ``X-Request-ID``, shown on error pages, in every log line);
2. the Host check against ``MAGISTRATE_ALLOWED_HOSTS``, and the text check of the address
   (tenant_runtime/text.py): a path segment or a query parameter holding a NUL or another
   control character (tab, line feed and carriage return excepted), or a header value holding a
   NUL, is refused (422) with a sentence naming it, before any route reads it;
3. the client's address and scheme behind the proxies named in ``MAGISTRATE_TRUSTED_PROXIES``
   (``control_plane/web/proxies.py``), written into the scope once, for every later reader;
4. CSRF: every state-changing request carries the synchronizer token (form field
   ``csrf_token`` or header ``X-CSRF-Token``, which htmx sends) bound to the browser's session or
   anonymous cookie, and an Origin (or Referer) of our own. The only exemption is a request
   under ``CSRF_EXEMPT_PREFIXES`` that uses no session, decided from how it authenticates
   (``control_plane/auth/credentials.py``): it presents an API key (then its cookies are never
   consulted for a session), or the one cookie parser finds no validly signed session cookie
   in it. The handlers reach the session only through the same reading, left in the request
   state, so an exempt request cannot act with a session;
5. security headers on every response, error pages included;
6. any unhandled exception becomes a 500 page with the request id, never a stack trace;
7. one structured log line per request, and its count in ``magistrate_http_requests`` by
   route template (``control_plane/web/metrics.py``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.auth.credentials import RequestCredentials, read_credentials
from control_plane.auth.sessions import CookieSigner
from control_plane.exceptions import (
    BadRequest,
    CsrfRefused,
    MagistrateError,
    PayloadTooLarge,
    UnstorableText,
)
from control_plane.settings import Settings
from control_plane.web.metrics import RouteTemplates, count_request
from control_plane.web.proxies import TrustedProxies
from tenant_runtime.exceptions import TenantError
from tenant_runtime.text import refusal, safe_path, unstorable, untypable

log = logging.getLogger("magistrate.http")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Reviewable exemption list: these prefixes are exempt ONLY for requests that use no session
# (programs and MCP clients with their keys, not browsers; an identity provider's back-channel
# logout, whose credential is the signed logout token; its SCIM client, with its SCIM token; an
# MCP client registering itself or exchanging a code or refresh token, whose credential is the
# code with its PKCE verifier, or the refresh token); a request with a session needs the token.
CSRF_EXEMPT_PREFIXES: tuple[str, ...] = ("/api/", "/v1/", "/mcp/",
                                         "/sso/backchannel-logout/", "/scim/",
                                         "/oauth/token", "/oauth/register")
MAX_FORM_BYTES = 10 * 1024 * 1024
# Load-balancer probes often use an address as the Host: these answer whatever the Host.
# So do Prometheus's scrapes, whose credential is the metrics token (control_plane/web/metrics.py).
HOST_CHECK_EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
    "microphone=(), payment=(), usb=(), interest-cohort=()"
)


def security_headers(settings: Settings) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Permissions-Policy": PERMISSIONS_POLICY,
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if settings.is_production:
        headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    return headers


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings, signer: CookieSigner) -> None:
        self.app = app
        self.settings = settings
        self.signer = signer
        self.headers = security_headers(settings)
        self.allowed_hosts = {h.lower() for h in settings.allowed_hosts}
        self.proxies = TrustedProxies(settings.proxy_networks)
        self.templates = RouteTemplates()

    # -- helpers --------------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower()
        return "*" in self.allowed_hosts or name in self.allowed_hosts

    def origin_allowed(self, headers: Headers, scope: Scope) -> bool:
        claimed = headers.get("origin")
        if claimed is None:
            referer = headers.get("referer")
            if referer is None:
                return True  # neither sent (some clients): the token alone decides
            claimed = _origin_of(referer) or "null"
        claimed = claimed.lower()
        allowed = {self.settings.public_origin.lower()}
        if not self.settings.is_production:
            scheme = scope.get("scheme", "http")
            allowed.add(f"{scheme}://{headers.get('host', '')}".lower())
        return claimed in allowed

    @staticmethod
    def is_exempt(path: str, credentials: RequestCredentials) -> bool:
        """A request to the API or the gateway that uses no session carries no ambient
        credential a forged request could ride on: it is authenticated by its key or refused
        by the route (401 in the API's own shape), so it needs no CSRF token. Whether it uses a
        session is the same reading the handlers get (``request.state.credentials``)."""
        return path.startswith(CSRF_EXEMPT_PREFIXES) and not credentials.uses_session

    def resolve_client(self, scope: Scope, headers: Headers) -> None:
        """Rewrite the scope's client and scheme from the forwarding headers of a trusted
        proxy (once, before anything reads them); the TCP peer stays in the state."""
        client = scope.get("client")
        peer = client[0] if client else None
        scope["state"]["peer"] = peer
        if not self.proxies:
            return
        address = self.proxies.client_address(peer, headers.getlist("x-forwarded-for"))
        if address is not None and address != peer:
            scope["client"] = (address, 0)
        scope["scheme"] = self.proxies.scheme(peer, headers.get("x-forwarded-proto"),
                                              scope.get("scheme", "http"))

    # -- the middleware -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        headers = Headers(scope=scope)
        response_started = False
        status = 500
        new_anon: str | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                out = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    out[name] = value
                out["X-Request-ID"] = request_id
                if "cache-control" not in out:
                    out["Cache-Control"] = "no-store"
                if new_anon is not None:
                    out.append("Set-Cookie", self._anon_cookie(new_anon))
            await send(message)

        try:
            if scope["path"] not in HOST_CHECK_EXEMPT_PATHS and not self.host_allowed(
                    headers.get("host", "")):
                raise BadRequest("This host name is not served here. Use the address your "
                                 "administrator published.")
            check_address(scope, headers)
            self.resolve_client(scope, headers)
            credentials = read_credentials(
                headers, session_cookie=self.settings.session_cookie_name,
                anon_cookie=self.settings.anon_cookie_name, signer=self.signer)
            state["credentials"] = credentials
            exempt = self.is_exempt(scope["path"], credentials)
            # the CSRF binding: the session token if signed in, else an anonymous token
            binding = credentials.session_token or credentials.anon_token
            if binding is None and scope["method"] in SAFE_METHODS and not exempt:
                # a program calling the API with its key gets no cookie: one would cost it
                # the CSRF exemption on its next POST
                new_anon = binding = secrets.token_urlsafe(24)
            state["csrf_binding"] = binding
            state["csrf_token"] = self.signer.csrf_token(binding) if binding else ""
            if scope["method"] not in SAFE_METHODS and not exempt:
                receive = await self._check_csrf(scope, receive, headers, binding)
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if isinstance(exc, MagistrateError | TenantError):
                status = exc.status_code
            else:
                log.exception("unhandled error", extra={"request_id": request_id})
            if response_started:
                raise
            from control_plane.web.errors import error_response

            response = error_response(Request(scope), exc)
            await response(scope, receive, send_wrapper)
        finally:
            self._log(scope, state, status, started)

    async def _check_csrf(self, scope: Scope, receive: Receive, headers: Headers,
                          binding: str | None) -> Receive:
        if not self.origin_allowed(headers, scope):
            raise CsrfRefused("This request came from another site and was refused.")
        presented = headers.get(CSRF_HEADER)
        if presented is not None:
            # The token came in a header (htmx sends it on every request): nothing to read
            # from the body, so it streams to the app — an upload is spooled to disk by the
            # form parser, never held here — counted against the largest upload allowed.
            if not self.signer.csrf_valid(binding, presented):
                raise CsrfRefused()
            return _counted(receive, max(MAX_FORM_BYTES,
                                         self.settings.signal_upload_max_mb * 1024 * 1024))
        # A form posted without script carries the token in a field: the body is read (at
        # most MAX_FORM_BYTES) to find it, then handed to the app.
        body = await _read_body(receive)
        if presented is None:
            content_type = headers.get("content-type", "")
            if content_type.startswith(("application/x-www-form-urlencoded",
                                        "multipart/form-data")):
                replay = _replay(body, receive)
                form = await Request(scope, replay).form()
                value = form.get(CSRF_FIELD)
                presented = value if isinstance(value, str) else None
                await form.close()
        if not self.signer.csrf_valid(binding, presented):
            raise CsrfRefused()
        return _replay(body, receive)

    def _anon_cookie(self, token: str) -> str:
        parts = [f"{self.settings.anon_cookie_name}={self.signer.sign_anon(token)}", "Path=/",
                 "HttpOnly", "SameSite=Lax"]
        if self.settings.secure_cookies:
            parts.append("Secure")
        return "; ".join(parts)

    def _log(self, scope: Scope, state: dict[str, Any], status: int, started: float) -> None:
        record = {
            "request_id": state.get("request_id"),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "tenant": state.get("tenant"),
            "actor": state.get("actor"),
        }
        log.info(json.dumps(record, separators=(",", ":")), extra={"structured": record})
        count_request(self.templates, scope, status)


def check_address(scope: Scope, headers: Headers) -> None:
    """Refuse a path, query parameter or header value holding text that cannot be stored or
    typed (tenant_runtime/text.py), read with the parsers the routes use (the server's decoded
    path, Starlette's ``QueryParams``), so what is checked is what a route would read."""
    what = untypable(scope["path"])
    if what is not None:
        raise UnstorableText(f"The address contains {what}, which cannot be stored; remove "
                             "it.")
    for name, value in QueryParams(scope.get("query_string", b"")).multi_items():
        what = untypable(name) or untypable(value)
        if what is not None:
            raise UnstorableText(refusal(safe_path(name), what, kind="query parameter"))
    for name, value in headers.items():
        what = unstorable(value)
        if what is not None:
            raise UnstorableText(refusal(safe_path(name), what, kind="header"))


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise PayloadTooLarge(
                f"This form is larger than {MAX_FORM_BYTES // (1024 * 1024)} MB. Send it from "
                "the page with scripts enabled, which streams uploads, or import the file "
                "with `magistrate signals import`.")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _counted(receive: Receive, limit: int) -> Receive:
    """Pass the body through, refusing it once it grows past ``limit`` bytes."""
    size = 0

    async def counting() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(
                    f"The request body is larger than the limit of {limit // (1024 * 1024)} "
                    "MB. Send a smaller file, or import it with `magistrate signals import`.")
        return message

    return counting


def _replay(body: bytes, then: Receive) -> Receive:
    """Hand the buffered body to the app once, then pass through (for disconnect notices)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive

"""A real OAuth authorization server and a real upstream MCP server it protects, for the
client-credentials tests.

- ``AuthorizationServer``: a small Starlette app speaking the wire protocol of RFC 8414
  (``/.well-known/oauth-authorization-server``) and RFC 6749 §4.4 (``POST /token``, the
  ``client_credentials`` grant), authenticating the client by ``client_secret_basic``,
  ``client_secret_post`` or ``private_key_jwt`` (RFC 7523, verified with joserfc against the
  client's public key), and recording every token request (method, scope, resource).
- ``protected_upstream``: the official SDK's ``MCPServer`` over Streamable HTTP with a token
  verifier that accepts only the tokens this server issued, unexpired and for its own URL
  (``AuthSettings.validate_token_resource``): the SDK serves its protected resource metadata
  (RFC 9728) and answers ``401`` with ``WWW-Authenticate: Bearer resource_metadata=...``."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from joserfc import jwt
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.live_server import Port, serve_app
from tests.tenant_runtime.mcp.helpers import READ_ONLY, Upstream, _Recorder

CLIENT_ID = "magistrate-crm"
CLIENT_SECRET = "s3cret-of-the-client"  # noqa: S105 - the test client's secret


@dataclass
class Issued:
    resource: str | None
    expires: float


@dataclass
class AuthorizationServer:
    url: str = ""
    secret: str = CLIENT_SECRET
    public_key: ECKey | None = None
    expires_in: int = 3600
    redirect_token: bool = False
    audience: str | None = None  # issue tokens for this resource instead of the one asked
    requests: list[dict[str, Any]] = field(default_factory=list)
    metadata_requests: list[str] = field(default_factory=list)
    tokens: dict[str, Issued] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def revoke_all(self) -> None:
        self.tokens.clear()

    def _client(self, request: Request, form: dict[str, str]) -> tuple[str | None, str]:
        """(client id if authenticated, the method it used)."""
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            pair = base64.b64decode(header[6:]).decode()
            client_id, _, secret = pair.partition(":")
            ok = unquote(client_id) == CLIENT_ID and unquote(secret) == self.secret
            return (CLIENT_ID if ok else None), "client_secret_basic"
        if "client_assertion" in form:
            assert self.public_key is not None  # noqa: S101
            try:
                token = jwt.decode(form["client_assertion"], self.public_key)
                JWTClaimsRegistry(iss={"essential": True, "value": CLIENT_ID},
                                  sub={"essential": True, "value": CLIENT_ID},
                                  aud={"essential": True, "values": [self.url,
                                                                     f"{self.url}/token"]},
                                  ).validate(token.claims)
            except Exception:  # noqa: BLE001 - any bad assertion is an unauthenticated client
                return None, "private_key_jwt"
            ok = form.get("client_assertion_type") == \
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            return (CLIENT_ID if ok else None), "private_key_jwt"
        ok = form.get("client_id") == CLIENT_ID and form.get("client_secret") == self.secret
        return (CLIENT_ID if ok else None), "client_secret_post"

    async def metadata(self, request: Request) -> Response:
        self.metadata_requests.append(request.url.path)
        return JSONResponse({
            "issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token", "grant_types_supported": [
                "client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256"]})

    async def token(self, request: Request) -> Response:
        if self.redirect_token:
            return RedirectResponse("http://10.0.0.1/token", 307)
        form = {k: str(v) for k, v in (await request.form()).items()}
        client_id, method = self._client(request, form)
        self.requests.append({"method": method, "grant_type": form.get("grant_type"),
                              "scope": form.get("scope"), "resource": form.get("resource"),
                              "authenticated": client_id is not None})
        if client_id is None:
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "Client authentication failed"}, 401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        token = f"tok-{next(self.counter)}"
        self.tokens[token] = Issued(self.audience or form.get("resource"),
                                    time.time() + self.expires_in)
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": self.expires_in, "scope": form.get("scope")})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/oauth-authorization-server", self.metadata),
            Route("/token", self.token, methods=["POST"])])


class Verifier:
    """The upstream's token verifier: a token this authorization server issued, unexpired."""

    def __init__(self, authz: AuthorizationServer) -> None:
        self.authz = authz
        self.refused: list[str] = []

    async def verify_token(self, token: str) -> AccessToken | None:
        issued = self.authz.tokens.get(token)
        if issued is None or issued.expires < time.time():
            self.refused.append(token)
            return None
        return AccessToken(token=token, client_id=CLIENT_ID, scopes=[],
                           expires_at=int(issued.expires), resource=issued.resource)


@contextmanager
def authorization_server() -> Iterator[AuthorizationServer]:
    port = Port()
    authz = AuthorizationServer(url=port.url)
    with serve_app(authz.app(), port):
        yield authz


@contextmanager
def protected_upstream(authz: AuthorizationServer) -> Iterator[tuple[Upstream, Verifier]]:
    port = Port()
    url = f"{port.url}/mcp"
    verifier = Verifier(authz)
    server = MCPServer("secured", token_verifier=verifier, auth=AuthSettings(
        issuer_url=authz.url, resource_server_url=url, validate_token_resource=True))
    up = Upstream(server, url)

    @server.tool(annotations=READ_ONLY)
    def lookup(customer: str) -> str:
        """Look a customer up."""
        up.calls.append(("lookup", {"customer": customer}))
        return f"found {customer}"

    app = _Recorder(server.streamable_http_app(stateless_http=True, json_response=True),
                    up.headers)
    with serve_app(app, port):
        yield up, verifier

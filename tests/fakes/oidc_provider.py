"""A small OpenID provider speaking the wire protocol, for the single sign-on tests.

(Written here, on joserfc, the JOSE library Authlib is built on, because a test needs a provider
that misbehaves on purpose: the faults below. The sign-in against a provider written by others,
``oidc-provider-mock`` 0.3.4 from PyPI (0.4 needs Python 3.12), is
tests/control_plane/identity/test_oidc_interop.py.)

It serves discovery (``/.well-known/openid-configuration``), the key set (``/jwks``), the
authorization endpoint (``/authorize``: it signs in ``next_claims`` at once, as a provider
with a remembered session does, and answers 302 to the redirect URI with ``code`` and
``state``), the token endpoint (``/token``: client_secret_basic, the redirect URI and the
PKCE S256 verifier are checked; a code is taken once) and an end-session endpoint.

``fault`` makes the next ID tokens wrong in one way each, as an attacker or a broken provider
would: ``wrong_issuer``, ``wrong_audience``, ``expired``, ``bad_signature``, ``alg_none``,
``hs256_public_key`` (HMAC keyed with the public key), ``replay_nonce`` (the nonce of an
earlier sign-in). ``rotate()`` signs with a new key from now on and publishes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeOpenIDProvider:
    def __init__(self, *, client_id: str = "magistrate", client_secret: str = "s3cret",  # noqa: S107 - a test double
                 ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.keys: list[RSAKey] = [self._new_key()]
        self.published: list[RSAKey] = list(self.keys)
        self.next_claims: dict[str, Any] = {}
        self.fault: str | None = None
        self.codes: dict[str, dict[str, Any]] = {}
        self.nonces: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.issuer = ""

    @staticmethod
    def _new_key() -> RSAKey:
        return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4),
                                                     "use": "sig", "alg": "RS256"})

    # -- the test's handles ------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def rotate(self) -> None:
        """Sign with a new key from now on, and publish it beside the old one."""
        key = self._new_key()
        self.keys = [key]
        self.published = [key, *self.published]

    def id_token(self, claims: dict[str, Any], *, nonce: str | None) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": self.client_id, "iat": now,
                                "exp": now + 300, "auth_time": now, **claims}
        if nonce is not None:
            body["nonce"] = nonce
        fault = self.fault
        if fault == "wrong_issuer":
            body["iss"] = "https://evil.example"
        elif fault == "wrong_audience":
            body["aud"] = "another-app"
        elif fault == "expired":
            body["iat"], body["exp"] = now - 3600, now - 1800
        elif fault == "replay_nonce" and len(self.nonces) > 1:
            body["nonce"] = self.nonces[-2]
        return self.sign(body)

    def sign(self, body: dict[str, Any]) -> str:
        key = self.keys[0]
        fault = self.fault
        if fault == "alg_none":
            header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
            return f"{header}.{_b64(json.dumps(body).encode())}."
        if fault == "hs256_public_key":
            # the classic confusion: HMAC keyed with the public key's PEM, which anyone has
            public = key.as_pem(private=False)
            signing_input = (_b64(json.dumps({"alg": "HS256", "kid": key.kid}).encode()) + "."
                             + _b64(json.dumps(body).encode()))
            mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{_b64(mac)}"
        token = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, body, key)
        if fault == "bad_signature":
            head, payload, signature = token.split(".")
            tampered = dict(body, sub=str(body.get("sub", "")) + "x")
            payload = _b64(json.dumps(tampered).encode())
            token = f"{head}.{payload}.{signature}"
        return token

    def logout_token(self, *, sub: str | None = None, sid: str | None = None,
                     events: bool = True) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": self.client_id, "iat": now,
                                "exp": now + 120, "jti": secrets.token_hex(8)}
        if events:
            body["events"] = {"http://schemas.openid.net/event/backchannel-logout": {}}
        if sub is not None:
            body["sub"] = sub
        if sid is not None:
            body["sid"] = sid
        return self.sign(body)

    # -- the server --------------------------------------------------------------------------

    def start(self) -> FakeOpenIDProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook
                parts = urlsplit(self.path)
                provider.requests.append(("GET", parts.path))
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/.well-known/openid-configuration":
                    self._json(200, provider.metadata())
                elif parts.path == "/jwks":
                    keys = KeySet(list(provider.published))
                    self._json(200, keys.as_dict(private=False))
                elif parts.path == "/authorize":
                    self._authorize(query)
                elif parts.path == "/end-session":
                    target = query.get("post_logout_redirect_uri", "")
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def _authorize(self, query: dict[str, str]) -> None:
                if (query.get("client_id") != provider.client_id
                        or query.get("response_type") != "code"
                        or query.get("code_challenge_method") != "S256"
                        or not query.get("code_challenge") or not query.get("nonce")):
                    self._json(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(16)
                with provider.lock:
                    provider.nonces.append(query["nonce"])
                    provider.codes[code] = {"nonce": query["nonce"],
                                            "challenge": query["code_challenge"],
                                            "redirect_uri": query["redirect_uri"],
                                            "claims": dict(provider.next_claims)}
                target = query["redirect_uri"] + "?" + urlencode(
                    {"code": code, "state": query.get("state", "")})
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook
                provider.requests.append(("POST", self.path))
                length = int(self.headers.get("content-length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path != "/token":
                    self._json(404, {"error": "not_found"})
                    return
                expected = "Basic " + base64.b64encode(
                    f"{provider.client_id}:{provider.client_secret}".encode()).decode()
                if self.headers.get("authorization") != expected:
                    self._json(401, {"error": "invalid_client"})
                    return
                with provider.lock:
                    grant = provider.codes.pop(form.get("code", ""), None)
                if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                    self._json(400, {"error": "invalid_grant"})
                    return
                verifier = form.get("code_verifier", "")
                challenge = _b64(hashlib.sha256(verifier.encode()).digest())
                if challenge != grant["challenge"]:
                    self._json(400, {"error": "invalid_grant"})
                    return
                token = provider.id_token(grant["claims"], nonce=grant["nonce"])
                self._json(200, {"access_token": secrets.token_urlsafe(16),
                                 "token_type": "Bearer", "expires_in": 300,
                                 "id_token": token})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fake-oidc-provider")
        self._thread.start()
        return self

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "end_session_endpoint": self.issuer + "/end-session",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
        }

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

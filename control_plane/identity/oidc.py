"""The OpenID Connect relying party's protocol: discovery, JWKS, the code exchange, and the
checks of an ID token and a back-channel logout token. No database here.

Every request to a provider (discovery, JWKS, token endpoint) goes through
``tenant_runtime.outbound.http_client`` with the operator's egress policy (DESIGN.md,
invariant 10): a provider on a private address is reached only when
``MAGISTRATE_GATEWAY_PRIVATE_NETWORKS`` lets it, and a redirect is refused.

Tokens are checked with joserfc (the JOSE library Authlib is built on); the metadata with
Authlib's ``OpenIDProviderMetadata``; PKCE's S256 challenge with Authlib's own function.

- The signature algorithm must be an asymmetric one the provider can sign with: ``none`` and
  every ``HS*`` are refused before any key is looked at, so a public key can never be used as
  an HMAC secret.
- The key is found by ``kid`` in the provider's JWKS, cached; an unknown ``kid`` fetches the
  JWKS again (at most once per ``JWKS_REFETCH_SECONDS``), which is how a key rotation is
  followed.
- ``iss`` must be the provider's issuer exactly, ``aud`` must hold our client id (and ``azp``
  name it when there are several audiences), ``exp`` in the future and ``iat`` not in it
  (``LEEWAY_SECONDS`` either way), ``nonce`` the one this sign-in sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tenant_runtime import outbound
from tenant_runtime.gateway.egress import EgressPolicy, EgressRefused

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                      "ES512", "EdDSA")
LEEWAY_SECONDS = 60
JWKS_REFETCH_SECONDS = 1.0
METADATA_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 3600.0
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MFA_AMR = frozenset({"mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm"})
MAX_RESPONSE_BYTES = 512 * 1024
LOGOUT_TOKEN_MAX_AGE_SECONDS = 600  # a logout token without exp: how long its iat is good


class OidcError(Exception):
    """A provider or a token was refused; ``reason`` is a short code for the audit event and
    ``message`` one sentence for the person signing in."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


@dataclass
class ProviderConfig:
    """What the protocol needs to know of one configured provider."""

    key: int  # the provider's row id: the caches' key
    issuer: str
    discovery_url: str
    client_id: str
    client_secret: str | None


@dataclass
class _Cached:
    metadata: dict[str, Any] | None = None
    metadata_at: float = 0.0
    keys: KeySet | None = None
    keys_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class OidcClient:
    """One per web process: the providers' metadata and keys, cached, and the calls to them."""

    def __init__(self, policy: EgressPolicy, *, allow_http: bool, timeout: float = 10.0) -> None:
        self.policy = policy
        self.allow_http = allow_http
        self.timeout = timeout
        self._cache: dict[int, _Cached] = {}
        self._lock = threading.Lock()

    def _entry(self, key: int) -> _Cached:
        with self._lock:
            return self._cache.setdefault(key, _Cached())

    def forget(self, key: int) -> None:
        with self._lock:
            self._cache.pop(key, None)

    # -- HTTP --------------------------------------------------------------------------------

    def check_url(self, url: str, what: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise OidcError("bad_url", f"The {what} is not an http(s) URL.")
        if parts.scheme == "http" and not self.allow_http:
            raise OidcError("bad_url", f"The {what} must use https.")

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        self.check_url(url, what)
        try:
            with outbound.http_client(self.policy, timeout=self.timeout) as client:
                response = client.request(method, url, headers={"Accept": "application/json"},
                                          **kwargs)
                body = response.read()
        except EgressRefused as exc:
            raise OidcError("egress_refused", f"The provider's {what} may not be reached: "
                                              f"{exc}") from None
        except httpx2.HTTPError as exc:
            raise OidcError("provider_unreachable", f"The provider's {what} could not be "
                                                    f"reached ({type(exc).__name__}).") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise OidcError("provider_error", f"The provider's {what} answered too much.")
        try:
            data = response.json() if body else None
        except ValueError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict):
            detail = ""
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                detail = f": {data['error'][:100]}"
            raise OidcError("provider_error", f"The provider's {what} answered "
                                              f"{response.status_code}{detail}.")
        return data

    # -- discovery and keys ------------------------------------------------------------------

    def discover(self, config: ProviderConfig, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's metadata, checked: its issuer is the configured one, its endpoints
        are URLs we may use."""
        entry = self._entry(config.key)
        now = time.monotonic()
        if (not refresh and entry.metadata is not None
                and now - entry.metadata_at < METADATA_TTL_SECONDS):
            return entry.metadata
        data = self._send("GET", config.discovery_url, "discovery document")
        try:
            OpenIDProviderMetadata(data).validate()
        except ValueError as exc:
            raise OidcError("bad_discovery", f"The provider's discovery document is not valid: "
                                             f"{exc}") from None
        if data["issuer"] != config.issuer:
            raise OidcError("wrong_issuer", "The provider's discovery document names another "
                                            f"issuer ({data['issuer'][:200]}).")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            self.check_url(data[name], name.replace("_", " "))
        entry.metadata, entry.metadata_at = data, now
        return data

    def fetch_issuer(self, discovery_url: str) -> str:
        """The issuer a discovery document names (when a provider is added)."""
        data = self._send("GET", discovery_url, "discovery document")
        try:
            OpenIDProviderMetadata(data).validate()
        except ValueError as exc:
            raise OidcError("bad_discovery", f"The provider's discovery document is not valid: "
                                             f"{exc}") from None
        issuer = str(data["issuer"])
        self.check_url(issuer, "issuer")
        return issuer

    def _keys(self, config: ProviderConfig, *, refetch: bool) -> KeySet:
        entry = self._entry(config.key)
        with entry.lock:
            now = time.monotonic()
            stale = entry.keys is None or now - entry.keys_at > JWKS_TTL_SECONDS
            if stale or (refetch and now - entry.keys_at >= JWKS_REFETCH_SECONDS):
                data = self._send("GET", self.discover(config)["jwks_uri"], "key set (JWKS)")
                try:
                    keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
                except (JoseError, ValueError, KeyError, TypeError) as exc:
                    raise OidcError("bad_jwks", "The provider's key set (JWKS) is not "
                                                f"valid: {exc}") from None
                entry.keys, entry.keys_at = keys, now
            assert entry.keys is not None  # noqa: S101 - set just above when missing
            return entry.keys

    # -- the flow ----------------------------------------------------------------------------

    def authorization_url(self, config: ProviderConfig, *, redirect_uri: str, state: str,
                          nonce: str, code_verifier: str) -> str:
        endpoint = self.discover(config)["authorization_endpoint"]
        query = urlencode({
            "response_type": "code", "client_id": config.client_id,
            "redirect_uri": redirect_uri, "scope": "openid email profile",
            "state": state, "nonce": nonce,
            "code_challenge": create_s256_code_challenge(code_verifier),
            "code_challenge_method": "S256",
        })
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange_code(self, config: ProviderConfig, *, code: str, redirect_uri: str,
                      code_verifier: str) -> str:
        """The ID token the token endpoint gives for ``code`` (client_secret_post, or a public
        client with PKCE alone)."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": config.client_id, "code_verifier": code_verifier}
        auth = None
        if config.client_secret:
            auth = (config.client_id, config.client_secret)  # client_secret_basic
        data = self._send("POST", self.discover(config)["token_endpoint"], "token endpoint",
                          data=form, auth=auth)
        id_token = data.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("no_id_token", "The provider answered without an ID token.")
        return id_token

    def end_session_url(self, config: ProviderConfig, *, post_logout_redirect_uri: str
                        ) -> str | None:
        """RP-initiated logout: where to send the browser, or None when the provider has none."""
        try:
            endpoint = self.discover(config).get("end_session_endpoint")
        except OidcError:
            return None
        if not isinstance(endpoint, str):
            return None
        try:
            self.check_url(endpoint, "end session endpoint")
        except OidcError:
            return None
        query = urlencode({"client_id": config.client_id,
                           "post_logout_redirect_uri": post_logout_redirect_uri})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    # -- tokens ------------------------------------------------------------------------------

    def verified_claims(self, config: ProviderConfig, token: str) -> dict[str, Any]:
        """The claims of a JWT signed by the provider, after checking its algorithm and
        signature; its claims are checked by the caller."""
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise OidcError("malformed_token", "The provider's token is not a signed "
                                               "JWT.") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise OidcError("algorithm_refused", f"The token's signature algorithm "
                                                 f"({str(alg)[:20]}) is not accepted; only "
                                                 "asymmetric signatures are.")
        kid = header.get("kid")
        keys = self._keys(config, refetch=False)
        key = _find_key(keys, kid, alg)
        if key is None:  # a rotated key: fetch the key set again, once
            keys = self._keys(config, refetch=True)
            key = _find_key(keys, kid, alg)
        if key is None:
            raise OidcError("unknown_key", "The token is signed with a key the provider does "
                                           "not publish.")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except JoseError:
            raise OidcError("bad_signature", "The token's signature does not verify.") from None
        return dict(decoded.claims)

    def check_id_token(self, config: ProviderConfig, token: str, *, nonce: str,
                       now: float | None = None) -> dict[str, Any]:
        claims = self.verified_claims(config, token)
        _check_common(config, claims, now=now)
        if claims.get("nonce") != nonce:
            raise OidcError("nonce_mismatch", "The ID token does not answer this sign-in (its "
                                              "nonce differs); start again.")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OidcError("no_subject", "The ID token names no subject.")
        return claims

    def check_logout_token(self, config: ProviderConfig, token: str,
                           now: float | None = None) -> dict[str, Any]:
        """OpenID Connect Back-Channel Logout 1.0, section 2.6."""
        claims = self.verified_claims(config, token)
        _check_common(config, claims, now=now, need_exp=False)
        events = claims.get("events")
        if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events:
            raise OidcError("not_logout_token", "The token is not a back-channel logout token.")
        if "nonce" in claims:
            raise OidcError("not_logout_token", "A logout token must not carry a nonce.")
        if not isinstance(claims.get("sid"), str) and not isinstance(claims.get("sub"), str):
            raise OidcError("not_logout_token", "The logout token names neither a session "
                                                "(sid) nor a subject (sub).")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise OidcError("not_logout_token", "A logout token must carry a jti.")
        now_ = time.time() if now is None else now
        if "exp" not in claims and claims["iat"] + LOGOUT_TOKEN_MAX_AGE_SECONDS < now_:
            raise OidcError("expired", "The logout token is too old (no exp, and issued more "
                                       "than ten minutes ago).")
        return claims


def _find_key(keys: KeySet, kid: Any, alg: str) -> Any:
    if isinstance(kid, str):
        try:
            return keys.get_by_kid(kid)
        except JoseError:
            return None
    candidates = [k for k in keys.keys if k.get("use") in (None, "sig")
                  and k.get("alg") in (None, alg)]
    return candidates[0] if len(candidates) == 1 else None


def _check_common(config: ProviderConfig, claims: dict[str, Any], *, now: float | None,
                  need_exp: bool = True) -> None:
    now = time.time() if now is None else now
    if claims.get("iss") != config.issuer:
        raise OidcError("wrong_issuer", "The token was issued by another issuer than this "
                                        "provider's.")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if config.client_id not in audiences:
        raise OidcError("wrong_audience", "The token was issued for another application "
                                          "(its audience is not our client id).")
    if len(audiences) > 1 and claims.get("azp") != config.client_id:
        raise OidcError("wrong_audience", "The token has several audiences and does not name "
                                          "us as its authorized party.")
    exp = claims.get("exp")
    if need_exp or exp is not None:
        if not isinstance(exp, int | float) or exp + LEEWAY_SECONDS < now:
            raise OidcError("expired", "The token has expired; sign in again.")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or iat - LEEWAY_SECONDS > now:
        raise OidcError("bad_iat", "The token's issue time is missing or in the future.")


def mfa_done(claims: dict[str, Any], *, amr_values: Sequence[str] = (),
             acr_values: Sequence[str] = ()) -> bool:
    """Whether the ID token says the provider did a second factor: an ``amr`` value (RFC 8176)
    among ``amr_values`` (empty: ``MFA_AMR``), or an ``acr`` among ``acr_values`` (empty:
    none, as ``acr`` values are each provider's own)."""
    accepted_amr = frozenset(amr_values) or MFA_AMR
    amr = claims.get("amr")
    if isinstance(amr, list) and any(isinstance(v, str) and v in accepted_amr for v in amr):
        return True
    acr = claims.get("acr")
    return isinstance(acr, str) and acr in acr_values

"""OAuth client credentials towards an upstream MCP server (RFC 6749 §4.4), the way the MCP
authorization specification has a client find its authorization server:

1. the upstream answers ``401`` (a first request without a token, or a token it no longer
   takes);
2. its **Protected Resource Metadata** (RFC 9728): the ``resource_metadata`` URL of its
   ``WWW-Authenticate`` header, else the path-aware and root well-known URLs; the resource it
   names must be the upstream's URL or a parent of it;
3. the **authorization server's metadata** (RFC 8414, with the OpenID Connect discovery
   fallbacks), whose ``issuer`` must be the server the resource named;
4. the **token request**: ``grant_type=client_credentials``, the Admin's ``scope`` (when
   none is named: the ``scope`` of the ``WWW-Authenticate`` challenge, else the resource's
   ``scopes_supported``, else none, as the MCP specification's scope selection says), the
   ``resource`` (RFC 8707), the client authenticated by ``client_secret_basic`` (the default),
   ``client_secret_post`` or ``private_key_jwt`` (RFC 7523, signed by Authlib);
5. the request again, once, with the new token.

An Admin who names the token endpoint skips 2 and 3: the client secret then goes only there.

The discovery URLs, metadata models and resource checks are the official ``mcp`` SDK's
(``mcp.client.auth.utils``). Every request here is made by the upstream's own HTTP client
(tenant_runtime/outbound.py), so the token endpoint and every metadata URL pass the egress
policy at connect time and a redirect is refused, exactly as for the upstream itself.

Tokens are cached per upstream per process (``TokenCache``), in memory only: reused until a
tenth of their lifetime (at most a minute) before they expire, then fetched again before the
request; dropped on a ``401``. They are never logged, stored, shown, or passed to the client
(the caller's own credential never reaches the upstream either). A token endpoint's refusal,
or discovery that leads nowhere, raises ``UpstreamAuthFailed`` (one sentence, no secret) and
is reported to ``on_refused`` (the audit event) first.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httpx2
from authlib.oauth2.rfc7523.assertion import sign_jwt_bearer_assertion
from joserfc.jwk import ECKey, OKPKey, RSAKey
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    create_oauth_metadata_request,
    extract_resource_metadata_from_www_auth,
    extract_scope_from_www_auth,
    handle_auth_metadata_response,
    handle_protected_resource_response,
    issuers_match,
)
from mcp.shared.auth import OAuthToken
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from pydantic import ValidationError

from tenant_runtime.mcp.exceptions import UpstreamAuthFailed

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds a private_key_jwt assertion is valid
UNKNOWN_LIFETIME = 3600.0  # a token without expires_in is reused at most this long
MAX_EARLY = 60.0  # a token is fetched again this long (at most) before it expires
CACHED_UPSTREAMS = 10_000

Refused = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ClientCredentials:
    """What Magistrate presents to an upstream's authorization server. ``secret`` is the
    client secret (``client_secret_*``) or the PEM private key (``private_key_jwt``);
    ``token_endpoint`` empty means discover it. ``key`` names the cache entry: the tenant, the
    upstream and a digest of its sealed credential, so a changed credential never reuses a
    token fetched with the old one."""

    upstream: str
    server_url: str
    client_id: str
    secret: str = field(repr=False)
    method: str = "client_secret_basic"
    scope: str = ""
    token_endpoint: str = ""
    key: Hashable = field(default=None, repr=False)


@dataclass
class TokenCache:
    """One upstream's token and what discovery found, for this process."""

    access_token: str | None = field(default=None, repr=False)
    fresh_until: float = 0.0  # time.monotonic()
    token_endpoint: str | None = None
    issuer: str | None = None
    resource: str | None = None
    scope: str | None = None  # chosen by discovery when the Admin named none

    def usable(self) -> str | None:
        if self.access_token is not None and time.monotonic() < self.fresh_until:
            return self.access_token
        return None

    def take(self, token: OAuthToken) -> None:
        lifetime = float(token.expires_in) if token.expires_in is not None else UNKNOWN_LIFETIME
        self.access_token = token.access_token
        self.fresh_until = time.monotonic() + lifetime - min(MAX_EARLY, lifetime / 10)

    def drop(self) -> None:
        self.access_token, self.fresh_until = None, 0.0


_caches: OrderedDict[Hashable, TokenCache] = OrderedDict()
_caches_lock = threading.Lock()


def cache_of(grant: ClientCredentials) -> TokenCache:
    """The process's cache for this upstream's credential (the least recently used dropped
    past ``CACHED_UPSTREAMS``)."""
    with _caches_lock:
        found = _caches.get(grant.key)
        if found is None:
            found = _caches[grant.key] = TokenCache(token_endpoint=grant.token_endpoint or None)
            while len(_caches) > CACHED_UPSTREAMS:
                _caches.popitem(last=False)
        _caches.move_to_end(grant.key)
        return found


def private_key(pem: str) -> ECKey | RSAKey | OKPKey:
    """A PEM private key (EC, RSA or OKP); ``ValueError`` for anything else."""
    for kind in (ECKey, RSAKey, OKPKey):
        try:
            return kind.import_key(pem)
        except Exception:  # noqa: BLE001, S112 - whatever the parsers raise, it is not this kind
            continue
    raise ValueError("not a PEM private key")


def signing_algorithm(pem: str) -> str:
    """The JWS algorithm a private key signs with: ES256/384/512 by curve, RS256, EdDSA.
    Raises ``ValueError`` for anything that is not a PEM private key of those kinds."""
    key = private_key(pem)
    if not key.is_private:
        raise ValueError("a public key, not a private one")
    if isinstance(key, ECKey):
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[key.curve_name]
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return "EdDSA"
    raise ValueError("an unsupported key type")


def _clean(text: str, limit: int = 200) -> str:
    """An authorization server's own words, fit for one sentence."""
    kept = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return kept if len(kept) <= limit else kept[:limit] + "…"


class ClientCredentialsAuth(httpx2.Auth):
    """The upstream HTTP client's ``auth``: a bearer token from the client credentials grant
    on every request (see the module's docstring)."""

    requires_request_body = True
    requires_response_body = True

    def __init__(self, grant: ClientCredentials, cache: TokenCache,
                 on_refused: Refused | None = None) -> None:
        self.grant, self.cache, self.on_refused = grant, cache, on_refused

    async def _failed(self, sentence: str) -> UpstreamAuthFailed:
        if self.on_refused is not None:
            await self.on_refused(sentence)
        return UpstreamAuthFailed(sentence)

    def _token_request(self) -> httpx2.Request:
        grant, endpoint = self.grant, str(self.cache.token_endpoint)
        data = {"grant_type": "client_credentials",
                "resource": self.cache.resource or resource_url_from_server_url(grant.server_url)}
        if grant.scope or self.cache.scope:
            data["scope"] = grant.scope or str(self.cache.scope)
        headers = {"Accept": "application/json"}
        if grant.method == "client_secret_basic":  # RFC 6749 §2.3.1: form-encoded, then Basic
            pair = f"{quote(grant.client_id, safe='')}:{quote(grant.secret, safe='')}"
            headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
        elif grant.method == "client_secret_post":
            data |= {"client_id": grant.client_id, "client_secret": grant.secret}
        else:  # private_key_jwt (RFC 7523 §2.2); audience: the issuer, else the endpoint
            data |= {"client_assertion_type": ASSERTION_TYPE,
                     "client_assertion": sign_jwt_bearer_assertion(
                         key=private_key(grant.secret), issuer=grant.client_id,
                         subject=grant.client_id, audience=self.cache.issuer or endpoint,
                         alg=signing_algorithm(grant.secret),
                         expires_in=ASSERTION_LIFETIME)}
        return httpx2.Request("POST", endpoint, data=data, headers=headers)

    async def _take(self, response: httpx2.Response) -> str:
        """Cache the token the token endpoint answered, or fail with its refusal."""
        where = urlsplit(str(self.cache.token_endpoint)).netloc
        await response.aread()  # the upstream's client streams; this answer is read whole
        if response.status_code != 200:
            try:
                body = response.json()
            except ValueError:
                body = {}
            error = body.get("error") if isinstance(body, dict) else None
            said = body.get("error_description") if isinstance(body, dict) else None
            reason = f"{_clean(str(error), 80)}" if error else f"HTTP {response.status_code}"
            if said:
                reason += f": {_clean(str(said))}"
            raise await self._failed(
                f"The authorization server at {where} refused Magistrate's client credentials "
                f"for the upstream {self.grant.upstream} ({reason}). Check the client id, "
                "secret and scope registered for it.")
        try:
            token = OAuthToken.model_validate_json(response.content)
        except ValidationError:
            raise await self._failed(
                f"The token endpoint at {where} did not answer with a bearer token for the "
                f"upstream {self.grant.upstream}.") from None
        self.cache.take(token)
        return token.access_token

    async def async_auth_flow(self, request: httpx2.Request
                              ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        cache, grant = self.cache, self.grant
        if cache.usable() is None and cache.token_endpoint is not None:
            await self._take((yield self._token_request()))
        token = cache.usable()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        cache.drop()  # refused (or never had one): fetch one, and try once more
        if not grant.token_endpoint:
            # RFC 9728: the upstream's protected resource metadata
            named = extract_resource_metadata_from_www_auth(response)
            prm = None
            for url in build_protected_resource_metadata_discovery_urls(named, grant.server_url):
                prm = await handle_protected_resource_response(
                    (yield create_oauth_metadata_request(url)))
                if prm is not None:
                    break
            server: str | None = None
            if prm is not None:
                resource = resource_url_from_server_url(grant.server_url)
                if not check_resource_allowed(requested_resource=resource,
                                              configured_resource=str(prm.resource)):
                    raise await self._failed(
                        f"The upstream {grant.upstream} names another resource "
                        f"({_clean(str(prm.resource))}) in its protected resource metadata; "
                        "Magistrate will not fetch a token for it.")
                cache.resource, server = str(prm.resource), str(prm.authorization_servers[0])
            # no scope named: the challenge's, else every scope the resource supports
            cache.scope = extract_scope_from_www_auth(response) or (
                " ".join(prm.scopes_supported) if prm is not None and prm.scopes_supported
                else None)
            # RFC 8414 (and OpenID Connect discovery): the authorization server's metadata
            metadata = None
            for url in build_oauth_authorization_server_metadata_discovery_urls(
                    server, grant.server_url):
                go_on, metadata = await handle_auth_metadata_response(
                    (yield create_oauth_metadata_request(url)))
                if metadata is not None or not go_on:
                    break
            if metadata is None:
                raise await self._failed(
                    f"The upstream {grant.upstream} asks for a token, but neither its protected "
                    "resource metadata (RFC 9728) nor its authorization server's metadata "
                    "(RFC 8414) could be found; name the token endpoint when registering it.")
            expected = server or f"{urlsplit(grant.server_url).scheme}://" \
                f"{urlsplit(grant.server_url).netloc}"
            if not issuers_match(str(metadata.issuer), expected):
                raise await self._failed(
                    f"The authorization server metadata for the upstream {grant.upstream} names "
                    f"the issuer {_clean(str(metadata.issuer))}, not {_clean(expected)}.")
            cache.token_endpoint, cache.issuer = str(metadata.token_endpoint), \
                str(metadata.issuer)
        token = await self._take((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {token}"
        if (yield request).status_code == 401:
            cache.drop()
            raise await self._failed(
                f"The upstream {grant.upstream} refused the token its authorization server "
                f"at {urlsplit(str(cache.token_endpoint)).netloc} had just issued; check the "
                "scope, and that the upstream trusts that server.")


@dataclass(frozen=True)
class UpstreamCredential:
    """What Magistrate presents to one upstream: fixed ``headers`` (a bearer token, a custom
    header), or a client credentials ``grant`` whose tokens ``auth()`` fetches. Never the
    caller's own credential."""

    headers: dict[str, str] = field(default_factory=dict, repr=False)
    grant: ClientCredentials | None = field(default=None, repr=False)
    on_refused: Refused | None = field(default=None, repr=False, compare=False)

    def auth(self) -> httpx2.Auth | None:
        if self.grant is None:
            return None
        return ClientCredentialsAuth(self.grant, cache_of(self.grant), self.on_refused)

"""Who a ``client_id`` is.

- **Registered** (RFC 7591, ``POST /oauth/register``): a public client (no secret,
  ``token_endpoint_auth_method`` ``none``), its redirect URIs checked at registration and fixed;
  its ``client_id`` is ``mcpc_`` and 32 random characters.
- **Client ID Metadata Document**: a ``client_id`` that is an https URL with a path names a JSON
  document the client publishes (its name and redirect URIs). It is fetched through the checked
  outbound client with the strict egress policy — never a private, loopback or link-local
  address, no redirects, at most ``MAX_DOCUMENT_BYTES`` — and kept ``CACHE_SECONDS``.

A redirect URI is accepted when it is absolute, has no fragment and is ``https``, or ``http`` on
a loopback host (a native client's local listener). The authorization request's redirect URI
must then equal one of the client's exactly."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

from control_plane.mcp_oauth.exceptions import (
    InvalidClient,
    InvalidClientMetadata,
    InvalidRedirectUri,
)
from tenant_runtime import outbound
from tenant_runtime.gateway.egress import EgressPolicy

CLIENT_ID_PREFIX = "mcpc_"
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_NAME_LENGTH = 200
MAX_DOCUMENT_BYTES = 16 * 1024
CACHE_SECONDS = 300
CACHE_ENTRIES = 512
FETCH_TIMEOUT = 5.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    metadata_document: bool

    def redirect_host(self, redirect_uri: str) -> str:
        return urlsplit(redirect_uri).netloc


def check_redirect_uri(uri: object) -> str:
    """``uri`` if codes may be sent to it, else InvalidRedirectUri with the reason."""
    if not isinstance(uri, str) or not uri:
        raise InvalidRedirectUri("Each redirect URI must be a non-empty string.")
    if len(uri) > MAX_URI_LENGTH:
        raise InvalidRedirectUri(f"A redirect URI is at most {MAX_URI_LENGTH} characters.")
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
    except ValueError:
        raise InvalidRedirectUri(f"The redirect URI {uri[:100]!r} is not a URL.") from None
    if parts.fragment or "#" in uri:
        raise InvalidRedirectUri(f"The redirect URI {uri[:100]!r} has a fragment (#…); "
                                 "redirect URIs may not.")
    if not parts.scheme or not host:
        raise InvalidRedirectUri(f"The redirect URI {uri[:100]!r} is not an absolute URL; "
                                 "give scheme and host.")
    if parts.username or parts.password:
        raise InvalidRedirectUri(f"The redirect URI {uri[:100]!r} holds a user name or "
                                 "password; remove it.")
    if parts.scheme == "https":
        return uri
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return uri
    raise InvalidRedirectUri(f"The redirect URI {uri[:100]!r} must use https (or http on "
                             "127.0.0.1, [::1] or localhost, for a client on this machine).")


def check_redirect_uris(value: object) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidRedirectUri("Give redirect_uris: a list of one to "
                                 f"{MAX_REDIRECT_URIS} URLs.")
    if len(value) > MAX_REDIRECT_URIS:
        raise InvalidRedirectUri(f"A client has at most {MAX_REDIRECT_URIS} redirect URIs.")
    return [check_redirect_uri(uri) for uri in value]


def _name(value: object, fallback: str) -> str:
    if value is None:
        return fallback
    if not isinstance(value, str) or not value.strip():
        raise InvalidClientMetadata("client_name must be a non-empty string.")
    name = " ".join(value.split())
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidClientMetadata(f"client_name is at most {MAX_NAME_LENGTH} characters.")
    return name


def _public_client(metadata: dict[str, Any]) -> None:
    method = metadata.get("token_endpoint_auth_method")
    if method not in (None, "none"):
        # RFC 7591 lets the server decide; a client that insists on a secret cannot use us
        if not isinstance(method, str):
            raise InvalidClientMetadata("token_endpoint_auth_method must be a string.")
    grants = metadata.get("grant_types")
    if grants is not None:
        if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
            raise InvalidClientMetadata("grant_types must be a list of strings.")
        unknown = sorted(set(grants) - GRANT_TYPES)
        if unknown:
            raise InvalidClientMetadata(f"grant_types {unknown} are not supported here; use "
                                        "authorization_code and refresh_token.")
    responses = metadata.get("response_types")
    if responses is not None and (not isinstance(responses, list) or set(responses) - {"code"}):
        raise InvalidClientMetadata("response_types may only hold 'code'.")


@dataclass(frozen=True)
class Registration:
    client_name: str
    redirect_uris: list[str]
    client_uri: str | None


def check_registration(metadata: dict[str, Any]) -> Registration:
    """A registration request's metadata, checked (unknown fields are ignored, as RFC 7591
    says)."""
    uris = check_redirect_uris(metadata.get("redirect_uris"))
    _public_client(metadata)
    client_uri = metadata.get("client_uri")
    if client_uri is not None and (not isinstance(client_uri, str)
                                   or not client_uri.startswith("https://")
                                   or len(client_uri) > MAX_URI_LENGTH):
        raise InvalidClientMetadata("client_uri must be an https URL of at most "
                                    f"{MAX_URI_LENGTH} characters.")
    name = _name(metadata.get("client_name"), urlsplit(uris[0]).netloc)
    return Registration(name, uris, client_uri)


def new_client_id() -> str:
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(24)


def is_metadata_url(client_id: str) -> bool:
    parts = urlsplit(client_id)
    return parts.scheme == "https" and parts.path not in ("", "/")


# -- Client ID Metadata Documents -------------------------------------------------------------

_cache: dict[str, tuple[float, ClientInfo]] = {}
_lock = threading.Lock()


def _cached(url: str) -> ClientInfo | None:
    with _lock:
        found = _cache.get(url)
        if found is None or found[0] < time.monotonic():
            _cache.pop(url, None)
            return None
        return found[1]


def _keep(url: str, info: ClientInfo) -> None:
    with _lock:
        if len(_cache) >= CACHE_ENTRIES:
            _cache.pop(next(iter(_cache)))
        _cache[url] = (time.monotonic() + CACHE_SECONDS, info)


def forget_documents() -> None:
    with _lock:
        _cache.clear()


def parse_document(url: str, raw: bytes) -> ClientInfo:
    """A fetched metadata document, checked: JSON, its ``client_id`` the URL it came from,
    public, its redirect URIs acceptable."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise InvalidClientMetadata(f"The client metadata document at {url} is not "
                                    "JSON.") from None
    if not isinstance(document, dict):
        raise InvalidClientMetadata(f"The client metadata document at {url} is not a JSON "
                                    "object.")
    if document.get("client_id") != url:
        raise InvalidClientMetadata(f"The client metadata document at {url} names another "
                                    "client_id; it must name its own URL.")
    if "client_secret" in document or document.get("token_endpoint_auth_method") not in (
            None, "none"):
        raise InvalidClientMetadata(f"The client metadata document at {url} must describe a "
                                    "public client (token_endpoint_auth_method none, no "
                                    "secret).")
    uris = check_redirect_uris(document.get("redirect_uris"))
    _public_client(document)
    name = _name(document.get("client_name"), urlsplit(url).netloc)
    return ClientInfo(url, name, tuple(uris), metadata_document=True)


def fetch_document(url: str, policy: EgressPolicy | None = None) -> ClientInfo:
    """The metadata document at ``url`` (cached ``CACHE_SECONDS``), fetched through the checked
    client: a private address or a redirect is refused."""
    found = _cached(url)
    if found is not None:
        return found
    try:
        with outbound.http_client(policy or EgressPolicy(), timeout=FETCH_TIMEOUT) as client, \
                client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise InvalidClientMetadata(f"The client metadata document at {url} answered "
                                            f"{response.status_code}, not 200.")
            raw = bytearray()
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_DOCUMENT_BYTES:
                    raise InvalidClientMetadata(f"The client metadata document at {url} is "
                                                f"over {MAX_DOCUMENT_BYTES // 1024} KiB.")
    except InvalidClientMetadata:
        raise
    except (httpx2.HTTPError, OSError) as exc:
        refused = outbound.refusal(exc)
        why = refused.message if refused is not None else type(exc).__name__
        raise InvalidClientMetadata(f"The client metadata document at {url} could not be "
                                    f"fetched: {why}") from None
    except Exception as exc:
        refused = outbound.refusal(exc)
        if refused is None:
            raise
        raise InvalidClientMetadata(f"The client metadata document at {url} could not be "
                                    f"fetched: {refused.message}") from None
    info = parse_document(url, bytes(raw))
    _keep(url, info)
    return info


def registered(row_client_id: str, name: str, uris: list[str]) -> ClientInfo:
    return ClientInfo(row_client_id, name, tuple(uris), metadata_document=False)


def unknown_client() -> InvalidClient:
    return InvalidClient("There is no client with this client_id here; register it first "
                         "(the registration_endpoint of /.well-known/oauth-authorization-server) "
                         "or use an https URL of a client metadata document.")

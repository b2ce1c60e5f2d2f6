"""Where a tenant's routes and webhooks may send requests. A route is configured by the tenant's
Owners and Admins, so its endpoint is the tenant's choice, not the platform's: without limits it
could point the platform's own cloud identity or its internal network at an address of the
tenant's choosing. The platform operator's ``EgressPolicy`` decides:

- **Ambient cloud identity** (``MAGISTRATE_GATEWAY_AMBIENT_IDENTITY``, off by default): an
  ``azure-openai`` or ``bedrock`` route without a credential signs its requests with the
  platform's own identity (Entra ID managed identity, the AWS default chain). Only when the
  operator allows it, and then only towards the providers' own hosts, so the platform's token is
  never handed to another host.
- **Private addresses** (``MAGISTRATE_GATEWAY_PRIVATE_NETWORKS``, none by default): an endpoint
  that resolves to a loopback, private, shared or reserved address is refused unless it falls in
  a network the operator listed (an on-prem model server in 10.0.0.0/8, say). Link-local
  addresses (169.254.0.0/16, fe80::/10: cloud metadata services) are refused always.

Endpoints are checked when a route is saved and before each call (``check_route``, which
remembers a name's addresses for ``RESOLVE_TTL`` seconds), and — what enforces it — at every
connection: ``checked_addresses`` resolves the host afresh, checks every address, and the
connection is made to one of those checked addresses (``tenant_runtime.outbound``), so a name
that re-resolves to a private address between the check and the connection (DNS rebinding) is
refused. Redirects are never followed: ``RedirectRefused``."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from tenant_runtime.exceptions import TenantInvalidInput

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AMBIENT_HOSTS = {"azure-openai": (".openai.azure.com", ".cognitiveservices.azure.com"),
                 "bedrock": (".amazonaws.com",)}


class EgressRefused(TenantInvalidInput):
    default_message = "This endpoint is not one the platform lets routes reach."


class RedirectRefused(EgressRefused):
    """An upstream answered with a redirect: Magistrate never follows one (the next hop could be
    any address, and the request would carry the route's credential there)."""

    def __init__(self, status: int, location: str) -> None:
        self.status, self.location = status, location
        super().__init__(f"The upstream answered with a redirect (HTTP {status}) to "
                         f"{shown_location(location)}, which Magistrate does not follow.")


def shown_location(location: str) -> str:
    """A redirect's target without user info, query or fragment (they may carry secrets)."""
    parts = urlsplit(location)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    if not parts.scheme or not netloc:
        return repr(parts.path[:200] or location[:200])
    return f"{parts.scheme}://{netloc}{parts.path[:200]}"


@dataclass(frozen=True)
class EgressPolicy:
    ambient_identity: bool = False
    private_networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, *, ambient_identity: bool, private_networks: tuple[str, ...]) -> EgressPolicy:
        return cls(ambient_identity, tuple(ipaddress.ip_network(n, strict=False)
                                           for n in private_networks))


def _restricted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (address.is_private or address.is_loopback or address.is_reserved
            or address.is_multicast or address.is_unspecified
            or address in ipaddress.ip_network("100.64.0.0/10"))


_resolved: dict[str, tuple[float, tuple[str, ...]]] = {}
_resolved_lock = threading.Lock()
RESOLVE_TTL = 30.0


def _addresses(host: str) -> tuple[str, ...]:
    """The host's addresses, remembered for RESOLVE_TTL seconds (calls are many, hosts few)."""
    now = time.monotonic()
    with _resolved_lock:
        cached = _resolved.get(host)
        if cached and cached[0] > now:
            return cached[1]
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise EgressRefused(f"The endpoint's host {host!r} does not resolve.") from None
    found = tuple(sorted({str(info[4][0]).split("%")[0] for info in infos}))
    with _resolved_lock:
        if len(_resolved) > 1000:
            _resolved.clear()
        _resolved[host] = (now + RESOLVE_TTL, found)
    return found


def _refusal(policy: EgressPolicy, host: str, text: str) -> EgressRefused | None:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return EgressRefused(f"The endpoint's host {host!r} is a link-local address "
                             f"({address}); routes never reach those (cloud metadata).")
    if _restricted(address) and not any(address in net for net in policy.private_networks):
        return EgressRefused(f"The endpoint's host {host!r} resolves to {address}, a private "
                             "or loopback address the platform does not let routes reach; "
                             "an operator can allow its network "
                             "(MAGISTRATE_GATEWAY_PRIVATE_NETWORKS).")
    return None


def _check_all(policy: EgressPolicy, host: str, addresses: tuple[str, ...]) -> None:
    for text in addresses:
        refusal = _refusal(policy, host, text)
        if refusal is not None:
            raise refusal


def check_address(policy: EgressPolicy, endpoint: str) -> None:
    """Refuse an endpoint whose host resolves to an address the policy does not allow."""
    host = urlsplit(endpoint).hostname
    if not host:
        raise EgressRefused("The endpoint has no host.")
    _check_all(policy, host, _addresses(host))


def checked_addresses(policy: EgressPolicy, host: str) -> tuple[str, ...]:
    """At connect time: ``host`` resolved afresh (no cache), every address checked; the
    addresses a connection may then be made to. Any refused address refuses the host (a name
    answering both a public and a private address is not one to trust with either)."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise EgressRefused(f"The endpoint's host {host!r} does not resolve.") from None
    found: list[str] = []
    for info in infos:
        text = str(info[4][0]).split("%")[0]
        if text not in found:
            found.append(text)
    _check_all(policy, host, tuple(found))
    return tuple(found)


def check_route(policy: EgressPolicy, *, provider: str, endpoint: str | None,
                has_credential: bool) -> None:
    """A route's endpoint and identity, as the policy allows them (raises EgressRefused)."""
    if provider in AMBIENT_HOSTS and not has_credential:
        if not policy.ambient_identity:
            raise EgressRefused(f"A {provider} route needs a credential: the platform does not "
                                "lend its own cloud identity to routes "
                                "(MAGISTRATE_GATEWAY_AMBIENT_IDENTITY is off).")
        host = (urlsplit(endpoint).hostname or "") if endpoint else ""
        if endpoint and not host.endswith(AMBIENT_HOSTS[provider]):
            raise EgressRefused(f"A {provider} route on the platform's identity may only reach "
                                f"the provider's own hosts ({', '.join(AMBIENT_HOSTS[provider])}"
                                f"), not {host!r}.")
    if endpoint:
        check_address(policy, endpoint)

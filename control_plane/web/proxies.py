"""The client's address and scheme behind reverse proxies that the operator names.

``X-Forwarded-For`` is a list that every proxy appends its peer's address to; only the entries
appended by proxies we run can be believed, and the left-most entry is whatever the client
wrote. So trust is positional: ``MAGISTRATE_TRUSTED_PROXIES`` names the proxies (addresses or
networks), and

- when the TCP peer is not one of them, the peer is the client and the headers are ignored;
- when it is, the entries are walked from the right, skipping trusted proxies; the first one
  that is not a trusted proxy is the client (the address the outermost of our proxies saw);
- an entry that is not an address stops the walk: the last trusted hop before it is the client
  (what a client writes into the header can never be chosen this way);
- every entry trusted (the client itself sits inside a trusted network): the left-most entry.

``X-Forwarded-Proto`` (exactly ``http`` or ``https``) is believed under the same condition, from
a trusted peer only. The security middleware applies this once per request and rewrites the
ASGI scope's ``client`` and ``scheme``; uvicorn's own proxy-header handling is turned off
(``magistrate web``), so nothing else rewrites them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(value: str) -> IPAddress | None:
    """An address as proxies write it: bare, ``v4:port``, ``[v6]`` or ``[v6]:port``."""
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.networks
                                           if net.version == address.version)

    def client_address(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address, given the TCP peer and the ``X-Forwarded-For`` header values
        (in the order received)."""
        if not self.trusts(parse_address(peer or "")):
            return peer
        entries = [item.strip() for value in forwarded_for for item in value.split(",")]
        entries = [e for e in entries if e]
        if not entries:
            return peer
        nearest = str(parse_address(peer or "")) if peer else peer
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                return nearest
            if not self.trusts(address):
                return str(address)
            nearest = str(address)
        return nearest

    def scheme(self, peer: str | None, forwarded_proto: str | None, default: str) -> str:
        if forwarded_proto is None or not self.trusts(parse_address(peer or "")):
            return default
        value = forwarded_proto.strip().lower()
        return value if value in {"http", "https"} else default

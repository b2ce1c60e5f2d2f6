"""The client address behind reverse proxies: trusted only from the proxies the operator names,
and positionally (the right-most ``X-Forwarded-For`` entry that is not a trusted proxy).

Security review finding 6: with ``MAGISTRATE_TRUST_PROXY_HEADERS`` on, the left-most entry was
believed from any peer, so a client rotated it freely and the per-address sign-in limit was
void. These tests send spoofed, chained and missing headers, through the app's real edge."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.audit import AuthEvents
from control_plane.models import PlatformAuditEvent
from control_plane.settings import Settings
from control_plane.web.app import build_app, build_services
from control_plane.web.proxies import TrustedProxies
from tests.conftest import TEST_SECRET_KEY, make_settings
from tests.factories import csrf_token, sign_in

PROXY = "10.0.0.2"  # the reverse proxy in front of the app, in these tests


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    # the peer is not a trusted proxy: whatever it says is ignored
    ("198.51.100.7", ["1.2.3.4"], "198.51.100.7"),
    ("198.51.100.7", [], "198.51.100.7"),
    # our proxy appended the real client; the client's own claim to its left is ignored
    (PROXY, ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
    (PROXY, ["203.0.113.9"], "203.0.113.9"),
    # chained: the outer proxies are trusted too, and skipped from the right
    (PROXY, ["6.6.6.6, 203.0.113.9, 10.1.2.3, 10.9.9.9"], "203.0.113.9"),
    # several X-Forwarded-For headers are one list, in order
    (PROXY, ["6.6.6.6", "203.0.113.9, 10.1.2.3"], "203.0.113.9"),
    # the header missing or empty from our own proxy: the proxy itself
    (PROXY, [], PROXY),
    (PROXY, [" , "], PROXY),
    # junk where an address should be stops the walk at the last trusted hop
    (PROXY, ["203.0.113.9, not-an-address"], PROXY),
    (PROXY, ["unknown, 10.1.2.3"], "10.1.2.3"),
    # a trusted-looking entry written by the client cannot hide the address our proxy saw
    (PROXY, ["10.6.6.6, 203.0.113.9"], "203.0.113.9"),
    # every hop inside the trusted network: the left-most
    (PROXY, ["10.7.7.7, 10.1.2.3"], "10.7.7.7"),
    # ports and IPv6 as proxies write them
    (PROXY, ["203.0.113.9:4711"], "203.0.113.9"),
    (PROXY, ["[2001:db8::1]:443"], "2001:db8::1"),
    (PROXY, ["2001:db8::2"], "2001:db8::2"),
    ("::ffff:10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
])
def test_the_client_is_the_right_most_untrusted_address(peer, forwarded, expected):
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_address(peer, forwarded) == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    proxies = TrustedProxies([])
    assert not proxies
    assert proxies.client_address("198.51.100.7", ["1.2.3.4"]) == "198.51.100.7"
    assert proxies.scheme("198.51.100.7", "https", "http") == "http"


def test_forwarded_proto_is_believed_from_a_trusted_peer_only():
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.scheme(PROXY, "https", "http") == "https"
    assert proxies.scheme(PROXY, " HTTPS ", "http") == "https"
    assert proxies.scheme(PROXY, "gopher", "http") == "http"
    assert proxies.scheme("198.51.100.7", "https", "http") == "http"


def browser(app, address: str | None, *, peer: str = PROXY) -> TestClient:
    client = TestClient(app, base_url="http://testserver", client=(peer, 50000))
    if address is not None:
        client.headers["x-forwarded-for"] = address
    return client


@pytest.fixture
def proxied(database_url, redis_url, services):
    """An app behind a proxy at 10.0.0.2, with a per-address limit of 3 sign-ins."""
    svc = build_services(make_settings(trusted_proxies=(f"{PROXY}/32",), login_max_per_ip=3),
                         database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    yield build_app(svc)
    svc.close()


def test_rotating_the_spoofed_part_of_x_forwarded_for_does_not_escape_the_address_limit(
        proxied, db):
    for i in range(3):
        client = browser(proxied, f"6.6.6.{i}, 203.0.113.9")
        assert sign_in(client, f"nobody{i}@example.com").status_code == 401
    limited = sign_in(browser(proxied, "6.6.6.99, 203.0.113.9"), "another@example.com")
    assert limited.status_code == 429
    # another real client behind the same proxy is not limited
    assert sign_in(browser(proxied, "203.0.113.10"), "another@example.com").status_code == 401
    with db() as s:
        addresses = {e.details["ip"] for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == AuthEvents.SIGN_IN_FAILED))}
    assert addresses == {"203.0.113.9", "203.0.113.10"}  # never a spoofed one


def test_a_client_talking_to_the_app_directly_cannot_choose_its_address(proxied, db):
    for i in range(3):
        client = browser(proxied, f"203.0.113.{i}", peer="198.51.100.7")
        assert sign_in(client, f"nobody{i}@example.com").status_code == 401
    direct = browser(proxied, "203.0.113.50", peer="198.51.100.7")
    assert sign_in(direct, "another@example.com").status_code == 429
    with db() as s:
        addresses = {e.details["ip"] for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == AuthEvents.SIGN_IN_FAILED))}
    assert addresses == {"198.51.100.7"}


def test_a_missing_header_from_the_proxy_counts_against_the_proxy(proxied):
    for i in range(3):
        assert sign_in(browser(proxied, None), f"nobody{i}@example.com").status_code == 401
    assert sign_in(browser(proxied, None), "another@example.com").status_code == 429


def test_the_scheme_follows_the_same_trust(proxied):
    """X-Forwarded-Proto is believed from the trusted proxy only: it decides which Origin is
    our own (development), so an untrusted peer cannot make a foreign scheme look like ours."""
    for peer, expected in ((PROXY, 401), ("198.51.100.7", 403)):
        client = browser(proxied, "203.0.113.77", peer=peer)
        token = csrf_token(client)
        answer = client.post("/sign-in", data={"csrf_token": token, "email": "x@example.com",
                                               "password": "wrong password!!"},
                             headers={"Origin": "https://testserver",
                                      "X-Forwarded-Proto": "https"})
        assert answer.status_code == expected, peer


def test_the_deprecated_switch_trusts_loopback_only():
    legacy = Settings.from_env({"MAGISTRATE_TRUST_PROXY_HEADERS": "true"})
    assert legacy.proxy_networks == ("127.0.0.0/8", "::1/128")
    named = Settings.from_env({"MAGISTRATE_TRUST_PROXY_HEADERS": "true",
                               "MAGISTRATE_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert named.proxy_networks == ("10.0.0.0/8", "192.0.2.1/32")
    assert Settings.from_env({}).proxy_networks == ()
    proxies = TrustedProxies(legacy.proxy_networks)
    assert proxies.client_address("10.0.0.2", ["1.2.3.4"]) == "10.0.0.2"
    assert proxies.client_address("127.0.0.1", ["6.6.6.6, 1.2.3.4"]) == "1.2.3.4"


def test_uvicorn_rewrites_nothing_itself():
    """``magistrate web`` turns uvicorn's proxy-header handling off: the edge above is the one
    place the client address is read (uvicorn's would trust its own list)."""
    import ast
    from pathlib import Path

    import control_plane.cli.stack as cli

    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    values = [node.values[node.keys.index(key)] for node in ast.walk(tree)
              if isinstance(node, ast.Dict) for key in node.keys
              if isinstance(key, ast.Constant) and key.value == "proxy_headers"]
    assert values and all(isinstance(v, ast.Constant) and v.value is False for v in values)
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Constant)
                and node.value == "forwarded_allow_ips"]

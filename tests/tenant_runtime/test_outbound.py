"""Egress is checked at every hop (DESIGN.md, invariant 10; security review issue 15, finding
1): for every provider adapter of the registry, streaming and not, and for the webhook sender,
through the real SDKs and real sockets on loopback —

- an upstream that answers 307 or 303 with ``Location`` pointing at a refused address is not
  followed: the refused address gets no connection and no byte, the caller one sentence;
- a redirect to an address the policy would allow is not followed either;
- an endpoint whose address the policy refuses is refused at connect time, with no pre-check;
- a name that re-resolves to a refused address after it was checked (DNS rebinding) is refused
  at connect time, and a name that still resolves to its checked address is reached at that
  address with its own ``Host``, and over TLS the certificate is still verified for the name,
  which is also the SNI sent.

The policy allows 127.0.0.1 only; the trap listens on 127.0.0.2. DNS answers for the test's
names come from a fake resolver in place of ``socket.getaddrinfo`` (no DNS server here); every
other name goes to the real one."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tenant_runtime.gateway.egress import EgressPolicy, check_route
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.gateway.providers.base import PROVIDERS, ProviderError, Target
from tenant_runtime.gateway.providers.registry import adapter_for, close_clients
from tenant_runtime.redaction import Profile, redact_request
from tenant_runtime.webhooks import poster, send_signed
from tests.fakes.llm_servers import LLMServer
from tests.fakes.redirects import REFUSED_HOST, Redirector, TLSUpstream, Trap, tls_files
from tests.webhook_receiver import Receiver

ONLY_127_0_0_1 = EgressPolicy.parse(ambient_identity=False, private_networks=("127.0.0.1/32",))
CLOSED = EgressPolicy()
PROMPT = "the quarterly numbers, before they are public"


def target(provider: str, base: str, policy: EgressPolicy, server: LLMServer | None = None
           ) -> Target:
    """A route of ``provider`` at ``base``; every provider of the registry must be here."""
    key = server.api_key if server else "sk-route-key"
    access = server.aws_access_key_id if server else "AKIDROUTE"
    fields = {
        "openai": {"endpoint": f"{base}/v1", "api_key": key},
        "on-prem": {"endpoint": f"{base}/v1", "api_key": key},
        "azure-openai": {"endpoint": base, "api_key": key, "api_version": "2024-10-21"},
        "anthropic": {"endpoint": base, "api_key": key},
        "bedrock": {"endpoint": base, "api_key": f"{access}:route-secret",
                    "region": "eu-central-1"},
    }[provider]
    return Target(provider, "the-model", timeout_seconds=5.0, egress=policy,  # type: ignore[arg-type]
                  **fields)


def call(provider: str, tgt: Target, *, stream: bool) -> None:
    chat = ChatRequest(model="m", messages=(ChatMessage("user", PROMPT),), max_tokens=50)
    request, _ = redact_request(chat, Profile.named("off"))
    adapter = adapter_for(provider)
    if stream:
        list(adapter.stream(request, tgt))
    else:
        adapter.complete(request, tgt)


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture
def trap() -> Iterator[Trap]:
    with Trap() as t:
        yield t


@pytest.fixture
def dns(monkeypatch) -> dict[str, str]:
    """name -> the one IPv4 address the fake resolver answers for it (changeable mid-test)."""
    answers: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     (answers[host], int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_every_provider_of_the_registry_is_covered():
    for provider in PROVIDERS:
        assert adapter_for(provider) is not None
        assert target(provider, "http://127.0.0.1:1", CLOSED).provider == provider


# -- redirects -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("status", [307, 303])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_redirect_to_a_refused_address_is_not_followed(trap, provider, status,
                                                                  stream):
    with Redirector(status, trap.url("/v1/steal?token=abc")) as upstream:
        with pytest.raises(ProviderError) as caught:
            call(provider, target(provider, upstream.base_url, ONLY_127_0_0_1), stream=stream)

        assert len(upstream.requests) == 1  # one attempt: a redirect is not retried either
    assert (trap.connections, trap.data) == (0, b"")
    error = caught.value
    assert error.status == status and error.attempts == 1
    assert (f"the provider answered with a redirect to http://{REFUSED_HOST}:{trap.port}"
            f"/v1/steal, which Magistrate does not follow") in str(error)
    assert "token=abc" not in str(error)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_redirect_is_not_followed_even_to_an_allowed_address(provider):
    with Trap("127.0.0.1") as allowed, Redirector(307, allowed.url()) as upstream:
        with pytest.raises(ProviderError, match="which Magistrate does not follow"):
            call(provider, target(provider, upstream.base_url, ONLY_127_0_0_1), stream=False)
        assert (allowed.connections, allowed.data) == (0, b"")


# -- addresses, at connect time ------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_address_is_refused_at_connect_time(provider, stream):
    with LLMServer() as server:
        with pytest.raises(ProviderError) as caught:
            call(provider, target(provider, server.base_url, CLOSED, server), stream=stream)
        assert server.received == []
    assert caught.value.attempts == 1
    assert "the egress policy refused the connection" in str(caught.value)
    assert "resolves to 127.0.0.1, a private or loopback address" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_name_that_re_resolves_to_a_refused_address_is_refused_at_connect_time(dns,
                                                                                provider):
    with LLMServer() as server, Trap(REFUSED_HOST, int(server.base_url.rsplit(":", 1)[1])) as trap:
        name = f"rebind-{provider}.test"
        base = f"http://{name}:{trap.port}"
        tgt = target(provider, base, ONLY_127_0_0_1, server)
        dns[name] = "127.0.0.1"
        # the route is saved, and the gateway's check before the call passes
        check_route(ONLY_127_0_0_1, provider=provider, endpoint=tgt.endpoint,
                    has_credential=True)
        dns[name] = REFUSED_HOST  # the name is re-pointed before the connection
        with pytest.raises(ProviderError) as caught:
            call(provider, tgt, stream=False)

        assert (trap.connections, trap.data) == (0, b"")
        assert server.received == []
    assert f"resolves to {REFUSED_HOST}" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(dns, provider):
    with LLMServer() as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        name = f"pinned-{provider}.test"
        dns[name] = "127.0.0.1"
        call(provider, target(provider, f"http://{name}:{port}", ONLY_127_0_0_1, server),
             stream=True)
        (received,) = server.received
    assert received.headers["host"] == f"{name}:{port}"
    assert PROMPT.encode() in received.body


# -- webhooks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [307, 303])
def test_a_webhook_redirect_to_a_refused_address_is_not_followed(trap, status):
    with Redirector(status, trap.url("/hook?secret=1")) as receiver:
        reason = send_signed(poster(ONLY_127_0_0_1), receiver.base_url + "/hook", "s3cret",
                             b'{"type": "approval.requested"}')
        assert receiver.requests == [("POST", "/hook")]
    assert (trap.connections, trap.data) == (0, b"")
    assert reason == (f"The upstream answered with a redirect (HTTP {status}) to "
                      f"http://{REFUSED_HOST}:{trap.port}/hook, which Magistrate does not "
                      "follow.")


def test_a_webhook_to_a_refused_address_is_not_sent():
    receiver = Receiver()
    try:
        reason = send_signed(poster(CLOSED), receiver.url, "s3cret", b"{}")
        assert receiver.received == []
        assert reason is not None and "resolves to 127.0.0.1, a private or loopback" in reason
        assert send_signed(poster(ONLY_127_0_0_1), receiver.url, "s3cret", b"{}") is None
        assert len(receiver.received) == 1
    finally:
        receiver.stop()


def test_a_webhook_name_that_re_resolves_to_a_refused_address_is_refused(dns):
    receiver = Receiver()
    port = receiver.server.server_address[1]
    try:
        with Trap(REFUSED_HOST, port) as trap:
            dns["hooks.rebind.test"] = REFUSED_HOST
            reason = send_signed(poster(ONLY_127_0_0_1), f"http://hooks.rebind.test:{port}/hook",
                                 "s3cret", b"{}")
            assert (trap.connections, trap.data) == (0, b"")
        assert reason is not None and f"resolves to {REFUSED_HOST}" in reason
        assert receiver.received == []
    finally:
        receiver.stop()


# -- TLS to a checked address ---------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "bedrock"])  # the httpx2 stack and botocore's
def test_tls_to_the_checked_address_still_verifies_and_names_the_host(dns, tmp_path, monkeypatch,
                                                                      provider):
    ca, certificate, key = tls_files(tmp_path, "tls-pinned.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # httpx2
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))  # botocore
    dns["tls-pinned.test"] = dns["tls-other.test"] = "127.0.0.1"
    with TLSUpstream(certificate, key) as upstream:
        base = f"https://tls-pinned.test:{upstream.port}"
        call(provider, target(provider, base, ONLY_127_0_0_1), stream=False)
        assert upstream.server_names[-1] == "tls-pinned.test"
        assert upstream.hosts == [f"tls-pinned.test:{upstream.port}"]
        # the same address under a name the certificate does not carry: refused by TLS
        other = f"https://tls-other.test:{upstream.port}"
        with pytest.raises(ProviderError):
            call(provider, target(provider, other, ONLY_127_0_0_1), stream=False)
        assert upstream.server_names[-1] == "tls-other.test"
        assert len(upstream.hosts) == 1


def test_a_client_dropped_without_closing_closes_its_connections_when_collected():
    """The adapters' cache evicts clients without closing them (a call in another thread may
    still hold one); a client built here must then close its pool when it is collected, or
    its kept-alive sockets leak (and, in a long-lived process, pile up)."""
    import gc
    import warnings

    from tenant_runtime import outbound

    with LLMServer() as upstream:  # HTTP/1.1: the connection stays open in the pool
        client = outbound.http_client(EgressPolicy.parse(
            ambient_identity=False, private_networks=("127.0.0.0/8",)))
        client.post(upstream.base_url + "/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del client
            gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []

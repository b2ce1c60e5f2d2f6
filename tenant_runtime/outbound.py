"""Every outbound HTTP connection a tenant's configuration can aim (provider routes, webhooks)
is made here, so the egress policy (``tenant_runtime.gateway.egress``) holds at every hop
(DESIGN.md, invariant 10). Two HTTP stacks, one rule each:

- **httpx2** (the openai and anthropic SDKs, Azure OpenAI through openai, webhooks):
  ``http_client(policy)`` is an ``httpx2.Client`` whose transport connects only through
  ``CheckedBackend`` and refuses redirects (``CheckedTransport``); ``follow_redirects`` is off
  and the environment's proxies are not used (a proxy would resolve the name itself, out of our
  sight); CA certificates are found as the SDKs find them (``SSL_CERT_FILE``, ``SSL_CERT_DIR``).
- **httpx2, async** (MCP upstreams, through the ``mcp`` SDK's client, which takes an
  ``httpx2.AsyncClient``; the async openai and anthropic SDK clients of the providers):
  ``async_http_client(policy)`` is the same rule on ``CheckedAsyncBackend`` (the name is
  resolved and checked in a worker thread, so the event loop never blocks on DNS) and
  ``CheckedAsyncTransport``.
- **botocore** (Bedrock): ``aws_client(session, service, policy, ...)`` builds the boto3 client
  and gives its endpoint an ``URLLib3Session`` whose urllib3 connection classes connect the same
  way and refuse redirects. botocore has no public hook for its connection classes, so the
  session's ``_endpoint.http_session`` is replaced; a test builds the client and checks that
  no byte reaches a refused address, so a botocore release that moves it fails loudly.

At connect time the host is resolved afresh and *every* address checked
(``egress.checked_addresses``); the socket is then opened to one of those checked addresses,
while TLS still verifies and sends SNI for the host name. So a name that re-resolves to a private
address after an earlier check (DNS rebinding) is refused, and no connection is ever made to an
address that was not checked.

A 301, 302, 303, 307 or 308 answer with a ``Location`` raises ``RedirectRefused`` (its
sentence names where it pointed, without query or credentials): nothing is sent to the next
hop, whatever the SDK above would have done. ``refusal(exc)`` finds either refusal inside
whatever an SDK wrapped it in, for the adapters' error sentences.

``tests/test_outbound.py`` enumerates the packages for HTTP clients built anywhere else.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Iterable
from typing import Any, TypeVar, cast

import anyio.to_thread
import botocore.awsrequest
import botocore.config
import botocore.httpsession
import httpcore2
import httpx2
import urllib3.util.connection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from tenant_runtime.gateway.egress import (
    EgressPolicy,
    EgressRefused,
    RedirectRefused,
    checked_addresses,
)

E = TypeVar("E", bound=BaseException)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# the SDKs' own pool sizes (openai._constants, anthropic._constants), kept when we build the client
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


# -- httpx2 --------------------------------------------------------------------------------------

class CheckedBackend(httpcore2.SyncBackend):
    """httpcore2's socket backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        addresses = checked_addresses(self.policy, host)
        last: httpcore2.ConnectError | None = None
        for address in addresses:  # TLS (SNI, certificate) still uses ``host``, the origin's
            try:
                return super().connect_tcp(address, port, timeout, local_address,
                                           socket_options)
            except httpcore2.ConnectError as exc:
                last = exc
        assert last is not None  # noqa: S101 - checked_addresses answers at least one
        raise last


class CheckedTransport(httpx2.HTTPTransport):
    """``httpx2.HTTPTransport`` over ``CheckedBackend``, refusing redirects."""

    def __init__(self, policy: EgressPolicy, *, limits: httpx2.Limits = LIMITS) -> None:
        # certificates as the SDKs find them (SSL_CERT_FILE, SSL_CERT_DIR, the system's)
        ssl_context = httpx2.create_ssl_context()
        super().__init__(verify=ssl_context, limits=limits)
        # the pool HTTPTransport built, again with our backend (it takes no backend argument)
        self._pool = httpcore2.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(policy))

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        location = response.headers.get("location")
        if response.status_code in REDIRECT_STATUSES and location is not None:
            response.close()
            raise RedirectRefused(response.status_code, location)
        return response


def http_client(policy: EgressPolicy, *, timeout: float = 60.0,
                limits: httpx2.Limits = LIMITS) -> httpx2.Client:
    """The one way to build an httpx2 client for a tenant-chosen destination. Its pool is
    closed when the client is collected: the SDKs do that for clients they build, not for one
    passed in, and the adapters' cache drops clients without closing them (a call in another
    thread may still hold one)."""
    transport = CheckedTransport(policy, limits=limits)
    client = httpx2.Client(transport=transport, timeout=timeout, follow_redirects=False,
                           trust_env=False)
    weakref.finalize(client, transport.close)
    return client


# -- httpx2, async (MCP upstreams, async provider clients) -------------------------------------

class CheckedAsyncBackend(httpcore2.AnyIOBackend):
    """httpcore2's anyio backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore2.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(checked_addresses, self.policy, host)
        last: httpcore2.ConnectError | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(address, port, timeout, local_address,
                                                 socket_options)
            except httpcore2.ConnectError as exc:
                last = exc
        assert last is not None  # noqa: S101 - checked_addresses answers at least one
        raise last


class CheckedAsyncTransport(httpx2.AsyncHTTPTransport):
    """``httpx2.AsyncHTTPTransport`` over ``CheckedAsyncBackend``, refusing redirects."""

    def __init__(self, policy: EgressPolicy, *, limits: httpx2.Limits = LIMITS) -> None:
        ssl_context = httpx2.create_ssl_context()
        super().__init__(verify=ssl_context, limits=limits)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedAsyncBackend(policy))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        location = response.headers.get("location")
        if response.status_code in REDIRECT_STATUSES and location is not None:
            await response.aclose()
            raise RedirectRefused(response.status_code, location)
        return response


def async_http_client(policy: EgressPolicy, *, headers: dict[str, str] | None = None,
                      auth: httpx2.Auth | None = None,
                      timeout: float | httpx2.Timeout = 60.0,
                      limits: httpx2.Limits = LIMITS) -> httpx2.AsyncClient:
    """The one way to build an async httpx2 client for a tenant-chosen destination (an MCP
    upstream, a provider's async SDK client). Close it on its event loop (``async with``, or
    ``await client.aclose()``): that closes its pool. ``auth``'s own requests (an OAuth token
    endpoint, metadata discovery) go through the same checked transport. A number ``timeout``
    is an MCP upstream's (reads wait at least 300 s, for its long-lived event streams); pass an
    ``httpx2.Timeout`` for anything else."""
    if not isinstance(timeout, httpx2.Timeout):
        timeout = httpx2.Timeout(timeout, read=max(timeout, 300.0))
    return httpx2.AsyncClient(transport=CheckedAsyncTransport(policy, limits=limits),
                              headers=headers, auth=auth, timeout=timeout,
                              follow_redirects=False, trust_env=False)


# -- botocore (urllib3) --------------------------------------------------------------------------

class _CheckedConnection:
    """Mixed into botocore's urllib3 connection classes: connect to a checked address, refuse a
    redirect answer. ``policy`` is set on the per-policy subclass (``_pool_classes``)."""

    policy: EgressPolicy
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        addresses = checked_addresses(self.policy, self.host)
        last: OSError | None = None
        for address in addresses:
            try:
                return urllib3.util.connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError as exc:
                raise ConnectTimeoutError(cast(Any, self),
                                          f"Connection to {self.host} timed out.") from exc
            except OSError as exc:
                last = exc
        raise NewConnectionError(cast(Any, self), f"Failed to establish a new connection: {last}")

    def getresponse(self) -> Any:
        response = super().getresponse()  # type: ignore[misc]
        location = response.headers.get("location")
        if response.status in REDIRECT_STATUSES and location is not None:
            response.close()
            raise RedirectRefused(response.status, location)
        return response


_classes: dict[EgressPolicy, dict[str, type]] = {}


def _pool_classes(policy: EgressPolicy) -> dict[str, type]:
    """botocore's connection pools for http and https, whose connections are checked."""
    if policy not in _classes:
        http = type("CheckedAWSHTTPConnection",
                    (_CheckedConnection, botocore.awsrequest.AWSHTTPConnection),
                    {"policy": policy})
        https = type("CheckedAWSHTTPSConnection",
                     (_CheckedConnection, botocore.awsrequest.AWSHTTPSConnection),
                     {"policy": policy})
        _classes[policy] = {
            "http": type("CheckedAWSHTTPConnectionPool",
                         (botocore.awsrequest.AWSHTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("CheckedAWSHTTPSConnectionPool",
                          (botocore.awsrequest.AWSHTTPSConnectionPool,),
                          {"ConnectionCls": https})}
    return _classes[policy]


class CheckedURLLib3Session(botocore.httpsession.URLLib3Session):  # type: ignore[misc]
    """botocore's HTTP session with checked connections and no proxies from the environment."""

    def __init__(self, policy: EgressPolicy, *, verify: bool | str,
                 timeout: float | tuple[float, float], max_pool_connections: int) -> None:
        super().__init__(verify=verify, proxies={}, timeout=timeout,
                         max_pool_connections=max_pool_connections,
                         socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self._pool_classes_by_scheme = _pool_classes(policy)
        self._manager.pool_classes_by_scheme = self._pool_classes_by_scheme


def aws_client(session: Any, service: str, policy: EgressPolicy, *, endpoint_url: str | None,
               config: botocore.config.Config) -> Any:
    """The one way to build a boto3 client for a tenant-chosen destination."""
    client = session.client(service, endpoint_url=endpoint_url, config=config)
    old = client._endpoint.http_session
    client._endpoint.http_session = CheckedURLLib3Session(
        policy, verify=old._verify,  # what botocore chose (AWS_CA_BUNDLE, ca_bundle, ...)
        timeout=(config.connect_timeout, config.read_timeout),
        max_pool_connections=config.max_pool_connections)
    old.close()
    return client


# -- what went wrong -----------------------------------------------------------------------------

def cause_of(exc: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` of exception behind ``exc``, however an SDK wrapped it (``raise ...
    from``, an exception raised while handling it, an exception group, botocore's ``error=``
    keyword)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        error = getattr(current, "kwargs", {}).get("error") if isinstance(
            getattr(current, "kwargs", None), dict) else None
        pending += [current.__cause__, current.__context__,
                    error if isinstance(error, BaseException) else None]
        if isinstance(current, BaseExceptionGroup):
            pending += list(current.exceptions)
    return None


def refusal(exc: BaseException) -> EgressRefused | None:
    """The egress or redirect refusal behind ``exc``, however an SDK wrapped it."""
    return cause_of(exc, EgressRefused)

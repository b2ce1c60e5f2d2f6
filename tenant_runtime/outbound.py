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
- **asyncio and httptools** (the providers' async SDK clients on the gateway's hot path):
  ``async_http_client(policy, lean=True)`` puts ``LeanAsyncTransport`` under the
  ``httpx2.AsyncClient``: the same resolution, checks and redirect refusal, without httpcore2.
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

import asyncio
import socket
import ssl
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar, cast

import anyio.to_thread
import botocore.awsrequest
import botocore.config
import botocore.httpsession
import httpcore2
import httptools
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
                      limits: httpx2.Limits = LIMITS, lean: bool = False) -> httpx2.AsyncClient:
    """The one way to build an async httpx2 client for a tenant-chosen destination (an MCP
    upstream, a provider's async SDK client). Close it on its event loop (``async with``, or
    ``await client.aclose()``): that closes its pool. ``auth``'s own requests (an OAuth token
    endpoint, metadata discovery) go through the same checked transport. A number ``timeout``
    is an MCP upstream's (reads wait at least 300 s, for its long-lived event streams); pass an
    ``httpx2.Timeout`` for anything else. ``lean``: the providers' transport on the gateway's
    hot path (``LeanAsyncTransport`` below: the same checks, a fraction of the CPU)."""
    if not isinstance(timeout, httpx2.Timeout):
        timeout = httpx2.Timeout(timeout, read=max(timeout, 300.0))
    transport: httpx2.AsyncBaseTransport = (
        LeanAsyncTransport(policy) if lean else CheckedAsyncTransport(policy, limits=limits))
    return httpx2.AsyncClient(transport=transport,
                              headers=headers, auth=auth, timeout=timeout,
                              follow_redirects=False, trust_env=False)


# -- the providers' lean async transport (asyncio, httptools) ------------------------------
#
# A lean HTTP/1.1 transport for the providers' async SDK clients on the gateway's hot path.
#
# The SDK stays the client (its request building, authentication, errors and retries decisions)
# and ``httpx2.AsyncClient`` stays its HTTP client; only the transport under it is replaced:
# httpcore2's connection pool over anyio streams and h11 cost about 0.45 ms of CPU more per
# call than this (0.78 against 0.33 ms, the async OpenAI client to a local server; the sync
# client 0.43 ms: ``ops/BENCHMARKS.md``). Here
# one keep-alive connection per request in flight, an ``asyncio.Protocol`` whose bytes are parsed
# by ``httptools`` (uvicorn's parser), and the body handed up as it arrives (streams included).
#
# The egress rule holds as for the other stacks of this module (DESIGN.md, invariant 10): the
# host is resolved and every address checked (``egress.checked_addresses``) in a worker thread at
# connect time, the socket opened to a checked address only, TLS verifying the host name; a
# redirect answer raises ``RedirectRefused`` (nothing is sent to the next hop). Errors are
# httpx2's (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``),
# so the SDK turns them into its usual exceptions.
#
# A connection goes back to the pool only when its answer was read to the end and both sides
# keep it alive; one the server closed while idle is dropped at checkout. HTTP/1.1 only, no
# proxies (none are used towards providers), no request body streamed in pieces (the SDK sends
# JSON bytes).

MAX_IDLE_PER_ORIGIN = 100


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: its transport, and the answer being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._pieces: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self.complete = False
        self.error: Exception | None = None
        self.status = 0
        self._keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx2.RemoteProtocolError(f"the provider's answer is not HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.complete:
            self._fail(httpx2.RemoteProtocolError(
                "the provider closed the connection before the end of its answer"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()  # the parser knows it only here
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._ready.set()

    def on_message_complete(self) -> None:
        self.complete = True
        self._ready.set()

    # -- one exchange --------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._ready.set()

    def reusable(self) -> bool:
        return (not self.lost and self.transport is not None
                and not self.transport.is_closing())

    async def exchange(self, request: bytes, read_timeout: float | None
                       ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send ``request``; the answer's status and headers once they arrived."""
        assert self.transport is not None  # noqa: S101 - connected before use
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._pieces, self.complete, self.error = [], deque(), False, None
        self._keep_alive = False
        self._head = asyncio.get_running_loop().create_future()
        self._ready.clear()
        self.transport.write(request)
        try:
            async with asyncio.timeout(read_timeout):
                await self._head
        except TimeoutError:
            self.close()
            raise httpx2.ReadTimeout("the provider did not answer in time") from None
        return self.status, self._headers

    async def body(self, read_timeout: float | None) -> AsyncIterator[bytes]:
        while True:
            while self._pieces:
                yield self._pieces.popleft()
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self._ready.clear()
            try:
                async with asyncio.timeout(read_timeout):
                    await self._ready.wait()
            except TimeoutError:
                self.close()
                raise httpx2.ReadTimeout("the provider stopped sending its answer") from None

    def keep_alive(self) -> bool:
        return self.complete and self.error is None and self._keep_alive

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Body(httpx2.AsyncByteStream):
    def __init__(self, transport: LeanAsyncTransport, origin: tuple[str, str, int],
                 connection: _Connection, read_timeout: float | None) -> None:
        self._transport, self._origin = transport, origin
        self._connection, self._read_timeout = connection, read_timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._connection.body(self._read_timeout):
            yield piece

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.release(self._origin, self._connection)


class LeanAsyncTransport(httpx2.AsyncBaseTransport):
    """``httpx2``'s transport interface over ``_Connection``s, connecting only where
    ``policy`` allows and refusing redirects."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._ssl = httpx2.create_ssl_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"cannot send to {url.scheme!r} URLs")
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, url.host, port)
        timeouts = request.extensions.get("timeout", {})
        content = await request.aread()
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode()]
        for name, value in request.headers.raw:
            head.append(name + b": " + value + b"\r\n")
        if "content-length" not in request.headers and "transfer-encoding" not in \
                request.headers:
            head.append(b"Content-Length: %d\r\n" % len(content))
        head.append(b"\r\n")
        message = b"".join(head) + content
        connection = await self._checkout(origin, timeouts.get("connect"))
        try:
            status, headers = await connection.exchange(message, timeouts.get("read"))
        except BaseException:
            connection.close()
            raise
        response = httpx2.Response(
            status, headers=headers,
            stream=_Body(self, origin, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"}, request=request)
        location = response.headers.get("location")
        if status in REDIRECT_STATUSES and location is not None:
            connection.close()
            await response.aclose()
            raise RedirectRefused(status, location)
        return response

    async def _checkout(self, origin: tuple[str, str, int],
                        connect_timeout: float | None) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        scheme, host, port = origin
        try:
            async with asyncio.timeout(connect_timeout):
                addresses = await anyio.to_thread.run_sync(checked_addresses, self.policy,
                                                           host)
                return await self._connect(addresses, scheme, host, port)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from None

    async def _connect(self, addresses: tuple[str, ...], scheme: str, host: str,
                       port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for address in addresses:
            try:
                tls: dict[str, Any] = ({"ssl": self._ssl, "server_hostname": host}
                                       if scheme == "https" else {})
                _, connection = await loop.create_connection(_Connection, address, port, **tls)
                return connection
            except (OSError, ssl.SSLError) as exc:
                last = exc
        raise httpx2.ConnectError(f"could not connect to {host}:{port}: {last}")

    def release(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        """A response's body is closed: keep its connection when it can serve another."""
        idle = self._idle.setdefault(origin, [])
        if (not self._closed and connection.keep_alive() and connection.reusable()
                and len(idle) < MAX_IDLE_PER_ORIGIN):
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


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

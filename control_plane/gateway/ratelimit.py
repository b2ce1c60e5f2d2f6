"""Per-tenant gateway rate limits: requests and tokens per minute, in fixed one-minute windows
in Redis. When Redis cannot be reached the limits fail open to an in-process limiter with the
same rules (per process, so looser by the number of web processes) and a warning is logged once
until Redis answers again: the gateway keeps serving, still limited.

On the event loop (the gateway's call path under ``tenant_runtime.bridge.run``) the counts go
through ``redis.asyncio`` with the sync client's connection settings, one client per loop
(``aclose`` closes the running loop's at shutdown), so a slow or missing Redis never blocks the
loop; the rules and the fallback are the same code."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio

from control_plane.auth.ratelimit import LocalWindows
from control_plane.exceptions import RateLimited
from tenant_runtime import bridge
from tenant_runtime.observability import metrics

log = logging.getLogger("magistrate.gateway.ratelimit")
WINDOW = 60


# the connection settings the loop's async client takes from the sync one
_SETTINGS = frozenset({"host", "port", "db", "username", "password", "path", "socket_timeout",
                       "socket_connect_timeout", "socket_keepalive", "health_check_interval",
                       "client_name", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
                       "ssl_ca_certs", "ssl_check_hostname"})
P = TypeVar("P", redis.client.Pipeline, redis.asyncio.client.Pipeline)


def _filled(pipe: P, keys: list[tuple[str, int]]) -> P:
    for key, amount in keys:
        pipe.incrby(key, amount)
        pipe.expire(key, WINDOW * 2)
    return pipe


# the counts under way on the event loops of this process (asyncio holds its tasks weakly)
_COUNTING: set[asyncio.Future[list[Any]]] = set()


class GatewayRateLimited(RateLimited):
    def __init__(self, retry_after: int, what: str, limit: int) -> None:
        super().__init__(retry_after, f"This tenant's gateway limit of {limit:,} {what} per "
                                      f"minute is reached; retry in {max(1, retry_after)} s.")


class GatewayRateLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.local = LocalWindows()
        self.degraded = False
        self._loop_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, redis.asyncio.Redis] = weakref.WeakKeyDictionary()

    def _loop_client(self) -> redis.asyncio.Redis:
        """The running loop's async client, with the sync client's connection settings."""
        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is None:
            pool = self.client.connection_pool
            kwargs: dict[str, Any] = {name: value for name, value in
                                      pool.connection_kwargs.items() if name in _SETTINGS}
            if "path" in kwargs:  # a Unix socket (the embedded Redis)
                kwargs["connection_class"] = redis.asyncio.UnixDomainSocketConnection
            elif isinstance(pool.connection_class, type) and issubclass(
                    pool.connection_class, redis.SSLConnection):
                kwargs["connection_class"] = redis.asyncio.SSLConnection
            client = self._loop_clients[loop] = redis.asyncio.Redis(
                connection_pool=redis.asyncio.ConnectionPool(**kwargs))
        return client

    async def aclose(self) -> None:
        """Close the running loop's async client, if it made one."""
        client = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose(close_connection_pool=True)  # a pool we made

    async def _add_on_loop(self, keys: list[tuple[str, int]],
                           sent: asyncio.Future[None]) -> list[Any]:
        """``_filled``'s commands, as one pipeline on a connection of the loop's client;
        ``sent`` is resolved once they are written (the connection opened first if need be)."""
        commands: list[tuple[Any, ...]] = []
        for key, amount in keys:
            commands += [("INCRBY", key, amount), ("EXPIRE", key, WINDOW * 2)]
        pool = self._loop_client().connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            if not sent.done():
                sent.set_result(None)
            return [await connection.read_response() for _ in commands]
        except BaseException:
            await connection.disconnect()  # answers may be left unread: not for another use
            raise
        finally:
            await pool.release(connection)

    def _begin(self, keys: list[tuple[str, int]]) -> Callable[[], list[Any]]:
        """INCRBY and EXPIRE each key; a function that returns Redis's answers, in order. On the
        event loop the commands are written now and their answers read when it is called, so
        what the caller does meanwhile overlaps the round trip; elsewhere they are sent and
        answered at once."""
        if not bridge.active():
            answers = _filled(self.client.pipeline(transaction=False), keys).execute()
            return lambda: answers
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._add_on_loop(keys, sent))
        _COUNTING.add(task)  # held until it ends, whether or not the caller still waits

        def ended(done: asyncio.Future[list[Any]]) -> None:
            _COUNTING.discard(done)
            if not sent.done():  # failed before it was written: the caller learns it below
                sent.set_result(None)
            if not done.cancelled():
                done.exception()  # retrieved, even when the caller never asks (cancelled)

        task.add_done_callback(ended)
        bridge.wait(sent)
        # shielded: a caller cancelled (its client hung up) stops waiting, while the count
        # still reads its answers and gives its connection back to the pool, still usable
        return lambda: bridge.wait(asyncio.shield(task))

    def _counts(self, keys: list[tuple[str, int]]) -> Callable[[], list[int]]:
        """Add each amount to its key's window (``_begin``); a function that returns the new
        totals (the same ones each time it is called)."""
        totals: list[int] = []

        def counted() -> list[int]:
            if not totals:
                totals.extend(self._totals(keys, answers))
            return totals

        try:
            answers = self._begin(keys)
        except redis.RedisError as exc:
            answers = _raising(exc)
        return counted

    def _totals(self, keys: list[tuple[str, int]], answers: Callable[[], list[Any]]
                ) -> list[int]:
        try:
            totals = answers()[::2]
            if self.degraded:
                log.warning("Redis answers again; gateway rate limits are shared again")
            self.degraded = False
            return [int(total) for total in totals]
        except redis.RedisError as exc:
            metrics.RATE_LIMIT_FALLBACKS.labels("gateway").inc()
            if not self.degraded:
                log.warning("Redis unreachable for gateway rate limits (%s); using the "
                            "in-process limiter until it returns", type(exc).__name__)
            self.degraded = True
            out = []
            for key, amount in keys:
                self.local.incr(key, WINDOW, amount)
                out.append(self.local.get(key)[0])
            return out

    def check(self, tenant_id: int, *, tokens: int, requests_per_minute: int,
              tokens_per_minute: int, now: float | None = None) -> None:
        """Count one request of about ``tokens`` tokens; raise GatewayRateLimited when the
        tenant is over either limit in this minute."""
        judge(self.count(tenant_id, tokens=tokens, now=now),
              requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)

    def count(self, tenant_id: int, *, tokens: int, now: float | None = None) -> Counted:
        """Count one request of about ``tokens`` tokens in this minute's window: the window's
        totals with it (``judge`` decides on them)."""
        return self.begin(tenant_id, tokens=tokens, now=now)()

    def begin(self, tenant_id: int, *, tokens: int,
              now: float | None = None) -> Callable[[], Counted]:
        """``count``, begun: a function that returns its ``Counted``. On the event loop the
        count is sent now and its answer awaited when the function is first called (the
        gateway admits the request meanwhile: the Redis round trip overlaps that work)."""
        moment = time.time() if now is None else now
        window = int(moment // WINDOW)
        retry_after = min(WINDOW, max(1, int((window + 1) * WINDOW - moment) + 1))
        base = f"magistrate:rl:gw:{tenant_id}:{window}"
        totals = self._counts([(f"{base}:req", 1), (f"{base}:tok", max(tokens, 1))])

        def counted() -> Counted:
            requests, used = totals()
            return Counted(requests, used, retry_after)

        return counted


def _raising(exc: BaseException) -> Callable[[], list[Any]]:
    def answers() -> list[Any]:
        raise exc
    return answers


@dataclass(frozen=True)
class Counted:
    """A request counted in its minute: the window's requests and tokens with it."""
    requests: int
    tokens: int
    retry_after: int


def judge(counted: Counted, *, requests_per_minute: int, tokens_per_minute: int) -> None:
    """Raise GatewayRateLimited when ``counted`` is over either limit."""
    if counted.requests > requests_per_minute or counted.tokens > tokens_per_minute:
        metrics.refused("rate_limit")
    if counted.requests > requests_per_minute:
        raise GatewayRateLimited(counted.retry_after, "requests", requests_per_minute)
    if counted.tokens > tokens_per_minute:
        raise GatewayRateLimited(counted.retry_after, "tokens", tokens_per_minute)

"""A web process's cache of checked API keys, for the gateway's hot path, and what keeps it
honest.

What is kept: for a presented key's SHA-256, what the gateway's one statement read about it
(``api_keys.GatewayKey``: the facts ``check_key`` judges, the tenant's data-key records); the
rules themselves, the expiry included, run again on every use. Unknown keys and wrong secrets
are never kept.

What drops an entry:

- a **notification**: triggers on every table that statement reads (api_keys, tenants,
  tenant_keys, users, memberships; migration ``0013_key_notify``) send
  ``pg_notify('magistrate_auth', 'key:<id>' | 'tenant:<id>' | 'user:<id>' | '*')`` on every
  row written, by the app or by SQL typed straight into the database. One connection per
  process LISTENs on a daemon thread and drops the entries it names;
- **not listening**: the cache answers only while that connection is proven alive: every
  ``HEARTBEAT_SECONDS`` it notifies itself on the channel, and it counts as alive for
  ``ALIVE_SECONDS`` after that heartbeat came back (notifications arrive in commit order, so
  every change committed before it was heard). At start, after the connection was lost (a
  restart, a ``pg_terminate_backend``, a network cut) and until it has LISTENed again, every
  call reads the database, and the whole cache is dropped when a new connection LISTENs. A
  notification lost with a connection can therefore never lengthen a revoked key's life;
- the **TTL** (``MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS``), as a last bound whatever happens.

A read that raced a notification is not kept: every notification bumps a generation, taken
before the read, and an entry is stored only if it has not moved (nor the connection changed)
since. So a revocation holds in every process within the notification delay (milliseconds;
ops/BENCHMARKS.md, ``ops/bench/keycache.py``), and never later than the TTL.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from control_plane.tenancy.api_keys import GatewayKey

log = logging.getLogger("magistrate.key_cache")
CHANNEL = "magistrate_auth"
HEARTBEAT_SECONDS = 1.0
ALIVE_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 5.0
# how often the listener looks whether it was closed, between notifications
STOP_POLL_SECONDS = 0.1
# how long closing waits for the listener to end (it wakes every STOP_POLL_SECONDS; longer only
# while it is connecting to a database that does not answer)
CLOSE_WAIT_SECONDS = 2.0


class KeyCache:
    """Checked keys by digest (an LRU of ``size``), dropped on notification, bypassed while
    the listener is not proven alive, and never older than ``ttl_seconds``."""

    def __init__(self, database_url: str, *, ttl_seconds: float, size: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._url = database_url
        self.ttl_seconds = ttl_seconds
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, GatewayKey]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every notification and every (dis)connection
        self._alive_until = 0.0  # the listener's connection is proven alive until then
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listener_pid: int | None = None  # the listening backend, for tests and the bench
        self.evicted = threading.Condition(self._lock)  # notified after every eviction

    # --- the hot path ----------------------------------------------------------------------

    def get(self, digest: str) -> tuple[GatewayKey | None, int | None]:
        """The entry of ``digest`` (None: read the database), and the generation to hand back
        to ``put`` (None: the cache is bypassed, keep nothing)."""
        if self._thread is None:
            self.start()
        now = self._clock()
        with self._lock:
            if now >= self._alive_until:
                return None, None
            found = self._entries.get(digest)
            if found is not None:
                stored, entry = found
                if now - stored < self.ttl_seconds:
                    self._entries.move_to_end(digest)
                    return entry, self._generation
                del self._entries[digest]
            return None, self._generation

    def put(self, digest: str, entry: GatewayKey, generation: int | None) -> None:
        """Keep ``entry``, read after ``get`` handed out ``generation``, unless anything was
        notified (or the connection changed) since."""
        if generation is None:
            return
        now = self._clock()
        with self._lock:
            if generation != self._generation or now >= self._alive_until:
                return
            self._entries[digest] = (now, entry)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    @property
    def listening(self) -> bool:
        return self._clock() < self._alive_until

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    # --- invalidation ----------------------------------------------------------------------

    def evict(self, payload: str) -> None:
        """Drop what one notification names: ``key:<id>``, ``tenant:<id>``, ``user:<id>`` (the
        keys that user created); anything else (``*``) drops everything."""
        kind, _, ident = payload.partition(":")
        with self._lock:
            self._generation += 1
            if kind in ("key", "tenant", "user") and ident.isdigit():
                number = int(ident)
                for digest in [d for d, (_, e) in self._entries.items()
                               if _names(e, kind, number)]:
                    del self._entries[digest]
            else:
                self._entries.clear()
            self.evicted.notify_all()

    def _connected(self, pid: int) -> None:
        """A new connection LISTENs: start empty; trusted once its heartbeat comes back."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self.listener_pid = pid

    def _alive(self) -> None:
        with self._lock:
            self._alive_until = self._clock() + ALIVE_SECONDS

    def _disconnected(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._alive_until = 0.0
            self.listener_pid = None

    # --- the listener ----------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._listen, name="magistrate-key-cache",
                                            daemon=True)
        self._thread.start()

    def close(self, wait: float = CLOSE_WAIT_SECONDS) -> bool:
        """Stop answering at once; the listener closes its connection and ends when it next
        wakes (within STOP_POLL_SECONDS), waited for up to ``wait`` seconds, so that closing
        an app never stalls on a database that does not answer. Whether it has ended: a
        listener left running holds a connection and may still log."""
        self._stop.set()
        self._disconnected()
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(wait)
        return not thread.is_alive()

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                                     application_name="magistrate-key-cache",
                                     keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                     keepalives_count=2) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._connected(conn.info.backend_pid)
                    backoff = 0.1
                    self._listen_on(conn)
            except Exception as exc:  # noqa: BLE001 - whatever it was, listen again
                if not self._stop.is_set():
                    log.warning("the key cache's listener lost its connection (%s); every "
                                "gateway call reads its key until it listens again",
                                type(exc).__name__)
            finally:
                self._disconnected()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _listen_on(self, conn: psycopg.Connection[Any]) -> None:
        """Evict what is notified; every HEARTBEAT_SECONDS notify ourselves, and count the
        connection alive when that comes back: notifications arrive in commit order, so every
        change committed before the heartbeat has been received (a connection that cannot
        hear its own heartbeat, e.g. through a transaction-pooling proxy, is never trusted)."""
        heartbeat = f"alive:{secrets.token_hex(8)}"
        next_beat = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_beat:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, heartbeat))
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
            for note in conn.notifies(timeout=STOP_POLL_SECONDS):
                if note.payload == heartbeat:
                    self._alive()
                elif not note.payload.startswith("alive:"):  # another process's heartbeat
                    self.evict(note.payload)


def _names(entry: GatewayKey, kind: str, number: int) -> bool:
    principal = entry.principal
    if kind == "key":
        return principal.key_id == number
    if kind == "tenant":
        return principal.tenant_id == number
    return principal.creator_id == number

"""Sign-in rate limits in Redis: slow a guesser down without locking the owner out.

Three counters, all checked before a password or MFA code is even looked at:

- **per address** (fixed window): at most ``max_per_ip`` attempts per ``window`` from one client
  address, whatever the accounts — one address cannot spray many accounts;
- **per address and account** (exponential backoff): after ``max_per_account`` failures from
  one address on one account, each further attempt from that pair waits ``BASE_DELAY`` seconds,
  doubling with every failure, up to ``max_backoff`` — one address guessing one password slows
  to a crawl (about ten guesses in the first quarter hour, then four an hour);
- **per account** (fixed window, an alarm, never a lock): once an account has seen
  ``max_per_account`` failures within the window from addresses other than this one, this
  address gets only *one* attempt on it before its own backoff begins — a guesser spread over
  many addresses pays the backoff from its second guess on each.

No counter ever refuses the owner for what someone else did: failures from the attacker's
addresses slow only those addresses, and the owner's first attempt from any other address is
evaluated (a correct password, and the MFA code when MFA is on, signs in). Sharing the
attacker's address (one NAT) costs the owner the current backoff, at most ``max_backoff``.
A success clears its own pair's backoff. SECURITY.md explains the choice.

When Redis cannot be reached the limiter fails open to an in-process limiter with the same
rules, and logs a warning: sign-in keeps working and is still limited, per process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable

import redis

from control_plane.exceptions import RateLimited
from tenant_runtime.observability import metrics

log = logging.getLogger("magistrate.ratelimit")

BASE_DELAY = 2.0  # seconds before the first attempt past the free ones; doubles per failure


class LocalWindows:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}

    def get(self, key: str) -> tuple[int, int]:
        with self._lock:
            count, reset_at = self._counts.get(key, (0, 0.0))
            now = time.monotonic()
            if reset_at <= now:
                return 0, 0
            return count, int(reset_at - now) + 1

    def incr(self, key: str, window: int, amount: int = 1) -> None:
        with self._lock:
            now = time.monotonic()
            count, reset_at = self._counts.get(key, (0, 0.0))
            if reset_at <= now:
                count, reset_at = 0, now + window
            self._counts[key] = (count + amount, reset_at)
            if len(self._counts) > 100_000:  # bounded memory under a flood
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}

    def delete(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class LocalBackoff:
    """The in-process twin of the pair records: failures and the time of the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: dict[str, tuple[int, float, float]] = {}  # failures, last, forget at

    def get(self, key: str) -> tuple[int, float]:
        with self._lock:
            failures, last, forget_at = self._pairs.get(key, (0, 0.0, 0.0))
            return (failures, last) if forget_at > time.monotonic() else (0, 0.0)

    def fail(self, key: str, at: float, memory: int) -> None:
        with self._lock:
            failures, _, forget_at = self._pairs.get(key, (0, 0.0, 0.0))
            now = time.monotonic()
            if forget_at <= now:
                failures = 0
            self._pairs[key] = (failures + 1, at, now + memory)
            if len(self._pairs) > 100_000:  # bounded memory under a flood
                self._pairs = {k: v for k, v in self._pairs.items() if v[2] > now}

    def delete(self, key: str) -> None:
        with self._lock:
            self._pairs.pop(key, None)


def backoff_seconds(failures: int, free: int, cap: int) -> float:
    """How long after its last failure a pair with ``failures`` failures must wait."""
    if failures < free:
        return 0.0
    return float(min(BASE_DELAY * 2 ** min(failures - free, 32), cap))


class LoginRateLimiter:
    def __init__(self, client: redis.Redis, *, max_per_ip: int, max_per_account: int,
                 window_seconds: int, max_backoff_seconds: int = 900,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.max_per_ip = max_per_ip
        self.max_per_account = max_per_account
        self.window = window_seconds
        self.max_backoff = max_backoff_seconds
        # a pair's failures are remembered this long after the last one
        self.memory = max(window_seconds, 2 * max_backoff_seconds)
        self.clock = clock
        self.local = LocalWindows()
        self.local_pairs = LocalBackoff()
        self.degraded = False

    @staticmethod
    def _ip_key(ip: str) -> str:
        return f"magistrate:rl:login:ip:{ip}"

    @staticmethod
    def _account_key(account: str) -> str:
        digest = hashlib.sha256(account.strip().lower().encode()).hexdigest()[:32]
        return f"magistrate:rl:login:acct:{digest}"

    @staticmethod
    def _pair_key(ip: str, account: str) -> str:
        digest = hashlib.sha256(f"{ip}|{account.strip().lower()}".encode()).hexdigest()[:32]
        return f"magistrate:rl:login:pair:{digest}"

    def _warn(self, exc: Exception) -> None:
        metrics.RATE_LIMIT_FALLBACKS.labels("sign_in").inc()
        if not self.degraded:
            log.warning("Redis unreachable for sign-in rate limits (%s); using the in-process "
                        "limiter until it returns", type(exc).__name__)
        self.degraded = True

    def _read(self, ip: str, account: str) -> tuple[int, int, int, int, float]:
        """(address attempts, seconds left in its window, account failures, pair failures,
        time of the pair's last failure), in one round trip."""
        ip_key, account_key = self._ip_key(ip), self._account_key(account)
        pair_key = self._pair_key(ip, account)
        try:
            pipe = self.client.pipeline()
            pipe.get(ip_key)
            pipe.ttl(ip_key)
            pipe.get(account_key)
            pipe.hmget(pair_key, "failures", "last")
            raw_ip, ttl, raw_account, (raw_failures, raw_last) = pipe.execute()
            self.degraded = False
            return (int(raw_ip or 0), max(int(ttl), 1), int(raw_account or 0),
                    int(raw_failures or 0), float(raw_last or 0.0))
        except redis.RedisError as exc:
            self._warn(exc)
            count, left = self.local.get(ip_key)
            failures, last = self.local_pairs.get(pair_key)
            return count, left, self.local.get(account_key)[0], failures, last

    def _incr(self, key: str) -> None:
        try:
            pipe = self.client.pipeline()
            pipe.set(key, 0, ex=self.window, nx=True)  # opens the window (Redis 6 and up)
            pipe.incr(key)
            pipe.execute()
        except redis.RedisError as exc:
            self._warn(exc)
            self.local.incr(key, self.window)

    def check(self, ip: str, account: str) -> None:
        """Count this attempt; raise RateLimited when the address is over its limit or this
        address must still wait before trying this account again."""
        count, left, account_failures, failures, last = self._read(ip, account)
        if count >= self.max_per_ip:
            raise RateLimited(left)
        # the alarm counts failures from the account's *other* addresses: a lone guesser
        # meets plain doubling, a guesser spread over many addresses pays from its second try
        others = max(account_failures - failures, 0)
        free = 1 if others >= self.max_per_account else self.max_per_account
        wait = last + backoff_seconds(failures, free, self.max_backoff) - self.clock()
        if wait > 0:
            raise RateLimited(math.ceil(wait))
        self._incr(self._ip_key(ip))

    def record_failure(self, ip: str, account: str) -> None:
        """A wrong password or MFA code from ``ip`` for ``account``."""
        pair_key = self._pair_key(ip, account)
        now = self.clock()
        try:
            pipe = self.client.pipeline()
            pipe.hincrby(pair_key, "failures", 1)
            pipe.hset(pair_key, "last", repr(now))
            pipe.expire(pair_key, self.memory)
            pipe.execute()
        except redis.RedisError as exc:
            self._warn(exc)
            self.local_pairs.fail(pair_key, now, self.memory)
        self._incr(self._account_key(account))

    def record_success(self, ip: str, account: str) -> None:
        """The right credentials from ``ip``: that pair's backoff is cleared (the account's
        alarm count is not: other addresses may still be guessing)."""
        key = self._pair_key(ip, account)
        try:
            self.client.delete(key)
        except redis.RedisError as exc:
            self._warn(exc)
        self.local_pairs.delete(key)

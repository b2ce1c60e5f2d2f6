"""Benchmark: the gateway's per-process key cache (control_plane/tenancy/key_cache.py).

Self-contained: an embedded Postgres in a temporary folder, the control plane migrated (the
``0013_key_notify`` triggers included) and one provisioned tenant with a gateway API key
(``ops/bench/_stack.py``). Then, in this process, as ``control_plane/gateway/api.py`` checks a
key (``api_keys.authenticate_gateway_key`` on the hot-path engine: autocommit, no pre-ping):

- **lookup cost**: ``LOOKUPS`` checks of the key without the cache (one statement each) and
  with it (none), in µs, and the statements each sends;
- **notification delay**: ``CHANGES`` times, the key is held by the cache, another connection
  commits an UPDATE of the key (its name: any change but ``last_used_at`` notifies), and the
  time to the entry's eviction (the listener thread took the notification and dropped the
  entry) is recorded, in ms: from the commit's return (a lower bound: Postgres signals the
  listeners at commit, often before the writer has read its answer) and from sending the
  UPDATE (an upper bound: the UPDATE's own round trip included).

Prints one JSON object on stdout (progress on stderr) and removes everything it started.
Run: ``.venv/bin/python ops/bench/keycache.py`` (``--lookups``, ``--changes`` for a quick run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import event  # noqa: E402

from control_plane.db import make_hot_path_engine, make_session_factory  # noqa: E402
from control_plane.tenancy import api_keys  # noqa: E402
from control_plane.tenancy.key_cache import KeyCache  # noqa: E402
from control_plane.tenancy.service import access_tenant  # noqa: E402
from control_plane.web.access import key_rule_for  # noqa: E402
from ops.bench import _stack  # noqa: E402
from ops.bench._stack import Stack, log, percentile  # noqa: E402

LOOKUPS = 5000
CHANGES = 300


def summary(values: list[float], scale: float, digits: int) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.50) * scale, digits),
            "p99": round(percentile(values, 0.99) * scale, digits),
            "mean": round(statistics.fmean(values) * scale, digits),
            "max": round(max(values) * scale, digits)}


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    log("starting Postgres and the control plane")
    stack.start()
    tenant_id = stack.add_tenant("bench-keys", "Bench keys")
    with stack.session_factory() as s, s.begin():
        owner = stack.owner(s)
        _, key = api_keys.do_create_api_key(s, access_tenant(s, tenant_id, user=owner),
                                            name="bench", acting_user=owner,
                                            scopes=["gateway"])
    url = stack.pg.url()
    engine = make_hot_path_engine(url, pool_size=2)
    stack.engines.append(engine)
    sessions = make_session_factory(engine)
    rule = key_rule_for("POST /v1/chat/completions")
    bearer = f"Bearer {key}"
    digest = api_keys.key_hash(key)
    cache = KeyCache(url, ttl_seconds=3600)
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))

    def lookup(with_cache: KeyCache | None) -> float:
        started = time.perf_counter()
        with sessions() as s:
            api_keys.authenticate_gateway_key(s, bearer, None, rule=rule, cache=with_cache)
        return time.perf_counter() - started

    try:
        lookup(cache)  # starts the listener; writes last_used_at, so no lookup below does
        deadline = time.monotonic() + 10
        while not cache.listening:
            if time.monotonic() > deadline:
                raise RuntimeError("the key cache's listener did not connect")
            time.sleep(0.01)
        _stack.wait_for_quiet()
        timings: dict[str, list[float]] = {"uncached": [], "cached": []}
        statements: dict[str, float] = {}
        for name, with_cache in (("uncached", None), ("cached", cache)):
            lookup(with_cache)  # warm: the pool's connection, the cache's entry
            sent.clear()
            log(f"{args.lookups} lookups, {name}")
            timings[name] = [lookup(with_cache) for _ in range(args.lookups)]
            statements[name] = round(len(sent) / args.lookups, 3)
        log(f"{args.changes} changes, each from its commit to the entry's eviction")
        delays: list[float] = []  # from the commit's return: a lower bound
        upper: list[float] = []  # from sending the UPDATE: an upper bound (its round trip too)
        with psycopg.connect(url, autocommit=True) as writer:
            for number in range(args.changes):
                lookup(cache)
                if digest not in cache:
                    raise RuntimeError("the key is not held by the cache")
                sent_at = time.perf_counter()
                writer.execute("UPDATE api_keys SET name = %s WHERE prefix = %s",
                               (f"bench {number}", key[3:].split("_", 1)[0]))
                committed = time.perf_counter()
                with cache.evicted:
                    if not cache.evicted.wait_for(lambda: digest not in cache, timeout=5):
                        raise RuntimeError("no eviction within 5 s")
                evicted = time.perf_counter()
                delays.append(evicted - committed)
                upper.append(evicted - sent_at)
    finally:
        cache.close()
    return {
        "benchmark": "keycache",
        "lookups": args.lookups, "changes": args.changes,
        "lookup_us": {name: summary(values, 1e6, 1) for name, values in timings.items()},
        "statements_per_lookup": statements,
        "notification_delay_ms": summary(delays, 1e3, 3),
        "notification_delay_from_send_ms": summary(upper, 1e3, 3),
        "postgres": stack.server_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=LOOKUPS)
    parser.add_argument("--changes", type=int, default=CHANGES)
    parser.add_argument("--quiet-wait", type=float, default=_stack.QUIET_WAIT_SECONDS)
    args = parser.parse_args()
    return _stack.run_benchmark(run, args)


if __name__ == "__main__":
    sys.exit(main())

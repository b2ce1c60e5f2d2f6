"""Benchmark: the LLM gateway's added latency and throughput, with all governance on.

Self-contained: starts an embedded Postgres and Redis in a temporary folder, sets up the control
plane and provisions one tenant (``ops/bench/_stack.py``), then starts, each in a process of its
own so none shares a GIL with another:

- the upstream: a minimal OpenAI-compatible server (plain asyncio) answering ``POST
  /v1/chat/completions`` with ``"You said: "`` + the last user message, as JSON or as SSE in
  pieces of ``STREAM_PIECE_CHARS`` characters, with a usage block; it requires ``Authorization:
  Bearer <key>`` and counts, per key, requests and raw PII strings of the prompt it received;
- the gateway: the real app, ``python -m control_plane web`` (one uvicorn process, as
  ``magistrate web`` runs it), on the embedded Postgres and Redis.

The tenant has the ``standard`` redaction profile, an ``on-prem`` route ``bench-model`` to the
upstream (allowed, with a sealed credential; the operator allows ``127.0.0.0/8`` through
``MAGISTRATE_GATEWAY_PRIVATE_NETWORKS``, as for an on-prem model server), a price, a $10M
monthly cap and rate limits of 1,000,000 requests and 1,000,000,000 tokens a minute (counted
in Redis, but never refusing: the bench measures the work, not refusals), and an API key. The
prompt is about 1 KB with an e-mail address, a phone number and two person names, so
redaction and restore do real work.

Load: ``CLIENTS`` threads, each with its own ``httpx2.Client`` (keep-alive), each sending
``REQUESTS`` requests back to back after a warm-up, first to the upstream directly (the
baseline: same client, same body, the upstream's URL and key), then through the gateway. Each
phase is repeated ``ROUNDS`` times, each once the machine is quiet (it is shared).

Figures:

- ``chat`` (non-streaming) and ``stream`` (streaming; the time to the complete answer, the
  last SSE line read): for each round, the latency distributions in ms (``direct``,
  ``gateway``: p50, p95, p99, max), requests per second of each, and ``added_ms`` = gateway
  percentile − direct percentile, percentile by percentile. The headline is the median round
  (by added p99); ``rounds`` holds them all. ``cpu_ms_per_request`` is the CPU time each
  process spent per request during the gateway phase (gateway with its worker processes,
  upstream, Postgres, Redis, the load generator), read from ``/proc``;
  ``direct_cpu_ms_per_request`` the same for the direct phase (the client's own overhead is
  there).
- ``errors``: non-200 answers, exceptions, and answers whose text is not ``"You said: "`` +
  the original prompt (restore failed); must be 0.
- ``checks``: one ``gateway.call`` audit event (outcome ``ok``) per successful gateway call,
  read through a ``TenantContext``; the exported chain passes ``ops/verify_audit_chain.py``;
  the rate-limit counters are in Redis (no fail-open); the upstream received none of the raw
  PII strings through the gateway's key.
- ``concurrency_1``: the same with one client (added latency without queueing).
- ``breakdown_ms``: after the load, the same functions the endpoint calls, timed in this
  process one call at a time: the API-key lookup and tenant context (control-plane
  transaction), tenant transaction 1 (``Gateway.prepare``: settings, rate limit, allowlist,
  redaction, reservation), the provider call (the SDK to the upstream), and tenant transaction
  2 (restore, settle, audit: ``complete`` minus the provider); redaction and the rate limiter
  alone for reference; ``cpu_ms_per_call_in_process``, this process's CPU per call (Postgres
  not included). What the HTTP layer adds is ``concurrency_1`` minus their sum.

Target: added p99 ≤ 10 ms for non-streaming calls at concurrency 16 (``met``).

Prints one JSON object on stdout (progress goes to stderr), and removes everything it started.
Run: ``.venv/bin/python ops/bench/gateway.py`` (``--requests``, ``--rounds`` for a quick run;
``--profile`` prints a cProfile of the in-process call path to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import io
import json
import multiprocessing
import os
import platform
import pstats
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import redis
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from control_plane.gateway.ratelimit import GatewayRateLimiter  # noqa: E402
from control_plane.gateway.shapes import openai_request  # noqa: E402
from control_plane.models import Tenant  # noqa: E402
from control_plane.runtime import resolve_endpoints  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.tenancy import api_keys  # noqa: E402
from control_plane.tenancy.service import access_tenant  # noqa: E402
from control_plane.web import access  # noqa: E402
from control_plane.web.app import build_services  # noqa: E402
from ops.bench import _stack  # noqa: E402
from ops.bench._stack import Stack, free_port, log, percentile, wait_for_quiet  # noqa: E402
from tenant_runtime.audit_export import export_lines  # noqa: E402
from tenant_runtime.context import Actor  # noqa: E402
from tenant_runtime.credentials.service import do_add_credential  # noqa: E402
from tenant_runtime.gateway import admin, config, pricing  # noqa: E402
from tenant_runtime.gateway.egress import EgressPolicy  # noqa: E402
from tenant_runtime.gateway.providers.base import Adapter  # noqa: E402
from tenant_runtime.gateway.providers.registry import adapter_for  # noqa: E402
from tenant_runtime.gateway.service import Gateway  # noqa: E402
from tenant_runtime.models import AuditEvent, GatewayCall  # noqa: E402
from tenant_runtime.redaction import redact_request  # noqa: E402

CLIENTS = 16
REQUESTS = 150  # per client and phase: 2,400 a phase
STREAM_REQUESTS = 50  # per client and phase for streaming: 800 a phase
WARM_UP = 5  # per client, before each timed phase
ROUNDS = 3
SOLO_REQUESTS = 200  # concurrency 1
BREAKDOWN_CALLS = 300
STREAM_PIECE_CHARS = 16  # the upstream streams its answer in pieces of this many characters
MODEL = "bench-model"
PROVIDER_MODEL = "bench-llm"
DIRECT_KEY = "sk-bench-direct-0123456789"
GATEWAY_KEY = "sk-bench-gateway-0123456789"
TARGETS = {"chat_added_p99_ms": 10.0}
VERIFIER = ROOT / "ops" / "verify_audit_chain.py"
UPSTREAM_NETWORK = "127.0.0.0/8"  # the operator lets routes reach the local upstream

PII = {"email": "maria.garcia@example.com", "phone": "(415) 555-0142",
       "person": "Maria Garcia", "person_2": "James Wilson"}
SYSTEM = "You are a careful support assistant. Answer briefly and never invent facts."
PROMPT = (
    "Please summarize the support ticket below in three sentences and suggest a friendly "
    "reply that we can send today.\n\n"
    f"Ticket 48213, opened by {PII['person']} ({PII['email']}, phone {PII['phone']}) on the "
    "enterprise plan. She writes that the nightly export to the data warehouse has failed "
    "three nights in a row since the upgrade on Monday, always at the same step, with the "
    "message 'connection reset by peer' after about forty minutes. Her team depends on the "
    "export for the morning sales report, which the finance department reviews at nine. She "
    "already retried the job by hand twice, checked that the credentials did not change, and "
    "confirmed with her network team that nothing was blocked on their side. "
    f"Our engineer {PII['person_2']} looked at the logs and thinks the new batch size makes "
    "one query run past the load balancer's idle timeout, but he has not confirmed it yet. "
    "The customer asks whether we can roll back the upgrade for her account, or at least "
    "tell her when a fix will ship, and whether the missing days can be exported again "
    "without duplicating the rows that did arrive. Keep the tone calm and specific, and do "
    "not promise a date we cannot keep."
)
EXPECTED = "You said: " + PROMPT


def body(stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": MODEL, "max_tokens": 512,
                           "messages": [{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": PROMPT}]}
    if stream:
        out.update(stream=True, stream_options={"include_usage": True})
    return out


# ------------------------------------------------------------------------------- upstream


def _tokens(characters: int) -> int:
    return characters // 4 + 1


def _reply(request: dict[str, Any], piece_chars: int) -> tuple[str, list[bytes]]:
    """The content type and body pieces of an answer: ``"You said: "`` + the last user
    message, as JSON or as SSE events, with a usage block."""
    messages = request.get("messages") or []
    last = next((m.get("content") or "" for m in reversed(messages)
                 if m.get("role") == "user"), "")
    text = "You said: " + (last if isinstance(last, str) else "")
    prompt_chars = sum(len(m.get("content") or "") for m in messages
                       if isinstance(m.get("content"), str))
    usage = {"prompt_tokens": _tokens(prompt_chars), "completion_tokens": _tokens(len(text))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    base = {"id": "chatcmpl-bench", "created": int(time.time()),
            "model": request.get("model", "")}
    if not request.get("stream"):
        return "application/json", [json.dumps({
            **base, "object": "chat.completion", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}).encode()]

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None}])]
    events += [event([{"index": 0, "delta": {"content": text[i:i + piece_chars]},
                       "finish_reason": None}]) for i in range(0, len(text), piece_chars)]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append(event([], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return "text/event-stream", events


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      keys: dict[str, str], watch: dict[str, bytes], piece_chars: int,
                      stats: dict[str, Counter[str]], latency: float = 0.0) -> None:
    """HTTP/1.1 with keep-alive; request bodies by Content-Length, SSE answers chunked."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length") or 0))
            who = keys.get(headers.get("authorization", ""))
            if method == "GET" and target == "/stats":
                status, ctype, pieces = 200, "application/json", [json.dumps(stats).encode()]
            elif method != "POST" or target != "/v1/chat/completions":
                status, ctype, pieces = 404, "application/json", [b'{"error": {"message": '
                                                                  b'"not found"}}']
            elif who is None:
                status, ctype, pieces = 401, "application/json", [
                    b'{"error": {"message": "Incorrect API key provided.", "type": '
                    b'"invalid_request_error", "code": "invalid_api_key"}}']
            else:
                stats["requests"][who] += 1
                for name, value in watch.items():
                    if value in raw:
                        stats[f"raw_{name}"][who] += 1
                status = 200
                ctype, pieces = _reply(json.loads(raw), piece_chars)
                if latency:  # the model's time to answer (the same for both callers)
                    await asyncio.sleep(latency)
            if ctype == "text/event-stream":
                writer.write(f"HTTP/1.1 {status} OK\r\nContent-Type: text/event-stream\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n".encode())
                for piece in pieces:  # each SSE event its own chunk and its own write
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                data = b"".join(pieces)
                writer.write(f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()
    finally:
        writer.close()


def serve_upstream(port: int, keys: dict[str, str], watch: dict[str, str],
                   piece_chars: int, latency: float = 0.0) -> None:
    """The upstream process: serves until terminated."""
    stats: dict[str, Counter[str]] = {"requests": Counter(),
                                      **{f"raw_{name}": Counter() for name in watch}}
    needles = {name: value.encode() for name, value in watch.items()}

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _connection(r, w, keys, needles, piece_chars, stats, latency),
            "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ------------------------------------------------------------------------------- processes


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process (Linux ``/proc``); with ``children``, also of its live
    children and of the children it has reaped (for Postgres: the postmaster's backends)."""
    def fields(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    tick = os.sysconf("SC_CLK_TCK")
    try:
        own = fields(pid)
    except OSError:
        return 0.0
    total = int(own[11]) + int(own[12])
    if children:
        total += int(own[13]) + int(own[14])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                child = fields(int(entry.name))
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / tick


@dataclass
class Processes:
    """The processes whose CPU the bench reads: pid and whether to count its children."""
    pids: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid, children=kids) for name, (pid, kids) in self.pids.items()}
        out["client"] = time.process_time()
        return out

    def run_threads(self, threads: list[threading.Thread], barrier: threading.Barrier
                    ) -> tuple[float, dict[str, float]]:
        """Start ``threads`` (each waits at ``barrier``), release them together, wait for
        all: the wall-clock seconds, and each process's CPU seconds over that time."""
        for thread in threads:
            thread.start()
        before = self.sample()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        after = self.sample()
        return seconds, {name: after[name] - before[name] for name in before}


def start_upstream(port: int, latency: float = 0.0) -> multiprocessing.process.BaseProcess:
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=serve_upstream, daemon=True,
        args=(port, {f"Bearer {DIRECT_KEY}": "direct", f"Bearer {GATEWAY_KEY}": "gateway"},
              PII, STREAM_PIECE_CHARS, latency))
    process.start()
    wait_until(lambda: httpx2.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code
               == 200, "the upstream", process.is_alive)
    return process


def gateway_env(stack: Stack, port: int) -> dict[str, str]:
    assert stack.redis is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_ENV="development", MAGISTRATE_HOME=str(stack.home),
               MAGISTRATE_DATABASE_URL=stack.pg.url(), MAGISTRATE_REDIS_URL=stack.redis.url(),
               MAGISTRATE_SECRET_KEY=stack.secret_key, MAGISTRATE_HOST="127.0.0.1",
               MAGISTRATE_PORT=str(port), MAGISTRATE_GATEWAY_PRIVATE_NETWORKS=UPSTREAM_NETWORK)
    return env


def start_gateway(stack: Stack, port: int, workers: int = 1,
                  extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``magistrate web`` as production runs it (its request log goes to a file);
    ``extra_env`` adds settings for the process."""
    logfile = (stack.home / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "control_plane", "web",
                                "--workers", str(workers)],
                               env={**gateway_env(stack, port), **(extra_env or {})}, cwd=ROOT,
                               stdout=logfile,
                               stderr=logfile)
    logfile.close()

    def alive() -> bool:
        return process.poll() is None

    try:
        wait_until(lambda: httpx2.get(f"http://127.0.0.1:{port}/healthz",
                                      timeout=1).status_code == 200, "the gateway", alive,
                   seconds=180)  # a busy machine: it has taken over a minute
    except RuntimeError:
        process.terminate()  # not left running: the caller does not know of it yet
        process.wait(timeout=30)
        tail = (stack.home / "gateway.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the gateway did not start:\n{tail}") from None
    return process


def wait_until(ready: Callable[[], bool], what: str, alive: Callable[[], bool],
               seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx2.HTTPError):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


# ------------------------------------------------------------------------------- tenant


def configure_tenant(stack: Stack, tenant_id: int, upstream: str) -> str:
    """Governance on (standard redaction, a route on the allowlist, a price, a generous cap
    and limits) and an API key; returns the key."""
    ctx = dataclasses.replace(
        stack.tenant_context(tenant_id, actor=Actor("user", str(stack.owner_id),
                                                    "bench@example.com", "Owner"), pool_size=1),
        egress=EgressPolicy.parse(ambient_identity=False, private_networks=(UPSTREAM_NETWORK,)))
    with ctx.session() as s, s.begin():
        admin.update_settings(s, ctx, admin.SettingsChange(
            redaction_profile="standard", custom_detectors=[], custom_terms=[],
            custom_patterns=[], monthly_cap_micros=10_000_000 * 1_000_000,
            requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000))
        credential = do_add_credential(s, ctx, name="bench upstream", provider="on-prem",
                                       secret=GATEWAY_KEY, contact_email=None)
        admin.add_route(s, ctx, admin.RouteInput(
            model_name=MODEL, provider="on-prem", provider_model=PROVIDER_MODEL,
            endpoint=f"{upstream}/v1", credential_id=credential.id, timeout_seconds=30))
        admin.set_price(s, ctx, PROVIDER_MODEL, input_usd_per_mtok=0.15,
                        output_usd_per_mtok=0.60)
    with stack.session_factory() as s, s.begin():
        owner = stack.owner(s)
        _, key = api_keys.do_create_api_key(s, access_tenant(s, tenant_id, user=owner),
                                            name="bench", acting_user=owner,
                                            scopes=["gateway"])
    return key


# ------------------------------------------------------------------------------- load


@dataclass
class Run:
    latencies: list[float]  # ms
    errors: list[str]
    seconds: float
    cpu: dict[str, float]  # seconds per process over the run

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds


def one_call(client: httpx2.Client, stream: bool) -> str | None:
    """One request; None when the answer is right, else what went wrong."""
    if not stream:
        response = client.post("/chat/completions", json=body(False))
        if response.status_code != 200:
            return f"{response.status_code}: {response.text[:200]}"
        text = response.json()["choices"][0]["message"]["content"]
    else:
        parts = []
        with client.stream("POST", "/chat/completions", json=body(True)) as response:
            if response.status_code != 200:
                return f"{response.status_code}: {response.read()[:200]!r}"
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return f"stream error: {event['error']}"
                for choice in event.get("choices") or ():
                    parts.append(choice.get("delta", {}).get("content") or "")
        text = "".join(parts)
    return None if text == EXPECTED else f"wrong answer: {text[:120]!r}"


def run_clients(base_url: str, key: str, *, stream: bool, clients: int, requests: int,
                processes: Processes) -> Run:
    """``clients`` threads, each sending ``requests`` requests back to back."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def client(n: int) -> None:
        with httpx2.Client(base_url=base_url, timeout=60,
                           headers={"Authorization": f"Bearer {key}"}) as http:
            barrier.wait()
            for _ in range(requests):
                started = time.perf_counter()
                try:
                    problem = one_call(http, stream)
                except Exception as exc:  # noqa: BLE001 - counted, and the run goes on
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = (time.perf_counter() - started) * 1000
                if problem is None:
                    latencies[n].append(elapsed)
                else:
                    errors.append(problem)

    seconds, cpu = processes.run_threads(
        [threading.Thread(target=client, args=(n,)) for n in range(clients)], barrier)
    return Run([ms for mine in latencies for ms in mine], errors, seconds, cpu)


def distribution(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    return {"p50": round(statistics.median(samples), 2),
            "p95": round(percentile(samples, 0.95), 2),
            "p99": round(percentile(samples, 0.99), 2), "max": round(max(samples), 2),
            "n": len(samples)}


def cpu_per_request(run: Run) -> dict[str, float]:
    count = max(1, len(run.latencies) + len(run.errors))
    return {name: round(seconds * 1000 / count, 3) for name, seconds in run.cpu.items()}


@dataclass
class Endpoints:
    direct: str
    gateway: str
    key: str
    processes: Processes
    gateway_calls: int = 0  # every request sent through the gateway, warm-ups included
    gateway_ok: int = 0
    errors: list[str] = field(default_factory=list)


def measure(ends: Endpoints, *, stream: bool, clients: int, requests: int,
            rounds: int) -> dict[str, Any]:
    """``rounds`` × (direct, then gateway), each after a warm-up on a quiet machine."""
    results = []
    for number in range(1, rounds + 1):
        runs: dict[str, Run] = {}
        busy: dict[str, float | None] = {}
        for side, url, key in (("direct", ends.direct, DIRECT_KEY),
                               ("gateway", ends.gateway, ends.key)):
            warm = run_clients(url, key, stream=stream, clients=clients, requests=WARM_UP,
                               processes=ends.processes)
            busy[side] = wait_for_quiet()
            run = run_clients(url, key, stream=stream, clients=clients, requests=requests,
                              processes=ends.processes)
            runs[side] = run
            for counted in (warm, run):
                ends.errors.extend(f"{side}: {e}" for e in counted.errors)
                if side == "gateway":
                    ends.gateway_calls += len(counted.latencies) + len(counted.errors)
                    ends.gateway_ok += len(counted.latencies)
        direct, gateway = (distribution(runs[s].latencies) for s in ("direct", "gateway"))
        added = {q: round(gateway[q] - direct[q], 2) for q in ("p50", "p95", "p99", "max")}
        results.append({
            "added_ms": added, "direct_ms": direct, "gateway_ms": gateway,
            "per_second": {s: round(runs[s].per_second, 1) for s in runs},
            "errors": len(runs["direct"].errors) + len(runs["gateway"].errors),
            "cpu_ms_per_request": cpu_per_request(runs["gateway"]),
            "direct_cpu_ms_per_request": cpu_per_request(runs["direct"]),
            "machine_busy_before": busy})
        log(f"{'stream' if stream else 'chat'} c={clients} round {number}: added p50 "
            f"{added['p50']} p99 {added['p99']} ms; gateway "
            f"{results[-1]['per_second']['gateway']}/s, direct "
            f"{results[-1]['per_second']['direct']}/s")
    ordered = sorted(results, key=lambda r: r["added_ms"]["p99"])
    return {**ordered[(len(ordered) - 1) // 2], "clients": clients,
            "requests_per_phase": clients * requests, "rounds": results}


# ------------------------------------------------------------------------------- checks


def checks(stack: Stack, tenant_id: int, ends: Endpoints, upstream: str) -> dict[str, Any]:
    """What the load left behind: audit events, the chain, Redis counters, the upstream's
    view of the prompts."""

    ctx = stack.tenant_context(tenant_id, actor=Actor("system"), pool_size=1)
    with ctx.session() as s:
        events = Counter(str(outcome) for outcome in s.scalars(
            select(AuditEvent.details["outcome"].astext)
            .where(AuditEvent.event_type == "gateway.call")))
        calls = {str(status): int(count) for status, count in s.execute(
            select(GatewayCall.status, func.count()).group_by(GatewayCall.status))}
    path = stack.home / "export.jsonl"
    with ctx.session() as s, path.open("wb") as f:  # the export opens its own snapshot
        for line in export_lines(s, tenant_id=tenant_id, slug=ctx.slug):
            f.write(line)
    verified = subprocess.run([sys.executable, str(VERIFIER), str(path)], capture_output=True,
                              text=True, timeout=600, check=False)
    last = (verified.stdout.strip().splitlines() or [""])[-1]
    assert stack.redis is not None

    client = redis.Redis.from_url(stack.redis.url())
    limiter_keys = len(list(client.scan_iter("magistrate:rl:gw:*")))
    client.close()
    seen = httpx2.get(f"{upstream}/stats", timeout=5).json()
    raw = {name[4:]: counts.get("gateway", 0) for name, counts in seen.items()
           if name.startswith("raw_")}
    out = {"gateway_calls_ok": ends.gateway_ok, "gateway_calls_sent": ends.gateway_calls,
           "audit_gateway_call_events": dict(events), "gateway_calls_rows": calls,
           "one_ok_event_per_ok_call": events.get("ok", 0) == ends.gateway_ok
           and sum(events.values()) == ends.gateway_calls,
           "audit_chain": last if verified.returncode == 0 else f"FAILED: {last}",
           "rate_limit_keys_in_redis": limiter_keys,
           "upstream_requests": seen["requests"],
           "raw_pii_received_through_gateway": raw,
           "no_raw_email_at_upstream": raw.get("email", 1) == 0}
    log(f"checks: {json.dumps(out)}")
    return out


# ------------------------------------------------------------------------------- breakdown


def breakdown(stack: Stack, gateway_port: int, key: str, calls: int,
              profile: bool) -> dict[str, Any]:
    """The endpoint's steps, called in this process one call at a time (the same functions
    ``control_plane/gateway/api.py`` calls, on the same databases and Redis)."""

    settings = Settings.from_env(gateway_env(stack, gateway_port))
    endpoints = resolve_endpoints(settings)
    svc = build_services(settings, database_url=endpoints.database_url,
                         redis_url=endpoints.redis_url, secret_key=endpoints.secret_key)
    limiter = GatewayRateLimiter(svc.redis)
    provider_ms: list[float] = []

    class TimedAdapter:
        def __init__(self, inner: Adapter) -> None:
            self.inner = inner

        def complete(self, request: Any, target: Any) -> Any:
            started = time.perf_counter()
            try:
                return self.inner.complete(request, target)
            finally:
                provider_ms.append((time.perf_counter() - started) * 1000)

        def stream(self, request: Any, target: Any) -> Any:
            return self.inner.stream(request, target)

    def timed_adapters(provider: str) -> Any:
        return TimedAdapter(adapter_for(provider))

    steps: dict[str, list[float]] = {name: [] for name in (
        "key_lookup_and_context", "parse", "prepare_tx1", "provider", "restore_settle_audit_tx2",
        "total")}
    raw = json.dumps(body(False)).encode()
    gateway_rule = access.key_rule_for("POST /v1/chat/completions")

    def call() -> None:
        t0 = time.perf_counter()
        with svc.session_factory() as s, s.begin():
            principal = api_keys.authenticate_gateway_key(s, f"Bearer {key}", None,
                                                          rule=gateway_rule)
            actor = Actor("api_key", str(principal.key_id), principal.key_name)
            ctx = svc.tenant_connections.gateway_context(s, principal, actor)
            key_id = str(principal.key_id)
        t1 = time.perf_counter()
        chat, _ = openai_request(json.loads(raw))
        t2 = time.perf_counter()

        def limit(requests_per_minute: int, tokens_per_minute: int) -> None:
            prompt = sum(len(m.content.encode("utf-8")) for m in chat.messages)
            limiter.check(ctx.tenant_id, tokens=pricing.estimate_tokens(prompt)
                          + chat.max_tokens, requests_per_minute=requests_per_minute,
                          tokens_per_minute=tokens_per_minute)

        gateway = Gateway(ctx, api_key_id=key_id, adapters=timed_adapters)
        prepared = gateway.prepare(chat, endpoint_kind="openai", rate_limit=limit)
        t3 = time.perf_counter()
        result = gateway.complete(prepared)
        t4 = time.perf_counter()
        if result.text != EXPECTED:
            raise RuntimeError("the in-process call did not restore the answer")
        steps["key_lookup_and_context"].append((t1 - t0) * 1000)
        steps["parse"].append((t2 - t1) * 1000)
        steps["prepare_tx1"].append((t3 - t2) * 1000)
        steps["provider"].append(provider_ms[-1])
        steps["restore_settle_audit_tx2"].append((t4 - t3) * 1000 - provider_ms[-1])
        steps["total"].append((t4 - t0) * 1000)

    try:
        for _ in range(20):  # warm-up
            call()
        for name in steps:
            steps[name].clear()
        wait_for_quiet()
        cpu_started = time.process_time()
        for _ in range(calls):
            call()
        cpu_ms = (time.process_time() - cpu_started) * 1000 / calls
        timed = {name: list(samples) for name, samples in steps.items()}
        if profile:  # a separate pass: the profiler's overhead stays out of the figures
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [call() for _ in range(calls)])
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
            print(text.getvalue(), file=sys.stderr)
        chat, _ = openai_request(body(False))
        with svc.session_factory() as s:
            tenant = s.scalars(select(Tenant)).one()
            ctx = svc.tenant_connections.context(s, tenant, Actor("system"))
        with ctx.session() as s:
            profile_of = config.profile_of(ctx, config.load_settings(s))
        alone: dict[str, list[float]] = {"redaction": [], "rate_limit_redis": []}
        for _ in range(calls):
            started = time.perf_counter()
            redact_request(chat, profile_of)
            alone["redaction"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            limiter.check(tenant.id, tokens=1, requests_per_minute=1_000_000,
                          tokens_per_minute=1_000_000_000)
            alone["rate_limit_redis"].append((time.perf_counter() - started) * 1000)
    finally:
        svc.close()
    summary: dict[str, Any] = {name: {"p50": round(statistics.median(v), 3),
                                      "p95": round(percentile(v, 0.95), 3)}
                               for name, v in timed.items()}
    summary["alone"] = {name: {"p50": round(statistics.median(v), 3),
                               "p95": round(percentile(v, 0.95), 3)}
                        for name, v in alone.items()}
    summary["calls"] = calls
    summary["cpu_ms_per_call_in_process"] = round(cpu_ms, 3)  # this process only, not Postgres
    log(f"breakdown: {json.dumps(summary)}")
    return summary


# ------------------------------------------------------------------------------- report


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    log(f"starting Postgres on port {stack.pg.port} under {stack.home}")
    stack.start()
    redis_server = stack.start_redis()
    tenant_id = stack.add_tenant("bench-gateway", "Bench gateway")
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    key = configure_tenant(stack, tenant_id, upstream)
    children: list[Any] = []
    try:
        upstream_process = start_upstream(upstream_port, args.upstream_latency_ms / 1000)
        children.append(upstream_process)
        gateway_process = start_gateway(stack, gateway_port, args.web_workers)
        children.append(gateway_process)
        log(f"upstream on {upstream_port}, gateway on {gateway_port}")
        postmaster = int((stack.pg.pgdata / "postmaster.pid").read_text().split()[0])
        assert redis_server.process is not None and upstream_process.pid is not None
        processes = Processes({"gateway": (gateway_process.pid, True),
                               "upstream": (upstream_process.pid, False),
                               "postgres": (postmaster, True),
                               "redis": (redis_server.process.pid, False)})
        ends = Endpoints(direct=f"{upstream}/v1", gateway=f"http://127.0.0.1:{gateway_port}/v1",
                         key=key, processes=processes)
        chat = measure(ends, stream=False, clients=CLIENTS, requests=args.requests,
                       rounds=args.rounds)
        stream = measure(ends, stream=True, clients=CLIENTS, requests=args.stream_requests,
                         rounds=args.rounds)
        solo = measure(ends, stream=False, clients=1, requests=args.solo_requests, rounds=1)
        solo.pop("rounds")
        checked = checks(stack, tenant_id, ends, upstream)
        parts = breakdown(stack, gateway_port, key, args.breakdown_calls, args.profile)
    finally:
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            if isinstance(child, subprocess.Popen):
                child.wait(timeout=30)
            else:
                child.join(timeout=30)
    errors = len(ends.errors)
    ok = (errors == 0 and checked["one_ok_event_per_ok_call"]
          and checked["no_raw_email_at_upstream"] and checked["audit_chain"].startswith("OK"))
    return {
        "benchmark": "gateway",
        "chat": chat,
        "stream": {**stream, "stream_piece_chars": STREAM_PIECE_CHARS},
        "concurrency_1": solo,
        "errors": errors,
        "error_examples": ends.errors[:5],
        "checks": checked,
        "breakdown_ms": parts,
        "setup": {"web_processes": args.web_workers, "clients": CLIENTS,
                  "upstream_latency_ms": args.upstream_latency_ms,
                  "client": f"httpx2 {httpx2.__version__}, one Client per thread",
                  "prompt_bytes": len(PROMPT.encode()),
                  "answer_chars": len(EXPECTED), "redaction_profile": "standard",
                  "upstream": "asyncio HTTP/1.1 server in its own process"},
        "targets": TARGETS,
        "met": {"chat_added_p99_ms": ok and chat["added_ms"]["p99"]
                <= TARGETS["chat_added_p99_ms"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "postgres": stack.server_version(),
                    "postgres_settings": stack.server_settings(),
                    "platform": platform.platform()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS,
                        help="requests per client in each non-streaming phase")
    parser.add_argument("--stream-requests", type=int, default=STREAM_REQUESTS,
                        help="requests per client in each streaming phase")
    parser.add_argument("--solo-requests", type=int, default=SOLO_REQUESTS,
                        help="requests in each concurrency-1 phase")
    parser.add_argument("--breakdown-calls", type=int, default=BREAKDOWN_CALLS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--web-workers", type=int, default=os.cpu_count() or 1,
                        help="`magistrate web --workers` (default: one per CPU)")
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0,
                        help="how long the upstream takes to answer each call (default 0)")
    parser.add_argument("--quiet-wait", type=float, default=_stack.QUIET_WAIT_SECONDS,
                        help="longest wait, in seconds, for the machine to be quiet before "
                             "each timed phase")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the in-process breakdown to stderr")
    args = parser.parse_args()
    return _stack.run_benchmark(run, args)


if __name__ == "__main__":
    sys.exit(main())

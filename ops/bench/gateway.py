"""Benchmark: the LLM gateway's added latency and throughput, with all governance on.

Self-contained: starts an embedded Postgres and Redis in a temporary folder, sets up the control
plane and provisions one tenant (``ops/bench/_stack.py``), then starts, each in a process of its
own so none shares a GIL with another:

- the upstream: a minimal OpenAI-compatible server (plain asyncio) answering ``POST
  /v1/chat/completions`` with ``"You said: "`` + the last user message, as JSON or as SSE in
  pieces of ``STREAM_PIECE_CHARS`` characters, with a usage block (with tools offered, the
  tool loop below); it requires ``Authorization:
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

The peer: LiteLLM's proxy, installed by the benchmark into a virtual environment of its own
(``LITELLM_VENV``, default ``/tmp/litellm-venv``; ``litellm[proxy]`` with uv) unless it is
there already, with the same models on the same upstreams, interleaved with the gateway in
every phase (``--no-litellm`` leaves it out).

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
- ``stage_mean_ms`` (each round of ``chat``, ``concurrency_1``, ``open_loop``): the web
  process's own account of a call's time in Magistrate, from its ``/metrics``
  (``magistrate_gateway_stage_seconds``): the mean ms of admission (key, parsing, the rate
  limit's count, allowlist, redaction), reservation and settlement (with its audit commit).
- ``first_token_1_client``: one client's streamed calls, back to back: the time from sending
  to the first content piece (``first_token_ms``), directly, through the gateway and LiteLLM,
  and ``gateway_added_ms`` (``--solo-requests`` calls after a warm-up of 5).
- ``tools``: an agent's tool loop, non-streaming: three model calls over two tools
  (``lookup_customer``, ``send_email``) with a prompt of about 2 KB (``TOOL_PROMPT``). Call 1
  offers the tools and the upstream calls ``lookup_customer`` with ``{"query": <the user's
  text>}``; call 2 resends the history with the tool's result (a customer record with another
  e-mail address and phone number) and the upstream calls ``send_email`` with ``{"to": <that
  result>}``; call 3 sends that tool's result and the upstream answers ``"Tool said: "`` + it.
  The client checks each step got the originals back (the restored arguments, the restored
  answer). Figures as for ``chat``, per model call (``added_ms``, ``per_second`` = model calls
  a second), plus ``loops_per_second``; ``CLIENTS`` clients, ``TOOL_LOOPS`` loops each, and
  ``tools.concurrency_1`` with one client (``SOLO_REQUESTS`` ÷ 3 loops).
- ``breakdown_ms``: after the load, the same functions the endpoint calls, timed in this
  process one call at a time: the API-key lookup and tenant context (control-plane
  transaction), tenant transaction 1 (``Gateway.prepare``: settings, rate limit, allowlist,
  redaction, reservation), the provider call (the SDK to the upstream), and tenant transaction
  2 (restore, settle, audit: ``complete`` minus the provider); redaction and the rate limiter
  alone for reference; ``cpu_ms_per_call_in_process``, this process's CPU per call (Postgres
  not included). What the HTTP layer adds is ``concurrency_1`` minus their sum. ``per_call``
  counts Postgres round trips: each statement and command, except those sent in a pipeline
  (``pipelined``), which count one for each pipeline (``pipelines``).
- ``two_processes`` (``--two-processes``): 16 clients against ``magistrate web --workers 2``
  (LiteLLM with two workers), and ``scaling_over_one_process``.
- ``scaling_under_cpu_quota`` (``--cpu-share F``): 16 clients against one web process, then
  two, each process held to the share F of one core (``CpuQuota``), and ``two_over_one``:
  whether a second process adds what the first carries when the machine's cores are not the
  ceiling (on two cores shared with the driver, the upstream and Postgres, they are).

Target: added p99 ≤ 10 ms for non-streaming calls at concurrency 16 (``met``).

Prints one JSON object on stdout (progress goes to stderr), and removes everything it started.
Run: ``.venv/bin/python ops/bench/gateway.py`` (``--requests``, ``--tool-loops``, ``--rounds``
for a quick run;
``--profile`` prints a cProfile of the in-process call path to stderr; ``--gateway-env
MAGISTRATE_GATEWAY_ON_EVENT_LOOP=false`` runs the gateway's calls in its thread pool, for a
comparison with the event loop. To see where the gateway's process spends its CPU under load,
attach a sampling profiler to it (py-spy: ``py-spy record -p <pid> -f raw``), as
ops/BENCHMARKS.md did: uvicorn ends on a signal, so a profiler inside the process never writes).
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
import re
import shutil
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
import psycopg
import redis
from psycopg._connection_base import BaseConnection
from sqlalchemy import event, func, select

ROOT = Path(__file__).resolve().parents[2]
# run as a script, Python puts ops/bench first on the path, where ops/bench/mcp.py would shadow
# the ``mcp`` package that control_plane imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from control_plane.gateway.openai_chat import parse as openai_request  # noqa: E402
from control_plane.gateway.ratelimit import GatewayRateLimiter  # noqa: E402
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
from tenant_runtime.gateway import admin, config  # noqa: E402
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
TOOL_LOOPS = 30  # per client and phase for the tool loop: 480 loops, 1,440 model calls
BREAKDOWN_CALLS = 300
STREAM_PIECE_CHARS = 16  # the upstream streams its answer in pieces of this many characters
MODEL = "bench-model"
PROVIDER_MODEL = "bench-llm"
DIRECT_KEY = "sk-bench-direct-0123456789"
GATEWAY_KEY = "sk-bench-gateway-0123456789"
LITELLM_KEY = "sk-bench-litellm-0123456789"  # LiteLLM's key at the upstream
LITELLM_MASTER_KEY = "sk-bench-litellm-master-0123456789"  # the clients' key at LiteLLM
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/tmp/litellm-venv"))  # noqa: S108
LITELLM = LITELLM_VENV / "bin" / "litellm"
LITELLM_REQUIREMENT = "litellm[proxy]"  # the peer, installed by the benchmark (install_litellm)
SLOW_MODEL = "bench-slow"  # a route to the upstream that takes OPEN_LOOP_LATENCY_MS to answer
OPEN_LOOP_LATENCY_MS = 300.0
OPEN_LOOP_SHARE = 0.5  # the open loop offers this share of the measured saturation rate
OPEN_LOOP_REQUESTS = 600
TARGETS = {"chat_added_p99_ms": 10.0}
VERIFIER = ROOT / "ops" / "verify_audit_chain.py"
UPSTREAM_NETWORK = "127.0.0.0/8"  # the operator lets routes reach the local upstream

PII = {"email": "maria.garcia@example.com", "phone": "(415) 555-0142",
       "person": "Maria Garcia", "person_2": "James Wilson",
       "billing_email": "m.garcia.billing@example.org", "mobile": "(650) 555-0199"}
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
# The tool loop's prompt: about 2 KB, the ticket and the previous one from the same customer.
TOOL_PROMPT = f"{PROMPT}\n\nThe previous ticket from the same customer, for context:\n{PROMPT}"
LOOKUP_RESULT = (f"Customer {PII['person']}: billing {PII['billing_email']}, mobile "
                 f"{PII['mobile']}, enterprise plan since 2021.")
SENT_RESULT = f"Sent to {PII['billing_email']}"
TOOLS = [{"type": "function", "function": {
             "name": "lookup_customer", "description": "Find a customer by e-mail or phone.",
             "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                            "required": ["query"]}}},
         {"type": "function", "function": {
             "name": "send_email", "description": "Send an e-mail to a customer.",
             "parameters": {"type": "object", "properties": {"to": {"type": "string"}},
                            "required": ["to"]}}}]



def body(stream: bool, model: str = MODEL) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "max_tokens": 512,
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
    base = {"id": "chatcmpl-bench", "created": int(time.time()),
            "model": request.get("model", "")}
    tools = [t["function"]["name"] for t in request.get("tools") or ()]
    if tools and not request.get("stream"):
        return "application/json", [json.dumps(
            {**base, "object": "chat.completion", **_tool_step(messages, tools, prompt_chars)}
        ).encode()]
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
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


def _tool_step(messages: list[dict[str, Any]], tools: list[str],
               prompt_chars: int) -> dict[str, Any]:
    """The tool loop's model: after the user's turn it calls the first tool with the user's
    text, after one tool result the second tool with that result, after two it answers
    ``"Tool said: "`` + the last result."""
    results = [m.get("content") or "" for m in messages if m.get("role") == "tool"]
    if len(results) >= 2 or len(tools) < 2 and results:
        text = "Tool said: " + results[-1]
        usage = {"prompt_tokens": _tokens(prompt_chars), "completion_tokens": _tokens(len(text))}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
    else:
        if results:
            name, arguments = tools[1], json.dumps({"to": results[-1]})
        else:
            last = next(m.get("content") or "" for m in reversed(messages)
                        if m.get("role") == "user")
            name, arguments = tools[0], json.dumps({"query": last})
        usage = {"prompt_tokens": _tokens(prompt_chars),
                 "completion_tokens": _tokens(len(name) + len(arguments))}
        message = {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_bench_{len(results)}", "type": "function",
            "function": {"name": name, "arguments": arguments}}]}
        finish = "tool_calls"
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"usage": usage, "choices": [{"index": 0, "finish_reason": finish,
                                         "message": message}]}


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
        args=(port, {f"Bearer {DIRECT_KEY}": "direct", f"Bearer {GATEWAY_KEY}": "gateway",
                     f"Bearer {LITELLM_KEY}": "litellm"},
              PII, STREAM_PIECE_CHARS, latency))
    process.start()
    wait_until(lambda: httpx2.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code
               == 200, "the upstream", process.is_alive, seconds=180)  # a busy machine
    return process


def gateway_env(stack: Stack, port: int) -> dict[str, str]:
    assert stack.redis is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_ENV="development", MAGISTRATE_HOME=str(stack.home),
               MAGISTRATE_DATABASE_URL=stack.pg.url(), MAGISTRATE_REDIS_URL=stack.redis.url(),
               MAGISTRATE_SECRET_KEY=stack.secret_key, MAGISTRATE_HOST="127.0.0.1",
               MAGISTRATE_PORT=str(port), MAGISTRATE_GATEWAY_PRIVATE_NETWORKS=UPSTREAM_NETWORK,
               MAGISTRATE_METRICS_TOKEN=METRICS_TOKEN)
    return env


WARM_UP_FIRST_TOKEN = 5  # streamed calls before the first-token samples


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


def install_litellm() -> str | None:
    """LiteLLM's version in its own virtual environment (``LITELLM_VENV``, never one of our
    dependencies), installed there first when it is not (``uv venv`` and ``uv pip install
    'litellm[proxy]'``, with the uv on the PATH or the one ``make install`` put in
    ``.tools``); None, said on stderr, when it cannot be installed (no index reachable)."""
    python = LITELLM_VENV / "bin" / "python"
    if not LITELLM.exists():
        uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
        log(f"installing LiteLLM's proxy into {LITELLM_VENV} (the peer; a minute or two)")
        try:
            if not python.exists():
                subprocess.run([uv, "venv", "--quiet", "--python", sys.executable,
                                str(LITELLM_VENV)], check=True, capture_output=True, timeout=300)
            subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python),
                            LITELLM_REQUIREMENT], check=True, capture_output=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            output = getattr(exc, "stderr", b"") or b""
            log(f"LiteLLM could not be installed ({type(exc).__name__}: "
                f"{output.decode(errors='replace')[-500:].strip()}): no side-by-side figures")
            return None
    try:
        return subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                               "print(m.version('litellm'))"], check=True, capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        log(f"LiteLLM at {LITELLM} does not run: no side-by-side figures")
        return None


def start_litellm(home: Path, port: int, upstream: str, slow_upstream: str,
                  workers: int) -> subprocess.Popen[bytes] | None:
    """LiteLLM's proxy (``litellm --config``, ``install_litellm``'s) with the same two models
    on the same upstreams and no database; None when it is not installed."""
    if not LITELLM.exists():
        return None
    config = home / "litellm.json"  # YAML is a superset of JSON
    config.write_text(json.dumps({"model_list": [
        {"model_name": name, "litellm_params": {"model": f"openai/{PROVIDER_MODEL}",
                                                "api_base": f"{base}/v1",
                                                "api_key": LITELLM_KEY}}
        for name, base in ((MODEL, upstream), (SLOW_MODEL, slow_upstream))],
        "general_settings": {"master_key": LITELLM_MASTER_KEY}}))
    logfile = (home / f"litellm-{port}.log").open("wb")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False"}
    process = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1",
                                "--port", str(port), "--num_workers", str(workers)],
                               env=env, stdout=logfile, stderr=logfile, cwd=home)
    logfile.close()
    try:
        wait_until(lambda: httpx2.get(f"http://127.0.0.1:{port}/health/liveliness",
                                      timeout=1).status_code == 200, "LiteLLM",
                   lambda: process.poll() is None, seconds=240)
    except RuntimeError:
        process.terminate()
        process.wait(timeout=30)
        tail = (home / f"litellm-{port}.log").read_text(errors="replace")[-1500:]
        log(f"LiteLLM did not start: {tail}")
        return None
    return process


def stop(process: Any) -> None:
    if process is None:
        return
    process.terminate()
    if isinstance(process, subprocess.Popen):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    else:
        process.join(timeout=30)


class CpuQuota:
    """Hold processes to a share of one core each (Linux cgroups: v1's ``cpu`` controller or
    v2's ``cpu.max``; needs root), so that a scaling figure measures the gateway, not the
    machine: on two cores that also run the load driver, the upstream and Postgres, one
    unconstrained web process already takes most of a core, and a second has little left to
    take. Held to the same share each, a second process can only add what the first carries
    if nothing they share (a lock, a hot row, the database) is the ceiling."""

    V1 = Path("/sys/fs/cgroup/cpu")
    V2 = Path("/sys/fs/cgroup")
    PERIOD_US = 100_000

    def __init__(self, share: float) -> None:
        self.share, self.groups = share, []  # type: list[Path]

    def problem(self) -> str | None:
        """Why processes cannot be held here, or None."""
        probe = self._group("probe")
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            return f"no writable cgroup cpu controller ({exc.strerror}: {probe.parent})"
        return None

    def _group(self, name: str) -> Path:
        base = self.V1 if (self.V1 / "cpu.cfs_quota_us").exists() else self.V2
        return base / f"magistrate-bench-{os.getpid()}-{name}"

    def hold(self, pid: int) -> None:
        group = self._group(str(len(self.groups)))
        group.mkdir()
        self.groups.append(group)
        quota = int(self.share * self.PERIOD_US)
        if (group / "cpu.cfs_quota_us").exists():
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))

    def release(self) -> None:
        for group in self.groups:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (group.parent / "cgroup.procs").write_text(pid)
                group.rmdir()
        self.groups.clear()


def web_workers(pid: int, workers: int) -> list[int]:
    """The processes of ``magistrate web --workers N`` that serve requests: itself for one,
    else its spawned workers (uvicorn's supervisor only watches them)."""
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + 60
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        if len(found) == workers or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def open_loop(base_url: str, key: str, *, rate: float, requests: int,
              threads: int = 96, seed: int = 19) -> dict[str, Any]:
    """Open loop: ``requests`` calls of the slow model arriving as a Poisson process of
    ``rate`` a second, whatever the answers' speed; each latency runs from its scheduled
    arrival (time spent waiting for a free sender counts), so queueing shows."""
    import random

    rng = random.Random(seed)  # noqa: S311 - arrival times, not secrets
    due, at = [], 0.0
    for _ in range(requests):
        at += rng.expovariate(rate)
        due.append(at)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_index = [0]
    barrier = threading.Barrier(threads + 1)
    go = threading.Event()  # set once the schedule's origin is: after every client is made
    start = [0.0]

    def sender() -> None:
        with httpx2.Client(base_url=base_url, timeout=60,
                           headers={"Authorization": f"Bearer {key}"}) as http:
            barrier.wait()
            go.wait()
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= requests:
                    return
                scheduled = start[0] + due[index]
                pause = scheduled - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                try:
                    problem = one_call(http, False, SLOW_MODEL)
                except Exception as exc:  # noqa: BLE001 - counted
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = (time.perf_counter() - scheduled) * 1000
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))

    workers = [threading.Thread(target=sender) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()  # every sender has its client (making 96 of them takes seconds)
    start[0] = time.perf_counter() + 0.05
    go.set()
    for worker in workers:
        worker.join()
    return {"latency_ms": distribution(latencies), "errors": len(errors),
            "error_examples": errors[:3], "offered_per_second": round(rate, 1),
            "achieved_per_second": round(len(latencies) / max(due[-1], 1e-9), 1)}


def add_over_direct(out: dict[str, Any], figure: str) -> None:
    """``<side>_added_ms``: the gateway's (and LiteLLM's) percentiles of ``figure`` minus the
    direct ones."""
    direct = out["direct"][figure]
    for side in ("gateway", "litellm"):
        if side in out:
            mine = out[side][figure]
            out[f"{side}_added_ms"] = {q: round(mine[q] - direct[q], 2)
                                       for q in ("p50", "p95", "p99")}


def first_token_ms(client: httpx2.Client) -> tuple[float | None, str | None]:
    """One streamed call: the ms from sending it to its first content piece, and what went
    wrong (the answer is read to its end and checked)."""
    started = time.perf_counter()
    first: float | None = None
    parts = []
    with client.stream("POST", "/chat/completions", json=body(True)) as response:
        if response.status_code != 200:
            return None, f"{response.status_code}: {response.read()[:200]!r}"
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or ():
                piece = choice.get("delta", {}).get("content") or ""
                if piece and first is None:
                    first = (time.perf_counter() - started) * 1000
                parts.append(piece)
    text = "".join(parts)
    return first, None if text == EXPECTED else f"wrong answer: {text[:120]!r}"


def measure_first_token(ends: Endpoints, requests: int) -> dict[str, Any]:
    """Time to the first token of a streamed answer, one client, back to back: directly, then
    through the gateway (and LiteLLM); added = percentile through − percentile direct."""
    sides = [("direct", ends.direct, DIRECT_KEY), ("gateway", ends.gateway, ends.key)]
    if ends.litellm is not None:
        sides.append(("litellm", ends.litellm, LITELLM_MASTER_KEY))
    out: dict[str, Any] = {}
    for side, url, key in sides:
        wait_for_quiet()
        samples, errors = [], []
        with httpx2.Client(base_url=url, timeout=60,
                           headers={"Authorization": f"Bearer {key}"}) as client:
            for n in range(requests + WARM_UP_FIRST_TOKEN):
                ms, problem = first_token_ms(client)
                if problem is not None:
                    errors.append(problem)
                elif ms is not None and n >= WARM_UP_FIRST_TOKEN:
                    samples.append(ms)
        if side == "gateway":
            ends.gateway_calls += requests + WARM_UP_FIRST_TOKEN
            ends.gateway_ok += requests + WARM_UP_FIRST_TOKEN - len(errors)
            ends.errors.extend(f"first token: {e}" for e in errors)
        out[side] = {"first_token_ms": distribution(samples), "errors": len(errors)}
    add_over_direct(out, "first_token_ms")
    log(f"first token, 1 client: added p50 {out['gateway_added_ms']['p50']} p99 "
        f"{out['gateway_added_ms']['p99']} ms (LiteLLM "
        f"{out.get('litellm_added_ms', {}).get('p50')} / "
        f"{out.get('litellm_added_ms', {}).get('p99')} ms)")
    return out


def measure_open_loop(ends: Endpoints, slow_direct: str, rate: float,
                      requests: int) -> dict[str, Any]:
    """The open loop against the slow upstream directly, then through the gateway (and
    LiteLLM): added = percentile through − percentile direct."""
    sides = [("direct", slow_direct, DIRECT_KEY), ("gateway", ends.gateway, ends.key)]
    if ends.litellm is not None:
        sides.append(("litellm", ends.litellm, LITELLM_MASTER_KEY))
    out: dict[str, Any] = {"upstream_latency_ms": OPEN_LOOP_LATENCY_MS,
                           "offered_share_of_saturation": OPEN_LOOP_SHARE}
    for side, url, key in sides:
        wait_for_quiet()
        before_text = scrape(ends) if side == "gateway" else ""
        out[side] = open_loop(url, key, rate=rate, requests=requests)
        if side == "gateway":
            after_text = scrape(ends)
            before, after = histograms(ends, before_text), histograms(ends, after_text)
            out["stage_mean_ms"] = stage_means(before_text, after_text)
            out["gateway_overhead_ms"] = overhead_quantiles(
                before["magistrate_gateway_overhead_seconds"],
                after["magistrate_gateway_overhead_seconds"])
            # the web loop's timer, sampled every 50 ms: how long a wake-up waited in its queue
            out["event_loop_lag_ms"] = overhead_quantiles(
                before["magistrate_event_loop_lag_seconds"],
                after["magistrate_event_loop_lag_seconds"])
            ends.gateway_calls += requests
            ends.gateway_ok += out[side]["latency_ms"]["n"]
            ends.errors.extend(f"open loop: {e}" for e in out[side]["error_examples"])
    add_over_direct(out, "latency_ms")
    log(f"open loop at {rate:.0f}/s: added p99 gateway {out['gateway_added_ms']['p99']} ms; "
        f"the web loop's lag p50 / p99 at most {out['event_loop_lag_ms']['p50']} / "
        f"{out['event_loop_lag_ms']['p99']} ms")
    return out


METRICS_TOKEN = "bench-metrics-token"  # noqa: S105 - the bench's own gateway, torn down after


def _bucket_pattern(metric: str) -> re.Pattern[str]:
    return re.compile(rf'^{metric}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} ([0-9.e+]+)$', re.M)


_BUCKETS = {name: _bucket_pattern(name) for name in (
    "magistrate_gateway_overhead_seconds", "magistrate_event_loop_lag_seconds")}


def scrape(ends: Endpoints) -> str:
    """The gateway's ``/metrics``."""
    return httpx2.get(ends.gateway.removesuffix("/v1") + "/metrics", timeout=10,
                      headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text


_STAGE_SAMPLE = re.compile(r'^magistrate_gateway_stage_seconds_(sum|count)\{stage="(\w+)"\} '
                           r'([0-9.e+]+)$', re.M)


def stage_means(before: str, after: str) -> dict[str, float | None]:
    """The mean ms of each step of a call's time in Magistrate (``magistrate_gateway_stage_
    seconds``: admission, reservation, settlement) over the calls between two scrapes, and
    ``calls``: how many the settlement counted."""
    def totals(text: str) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for kind, stage, value in _STAGE_SAMPLE.findall(text):
            out[stage, kind] = out.get((stage, kind), 0.0) + float(value)
        return out

    old, new = totals(before), totals(after)
    grew = {key: new[key] - old.get(key, 0.0) for key in new}
    means: dict[str, float | None] = {"calls": grew.get(("settlement", "count"), 0.0)}
    for stage in sorted({stage for stage, _ in grew}):
        count = grew.get((stage, "count"), 0.0)
        means[stage] = round(grew[stage, "sum"] * 1000 / count, 3) if count else None
    return means


def histograms(ends: Endpoints, text: str | None = None) -> dict[str, dict[float, float]]:
    """The gateway's own histograms from its ``/metrics`` (``text``, else scraped now):
    ``magistrate_gateway_overhead_seconds`` (time in Magistrate, less the provider) summed
    over endpoints, and ``magistrate_event_loop_lag_seconds`` (how late the web loop ran its
    timer) summed over processes; each a cumulative count by upper bound."""
    text = scrape(ends) if text is None else text
    out: dict[str, dict[float, float]] = {}
    for name, pattern in _BUCKETS.items():
        sums = out.setdefault(name, {})
        for bound, count in pattern.findall(text):
            sums[float(bound)] = sums.get(float(bound), 0.0) + float(count)
    return out


def overhead_quantiles(before: dict[float, float], after: dict[float, float]
                       ) -> dict[str, float | None]:
    """p50, p95, p99 of what was observed between two scrapes (``calls``: how many), in ms,
    each as the upper bound of its histogram bucket (so at most that; None past the last
    finite bucket)."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    out: dict[str, float | None] = {"calls": total}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        bound = next((b for b, c in counts if total and c >= q * total), None)
        out[name] = None if bound is None or bound == float("inf") else round(bound * 1000, 2)
    return out


# ------------------------------------------------------------------------------- tenant


def configure_tenant(stack: Stack, tenant_id: int, upstream: str,
                     slow_upstream: str | None = None) -> str:
    """Governance on (standard redaction, a route on the allowlist, a price, a generous cap
    and limits) and an API key; returns the key. ``slow_upstream``: a second route to it, for
    the open-loop phase."""
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
        if slow_upstream is not None:
            admin.add_route(s, ctx, admin.RouteInput(
                model_name=SLOW_MODEL, provider="on-prem", provider_model=PROVIDER_MODEL,
                endpoint=f"{slow_upstream}/v1", credential_id=credential.id,
                timeout_seconds=30))
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
    sent: int = 0  # requests sent (model calls, for the tool loop)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds


def one_call(client: httpx2.Client, stream: bool, model: str = MODEL) -> str | None:
    """One request; None when the answer is right, else what went wrong."""
    if not stream:
        response = client.post("/chat/completions", json=body(False, model))
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


def one_loop(client: httpx2.Client, latencies: list[float]) -> str | None:
    """One agent tool loop (three model calls), each call's ms appended to ``latencies``;
    None when every step got the originals back, else what went wrong."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": TOOL_PROMPT}]
    expected = [("lookup_customer", {"query": TOOL_PROMPT}), ("send_email", {"to": LOOKUP_RESULT})]
    for step, result in enumerate((LOOKUP_RESULT, SENT_RESULT, None)):
        started = time.perf_counter()
        response = client.post("/chat/completions", json={
            "model": MODEL, "max_tokens": 512, "messages": messages, "tools": TOOLS})
        if response.status_code != 200:
            return f"tools step {step + 1}: {response.status_code}: {response.text[:200]}"
        message = response.json()["choices"][0]["message"]
        latencies.append((time.perf_counter() - started) * 1000)
        if result is None:
            text = message.get("content")
            return None if text == "Tool said: " + SENT_RESULT else f"wrong answer: {text!r:.120}"
        calls = message.get("tool_calls") or []
        got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
        if got != [expected[step]]:
            return f"tools step {step + 1}: wrong tool call: {str(got)[:120]}"
        messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                     {"role": "tool", "tool_call_id": calls[0]["id"], "content": result}]
    raise AssertionError("unreachable")


def run_clients(base_url: str, key: str, *, workload: str, clients: int, requests: int,
                processes: Processes) -> Run:
    """``clients`` threads, each sending ``requests`` requests (tool loops for the ``tools``
    workload) back to back."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    sent = [0] * clients

    def client(n: int) -> None:
        with httpx2.Client(base_url=base_url, timeout=60,
                           headers={"Authorization": f"Bearer {key}"}) as http:
            barrier.wait()
            for _ in range(requests):
                started = time.perf_counter()
                before = len(latencies[n])
                try:
                    if workload == "tools":
                        problem = one_loop(http, latencies[n])
                    else:
                        problem = one_call(http, workload == "stream")
                except Exception as exc:  # noqa: BLE001 - counted, and the run goes on
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = (time.perf_counter() - started) * 1000
                if workload == "tools":  # the calls answered, and the one that failed
                    sent[n] += len(latencies[n]) - before + (problem is not None)
                else:
                    sent[n] += 1
                if problem is None and workload != "tools":
                    latencies[n].append(elapsed)
                elif problem is not None:
                    errors.append(problem)

    seconds, cpu = processes.run_threads(
        [threading.Thread(target=client, args=(n,)) for n in range(clients)], barrier)
    return Run([ms for mine in latencies for ms in mine], errors, seconds, cpu, sum(sent))


def distribution(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    return {"p50": round(statistics.median(samples), 2),
            "p95": round(percentile(samples, 0.95), 2),
            "p99": round(percentile(samples, 0.99), 2), "max": round(max(samples), 2),
            "n": len(samples)}


def cpu_per_request(run: Run) -> dict[str, float]:
    count = max(1, run.sent)
    return {name: round(seconds * 1000 / count, 3) for name, seconds in run.cpu.items()}


@dataclass
class Endpoints:
    direct: str
    gateway: str
    key: str
    processes: Processes
    litellm: str | None = None  # LiteLLM's proxy on the same upstream, when it is installed
    gateway_calls: int = 0  # every request sent through the gateway, warm-ups included
    gateway_ok: int = 0
    errors: list[str] = field(default_factory=list)
    postgres_url: str | None = None  # to count the transactions of the gateway phases


def transaction_ids(url: str | None) -> int:
    """Transaction ids the Postgres server has assigned so far (every database): one per
    transaction that wrote, read at once (the statistics views lag by up to seconds)."""
    if url is None:
        return 0
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
    return int(row[0]) if row else 0


def measure(ends: Endpoints, *, workload: str, clients: int, requests: int,
            rounds: int) -> dict[str, Any]:
    """``rounds`` × (direct, then gateway), each after a warm-up on a quiet machine."""
    results = []
    for number in range(1, rounds + 1):
        runs: dict[str, Run] = {}
        busy: dict[str, float | None] = {}
        sides = [("direct", ends.direct, DIRECT_KEY), ("gateway", ends.gateway, ends.key)]
        if ends.litellm is not None:  # the peer, interleaved in the same round
            sides.append(("litellm", ends.litellm, LITELLM_MASTER_KEY))
        for side, url, key in sides:
            warm = run_clients(url, key, workload=workload, clients=clients,
                               requests=WARM_UP, processes=ends.processes)
            busy[side] = wait_for_quiet()
            before = transaction_ids(ends.postgres_url) if side == "gateway" else 0
            stages_before = scrape(ends) if side == "gateway" else ""
            run = run_clients(url, key, workload=workload, clients=clients, requests=requests,
                              processes=ends.processes)
            runs[side] = run
            if side == "gateway":
                assigned = transaction_ids(ends.postgres_url) - before
                stages = stage_means(stages_before, scrape(ends))
            for counted in (warm, run):
                ends.errors.extend(f"{side}: {e}" for e in counted.errors)
                if side == "gateway":
                    ends.gateway_calls += counted.sent
                    ends.gateway_ok += len(counted.latencies)
        direct, gateway = (distribution(runs[s].latencies) for s in ("direct", "gateway"))
        added = {q: round(gateway[q] - direct[q], 2) for q in ("p50", "p95", "p99", "max")}
        peer: dict[str, Any] = {}
        if "litellm" in runs:
            litellm = distribution(runs["litellm"].latencies)
            peer = {"litellm_ms": litellm,
                    "litellm_added_ms": {q: round(litellm[q] - direct[q], 2)
                                         for q in ("p50", "p95", "p99", "max")},
                    "gateway_per_second_over_litellm": round(
                        runs["gateway"].per_second / max(runs["litellm"].per_second, 1e-9), 2),
                    "litellm_cpu_ms_per_request": cpu_per_request(runs["litellm"])}
        results.append({
            "added_ms": added, "direct_ms": direct, "gateway_ms": gateway, **peer,
            "per_second": {s: round(runs[s].per_second, 1) for s in runs},
            "errors": sum(len(r.errors) for r in runs.values()),
            **({"loops_per_second": {s: round(runs[s].per_second / 3, 1) for s in runs}}
               if workload == "tools" else {}),
            "cpu_ms_per_request": cpu_per_request(runs["gateway"]),
            # the web process's own account of where a call's time in Magistrate went
            "stage_mean_ms": stages,
            # transaction ids assigned (a transaction that wrote, and each savepoint in it that
            # wrote) in every database, per gateway request
            "postgres_xids_per_request": round(
                assigned / max(len(runs["gateway"].latencies), 1), 2),
            "direct_cpu_ms_per_request": cpu_per_request(runs["direct"]),
            "machine_busy_before": busy})
        log(f"{workload} c={clients} round {number}: added p50 "
            f"{added['p50']} p99 {added['p99']} ms; gateway "
            f"{results[-1]['per_second']['gateway']}/s "
            f"({results[-1]['postgres_xids_per_request']} transaction ids/request), direct "
            f"{results[-1]['per_second']['direct']}/s, LiteLLM "
            f"{results[-1]['per_second'].get('litellm')}/s (added p50 "
            f"{peer.get('litellm_added_ms', {}).get('p50')} p99 "
            f"{peer.get('litellm_added_ms', {}).get('p99')} ms)")
    for name, r in runs.items():
        if name == "litellm":
            ends.errors.extend(f"litellm: {e}" for e in r.errors[:5])
    ordered = sorted(results, key=lambda r: r["added_ms"]["p99"])
    return {**ordered[(len(ordered) - 1) // 2], "clients": clients,
            "requests_per_phase": clients * requests * (3 if workload == "tools" else 1),
            "rounds": results}


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
        # as control_plane/gateway/api.py reads the key: through the process's key cache, on
        # the hot-path engine (autocommit, no pre-ping) where they exist
        hot = getattr(svc, "hot_path_sessions", None)
        with (hot() if hot is not None else svc.session_factory.begin()) as s:
            principal = api_keys.authenticate_gateway_key(
                s, f"Bearer {key}", None, rule=gateway_rule,
                **({"cache": svc.key_cache} if getattr(svc, "key_cache", None) else {}))
            actor = Actor("api_key", str(principal.key_id), principal.key_name)
            ctx = svc.tenant_connections.gateway_context(s, principal, actor)
            key_id = str(principal.key_id)
        t1 = time.perf_counter()
        chat, _ = openai_request(json.loads(raw))
        t2 = time.perf_counter()

        def limit(*, tokens: int, what: str, requests_per_minute: int,
                  tokens_per_minute: int) -> None:
            limiter.check(ctx.tenant_id, tokens=tokens, requests_per_minute=requests_per_minute,
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

    # Postgres round trips counted where psycopg sends them, so statements sent through
    # SQLAlchemy and those sent straight on the driver (tenant_runtime/driver.py) both count:
    # each cursor's statement, and each BEGIN, COMMIT or ROLLBACK the connection sends itself;
    # "transactions" are the BEGINs (a statement in autocommit is a transaction of its own,
    # counted as a statement). A pipeline (driver.pipelined) sends its statements and commands
    # without waiting and syncs once: they count as "pipelined", the pipeline as one round trip
    counted: Counter[str] = Counter()
    real_execute = psycopg.Cursor.execute
    real_command = BaseConnection._exec_command
    real_pipeline = psycopg.Connection.pipeline

    def in_pipeline(connection: Any) -> bool:
        return bool(connection.pgconn.pipeline_status)

    def begins(statement: Any) -> bool:  # a BEGIN, sent by psycopg or by our own code
        text = statement if isinstance(statement, bytes) else str(statement).encode()
        return text.lstrip().upper().startswith(b"BEGIN")

    def counting_execute(cursor: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        counted["pipelined" if in_pipeline(cursor.connection) else "statements"] += 1
        counted["transactions"] += begins(statement)
        return real_execute(cursor, statement, *args, **kwargs)

    def counting_command(connection: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        counted["pipelined" if in_pipeline(connection) else "commands"] += 1
        counted["transactions"] += begins(command)
        return real_command(connection, command, *args, **kwargs)

    def counting_pipeline(connection: Any) -> Any:
        counted["pipelines"] += 1
        return real_pipeline(connection)

    def on_checkout(*_: Any) -> None:
        counted["checkouts"] += 1

    try:
        for _ in range(20):  # warm-up
            call()
        for name in steps:
            steps[name].clear()
        wait_for_quiet()
        psycopg.Cursor.execute = counting_execute  # type: ignore[method-assign]
        BaseConnection._exec_command = counting_command  # type: ignore[method-assign]
        psycopg.Connection.pipeline = counting_pipeline  # type: ignore[method-assign]
        control_engine = svc.session_factory.kw["bind"]  # type: ignore[attr-defined]
        hot_engine = getattr(svc, "hot_path_engine", None)
        if hot_engine is not None:
            control_engine = hot_engine
        pings = bool(getattr(control_engine.pool, "_pre_ping", False))
        event.listen(control_engine.pool, "checkout", on_checkout)
        cpu_started = time.process_time()
        for _ in range(calls):
            call()
        cpu_ms = (time.process_time() - cpu_started) * 1000 / calls
        psycopg.Cursor.execute = real_execute  # type: ignore[method-assign]
        BaseConnection._exec_command = real_command  # type: ignore[method-assign]
        psycopg.Connection.pipeline = real_pipeline  # type: ignore[method-assign]
        event.remove(control_engine.pool, "checkout", on_checkout)
        per_call = {name: round(count / calls, 2) for name, count in counted.items()}
        pre_pings = per_call.get("checkouts", 0.0) if pings else 0.0
        per_call["pre_pings"] = pre_pings
        # psycopg sends BEGIN and COMMIT as round trips of their own; a pre-ping is a
        # statement, counted among them; a pipeline is one
        per_call["postgres_round_trips"] = round(
            per_call.get("statements", 0) + per_call.get("commands", 0)
            + per_call.get("pipelines", 0), 2)
        timed = {name: list(samples) for name, samples in steps.items()}
        if profile:  # a separate pass: the profiler's overhead stays out of the figures
            # CPU time, not wall-clock: waits on Postgres, Redis and the upstream count nothing
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(lambda: [call() for _ in range(calls)])
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("cumulative").print_stats(60)
            stats.sort_stats("tottime").print_stats(40)
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
    summary["per_call"] = per_call  # statements, transactions, round trips to Postgres
    summary["cpu_ms_per_call_in_process"] = round(cpu_ms, 3)  # this process only, not Postgres
    log(f"breakdown: {json.dumps(summary)}")
    return summary


# ------------------------------------------------------------------------------- report


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    litellm_version = None if args.no_litellm else install_litellm()
    log(f"starting Postgres on port {stack.pg.port} under {stack.home}")
    stack.start()
    redis_server = stack.start_redis()
    tenant_id = stack.add_tenant("bench-gateway", "Bench gateway")
    upstream_port, slow_port, gateway_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    slow_upstream = f"http://127.0.0.1:{slow_port}"
    key = configure_tenant(stack, tenant_id, upstream, slow_upstream)
    clients = [int(n) for n in args.clients.split(",") if n.strip()]
    children: list[Any] = []
    peer: subprocess.Popen[bytes] | None = None
    gateway_process: subprocess.Popen[bytes] | None = None
    two: dict[str, Any] | None = None
    scaling: dict[str, Any] | None = None
    try:
        upstream_process = start_upstream(upstream_port, args.upstream_latency_ms / 1000)
        children.append(upstream_process)
        children.append(start_upstream(slow_port, OPEN_LOOP_LATENCY_MS / 1000))
        postmaster = int((stack.pg.pgdata / "postmaster.pid").read_text().split()[0])
        assert redis_server.process is not None and upstream_process.pid is not None

        def up(workers: int, with_peer: bool = True) -> Endpoints:
            nonlocal gateway_process, peer
            gateway_process = start_gateway(stack, gateway_port, workers,
                                            dict(args.gateway_env))
            litellm_port = free_port()
            peer = None if args.no_litellm or not with_peer else start_litellm(
                stack.home, litellm_port, upstream, slow_upstream, workers)
            pids = {"gateway": (gateway_process.pid, True),
                    "upstream": (upstream_process.pid or 0, False),
                    "postgres": (postmaster, True),
                    "redis": (redis_server.process.pid, False)}  # type: ignore[union-attr]
            if peer is not None:
                pids["litellm"] = (peer.pid, True)
            log(f"upstream on {upstream_port}, gateway on {gateway_port} ({workers} process"
                f"{'es' if workers > 1 else ''}), LiteLLM "
                f"{'on ' + str(litellm_port) if peer else 'absent'}")
            return Endpoints(direct=f"{upstream}/v1",
                             gateway=f"http://127.0.0.1:{gateway_port}/v1", key=key,
                             processes=Processes(pids),
                             litellm=f"http://127.0.0.1:{litellm_port}/v1" if peer else None,
                             postgres_url=stack.pg.url())

        ends = up(args.web_workers)
        chat = {f"clients_{n}": measure(ends, workload="chat", clients=n,
                                        requests=args.requests, rounds=args.rounds)
                for n in clients}
        # a phase given 0 requests is left out (its figure is null)
        stream = measure(ends, workload="stream", clients=CLIENTS,
                         requests=args.stream_requests, rounds=args.rounds) \
            if args.stream_requests else {}
        tools = measure(ends, workload="tools", clients=CLIENTS, requests=args.tool_loops,
                        rounds=args.rounds) if args.tool_loops else {}
        solo = measure(ends, workload="chat", clients=1, requests=args.solo_requests,
                       rounds=1)
        solo.pop("rounds")
        tools_solo = measure(ends, workload="tools", clients=1,
                             requests=max(1, args.solo_requests // 3), rounds=1) \
            if args.tool_loops else {}
        tools_solo.pop("rounds", None)
        first_token = measure_first_token(ends, args.solo_requests)
        saturation = chat[f"clients_{clients[0]}"]["per_second"]["gateway"]
        opened = measure_open_loop(ends, f"{slow_upstream}/v1", OPEN_LOOP_SHARE * saturation,
                                   args.open_requests) if args.open_requests else None
        parts = breakdown(stack, gateway_port, key, args.breakdown_calls, args.profile) \
            if args.breakdown_calls else None
        in_process = 20 + args.breakdown_calls * (2 if args.profile else 1) \
            if args.breakdown_calls else 0  # warm-up included
        ends.gateway_calls += in_process  # their audit events are counted by the checks too
        ends.gateway_ok += in_process
        if args.two_processes:
            stop(peer)
            stop(gateway_process)
            later = up(2)
            later.gateway_calls, later.gateway_ok = ends.gateway_calls, ends.gateway_ok
            later.errors = ends.errors
            two = measure(later, workload="chat", clients=CLIENTS, requests=args.requests,
                          rounds=args.rounds)
            ends = later
            one = chat[f"clients_{CLIENTS}"]["per_second"] if f"clients_{CLIENTS}" in chat \
                else None
            if one:
                two["scaling_over_one_process"] = {
                    side: round(two["per_second"][side] / max(one[side], 1e-9), 2)
                    for side in ("gateway", "litellm")
                    if side in one and side in two["per_second"]}
        if args.cpu_share:  # 1 and 2 processes, each held to the same share of a core
            quota = CpuQuota(args.cpu_share)
            problem = quota.problem()
            scaling = {"cpu_share_per_process": args.cpu_share, "unavailable": problem}
            if problem is not None:
                log(f"scaling under a CPU quota left out: {problem}")
            for workers in (1, 2) if problem is None else ():
                stop(peer)
                stop(gateway_process)
                later = up(workers, with_peer=False)
                later.gateway_calls, later.gateway_ok = ends.gateway_calls, ends.gateway_ok
                later.errors = ends.errors
                ends = later
                assert gateway_process is not None
                serving = web_workers(gateway_process.pid, workers)
                if len(serving) != workers:
                    raise RuntimeError(f"found {len(serving)} web workers, not {workers}")
                try:
                    for pid in serving:
                        quota.hold(pid)
                    scaling[f"processes_{workers}"] = measure(
                        ends, workload="chat", clients=CLIENTS, requests=args.requests,
                        rounds=args.rounds)
                finally:
                    quota.release()
            if problem is None:
                scaling["two_over_one"] = round(
                    scaling["processes_2"]["per_second"]["gateway"]
                    / max(scaling["processes_1"]["per_second"]["gateway"], 1e-9), 2)
                log(f"scaling at {args.cpu_share} of a core each: 2 processes over 1 = "
                    f"{scaling['two_over_one']}")
        checked = checks(stack, tenant_id, ends, upstream)
    finally:
        stop(peer)
        stop(gateway_process)
        for child in reversed(children):
            stop(child)
    errors = len(ends.errors)
    ok = (errors == 0 and checked["one_ok_event_per_ok_call"]
          and checked["no_raw_email_at_upstream"] and checked["audit_chain"].startswith("OK"))
    return {
        "benchmark": "gateway",
        "chat": chat,
        "stream": {**stream, "stream_piece_chars": STREAM_PIECE_CHARS},
        "tools": {**tools, "loops_per_phase": CLIENTS * args.tool_loops,
                  "prompt_bytes": len(TOOL_PROMPT.encode()), "model_calls_per_loop": 3,
                  "tools_offered": len(TOOLS), "concurrency_1": tools_solo},
        "concurrency_1": solo,
        "open_loop": opened,
        "first_token_1_client": first_token,
        "two_processes": two,
        "scaling_under_cpu_quota": scaling,
        "errors": errors,
        "error_examples": ends.errors[:5],
        "checks": checked,
        "breakdown_ms": parts,
        "setup": {"web_processes": args.web_workers, "clients": clients,
                  "gateway_env": dict(args.gateway_env),
                  "upstream_latency_ms": args.upstream_latency_ms,
                  "client": f"httpx2 {httpx2.__version__}, one Client per thread",
                  "prompt_bytes": len(PROMPT.encode()),
                  "answer_chars": len(EXPECTED), "redaction_profile": "standard",
                  "upstream": "asyncio HTTP/1.1 server in its own process",
                  "litellm": f"LiteLLM {litellm_version} ({LITELLM_REQUIREMENT}, its own "
                             f"virtual environment {LITELLM_VENV})" if ends.litellm else None},
        "targets": TARGETS,
        "met": {"chat_added_p99_ms": ok and chat[f"clients_{clients[0]}"]["added_ms"]["p99"]
                <= TARGETS["chat_added_p99_ms"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "postgres": stack.server_version(),
                    "postgres_settings": stack.server_settings(),
                    "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
    }


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.startswith("MAGISTRATE_"):
        raise argparse.ArgumentTypeError("give a setting as MAGISTRATE_NAME=VALUE")
    return name, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS,
                        help="requests per client in each non-streaming phase")
    parser.add_argument("--stream-requests", type=int, default=STREAM_REQUESTS,
                        help="requests per client in each streaming phase")
    parser.add_argument("--solo-requests", type=int, default=SOLO_REQUESTS,
                        help="requests in each concurrency-1 phase")
    parser.add_argument("--breakdown-calls", type=int, default=BREAKDOWN_CALLS)
    parser.add_argument("--tool-loops", type=int, default=TOOL_LOOPS,
                        help="tool loops (3 model calls each) per client in each tools phase")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--web-workers", type=int, default=1,
                        help="`magistrate web --workers` (default 1, as `magistrate up` runs it)")
    parser.add_argument("--clients", default="16,64",
                        help="comma-separated client counts of the non-streaming runs")
    parser.add_argument("--open-requests", type=int, default=OPEN_LOOP_REQUESTS,
                        help="requests of each open-loop phase (300 ms upstream)")
    parser.add_argument("--two-processes", action=argparse.BooleanOptionalAction,
                        default=True, help="also run 16 clients against 2 web processes")
    parser.add_argument("--cpu-share", type=float, default=0.0, metavar="FRACTION",
                        help="also run 16 clients against 1, then 2 web processes each held "
                             "to this share of one core (cgroups, as root): scaling that the "
                             "machine's cores do not cap (0: left out)")
    parser.add_argument("--gateway-env", action="append", default=[], type=_setting,
                        metavar="NAME=VALUE",
                        help="a setting for the gateway's process (repeatable), e.g. "
                             "MAGISTRATE_GATEWAY_ON_EVENT_LOOP=false for the thread pool")
    parser.add_argument("--no-litellm", action="store_true",
                        help="leave LiteLLM out even when it is installed")
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0,
                        help="how long the upstream takes to answer each call (default 0)")
    _stack.add_quiet_wait(parser)
    parser.add_argument("--profile", action="store_true",
                        help="print a CPU-time cProfile of the in-process breakdown to stderr")
    args = parser.parse_args()
    return _stack.run_benchmark(run, args)


if __name__ == "__main__":
    sys.exit(main())

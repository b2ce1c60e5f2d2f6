"""Every Prometheus metric Magistrate exports, defined once (docs/observability.md lists them).

The hot path only increments counters and observes histograms: a label lookup and a locked add,
a few microseconds (ops/BENCHMARKS.md, "Metrics"). Gauges that need a query (the job queue) are
computed when ``/metrics`` is scraped (``control_plane/web/metrics.py``), never on a request.

**No label carries content.** Every label value comes from a closed set — a route template, a
provider name, an endpoint kind, an outcome, a refusal reason, an entity type — or is a tenant's
slug (``[a-z][a-z0-9-]{1,62}``, chosen by an operator). ``closed`` maps anything outside a set to
``"other"``, so a caller's text cannot become a label even through a bug upstream. A test drives
calls with personal data and keys in them and checks every label value of a scrape.

**Several processes.** ``magistrate up`` runs a web process and a worker; ``magistrate web
--workers N`` several web processes. Each writes its samples to files in one folder
(``$MAGISTRATE_HOME/metrics``, prometheus-client's multiprocess mode) and ``/metrics`` in any web
process adds them up. ``enable_multiprocess`` turns that on for a process that imported this
module already (the ``magistrate`` command imports much before it knows which command runs):
every metric here has labels, and prometheus-client makes a labelled metric's storage when a
label set is first used, so nothing was stored in memory before the switch
(``test_every_metric_has_labels``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, values

OTHER = "other"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for the folder

# closed sets of label values (besides route templates and tenant slugs)
OUTCOMES = frozenset({"ok", "error", "cut_short"})
REFUSAL_REASONS = frozenset({
    "model_not_allowed", "tool_not_allowed", "images_not_allowed", "spend_cap", "rate_limit",
    "token_limit", "unauthenticated", "forbidden", "tenant_unavailable"})
ENTITY_TYPES = frozenset({"EMAIL", "PHONE", "SSN", "EIN", "CARD", "PERSON", "ADDRESS", "IP",
                          "DOB", "TERM", "PATTERN"})
PROVIDERS = frozenset({"openai", "anthropic", "azure-openai", "bedrock", "on-prem"})
# the drop-in API a call came through, or the platform feature that made it
ENDPOINT_KINDS = frozenset({"openai", "anthropic", "embeddings", "recommendation"})
KMS_PROVIDERS = frozenset({"local", "aws-kms", "azure-keyvault", "gcp-kms"})

# Overhead is a few milliseconds: fine buckets there, coarse ones for a slow path.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# an event loop's lag: well under a millisecond when idle; tens of milliseconds when saturated
LOOP_LAG_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0)
LOOPS = frozenset({"web"})
PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0)


def closed(value: str | None, allowed: Iterable[str]) -> str:
    """``value`` when it is one of ``allowed``, else ``"other"``."""
    return value if value is not None and value in allowed else OTHER


HTTP_REQUESTS = Counter(
    "magistrate_http_requests", "HTTP requests answered, by route template and status.",
    ["route", "method", "status"])
GATEWAY_CALLS = Counter(
    "magistrate_gateway_calls", "Gateway calls that reached a provider, by provider, endpoint "
    "and outcome (ok, error, cut_short).", ["provider", "endpoint", "outcome"])
GATEWAY_OVERHEAD = Histogram(
    "magistrate_gateway_overhead_seconds", "Time a gateway call spends in Magistrate, from the "
    "request body read to the call's audit event committed, less the time inside the provider "
    "adapter.", ["endpoint"], buckets=OVERHEAD_BUCKETS)
# the steps of a call's time in Magistrate that wait on other processes, each measured whole
STAGES = frozenset({"admission", "reservation", "settlement"})
GATEWAY_STAGE = Histogram(
    "magistrate_gateway_stage_seconds", "Time a gateway call spends in each step of its time in "
    "Magistrate: admission (the request body read to the call admitted: the API key, parsing, "
    "the rate limit's count, the allowlist, redaction), reservation (its spend reserved and its "
    "row written), settlement (its spend settled and its audit event committed, group commit "
    "included). The overhead, less these, is the rest: restoring the answer and rendering it. "
    "A call admitted again because the tenant's configuration changed under it counts its "
    "first, discarded try (and the new configuration's read) in its admission.",
    ["stage"], buckets=OVERHEAD_BUCKETS)
GATEWAY_PROVIDER = Histogram(
    "magistrate_gateway_provider_seconds", "Time inside the provider adapter (retries and "
    "fallbacks included) of one gateway call.", ["provider"], buckets=PROVIDER_BUCKETS)
GATEWAY_TOKENS = Counter(
    "magistrate_gateway_tokens", "Tokens of gateway calls, by tenant, provider and direction "
    "(input, output).", ["tenant", "provider", "direction"])
GATEWAY_COST = Counter(
    "magistrate_gateway_cost_dollars", "Cost charged for gateway calls at the tenant's prices, "
    "in dollars.", ["tenant", "provider"])
REDACTIONS = Counter(
    "magistrate_redactions", "Entities redacted from gateway calls before egress, by type.",
    ["type"])
REFUSALS = Counter(
    "magistrate_gateway_refusals", "Gateway calls refused before any provider, by reason.",
    ["reason"])
RATE_LIMIT_FALLBACKS = Counter(
    "magistrate_rate_limit_fallbacks", "Rate-limit checks answered by the in-process limiter "
    "because Redis was unreachable, by limiter (gateway, sign_in).", ["limiter"])
LEASE_RECLAIMS = Counter(
    "magistrate_job_lease_reclaims", "Jobs returned to the outbox from a worker that stopped, "
    "by how (expired: its lease ran out; released: its process was seen to die).", ["how"])
AUDIT_APPENDS = Counter(
    "magistrate_audit_appends", "Events appended to audit chains (tenant, platform).", ["chain"])
CHECKPOINT_TIME = Gauge(
    "magistrate_audit_checkpoint_timestamp_seconds", "Unix time of each tenant's newest signed "
    "audit checkpoint, as the worker's last checkpoint pass read it.", ["tenant"],
    multiprocess_mode="max")
KMS_CALLS = Counter(
    "magistrate_kms_calls", "Calls to a key provider (wrap, unwrap), by provider and outcome.",
    ["provider", "operation", "outcome"])
DATA_KEY_CACHE = Counter(
    "magistrate_data_key_cache", "Look-ups of unwrapped tenant data keys in memory (hit, miss).",
    ["result"])

EVENT_LOOP_LAG = Histogram(
    "magistrate_event_loop_lag_seconds", "How late a process's event loop ran a timer: what "
    "every wake-up on that loop (a call's database answer, its provider's answer) waits for the "
    "work queued before it.", ["loop"], buckets=LOOP_LAG_BUCKETS)

ALL = (HTTP_REQUESTS, GATEWAY_CALLS, GATEWAY_OVERHEAD, GATEWAY_STAGE, GATEWAY_PROVIDER,
       GATEWAY_TOKENS, GATEWAY_COST, REDACTIONS, REFUSALS, RATE_LIMIT_FALLBACKS, LEASE_RECLAIMS,
       AUDIT_APPENDS, CHECKPOINT_TIME, KMS_CALLS, DATA_KEY_CACHE, EVENT_LOOP_LAG)


def gateway_call(*, tenant: str, provider: str | None, endpoint: str, outcome: str,
                 input_tokens: int, output_tokens: int, cost_micros: int,
                 redactions: Mapping[str, int], overhead: float, provider_seconds: float,
                 stages: Mapping[str, float] | None = None) -> None:
    """One finished gateway call (after its audit event committed); ``stages``: the seconds
    of each of its ``STAGES`` that it went through."""
    name = closed(provider, PROVIDERS)
    kind = closed(endpoint, ENDPOINT_KINDS)
    GATEWAY_CALLS.labels(name, kind, closed(outcome.replace(" ", "_"), OUTCOMES)).inc()
    GATEWAY_OVERHEAD.labels(kind).observe(max(overhead, 0.0))
    GATEWAY_PROVIDER.labels(name).observe(provider_seconds)
    for stage, seconds in (stages or {}).items():
        GATEWAY_STAGE.labels(closed(stage, STAGES)).observe(max(seconds, 0.0))
    if input_tokens:
        GATEWAY_TOKENS.labels(tenant, name, "input").inc(input_tokens)
    if output_tokens:
        GATEWAY_TOKENS.labels(tenant, name, "output").inc(output_tokens)
    if cost_micros:
        GATEWAY_COST.labels(tenant, name).inc(cost_micros / 1_000_000)
    for kind_of_entity, count in redactions.items():
        REDACTIONS.labels(closed(kind_of_entity, ENTITY_TYPES)).inc(count)


def refused(reason: str) -> None:
    REFUSALS.labels(closed(reason, REFUSAL_REASONS)).inc()


# ------------------------------------------------------------------------- several processes

def multiprocess_dir() -> Path | None:
    """The folder of multiprocess mode, when this process has it on."""
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


def enable_multiprocess(folder: Path, *, clean: bool) -> None:
    """Write this process's samples to files in ``folder`` (and those of the processes it
    starts, which inherit the environment). ``clean``: empty the folder first — only the
    process that starts the others may, before it starts them, or their files are lost."""
    if clean and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]

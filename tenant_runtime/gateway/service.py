"""The gateway's call path, inside one tenant (DESIGN.md, "Gateway"):

    admit (rate limit → allowlist → tool rules → image policy → redact → routes) → reserve
    spend → provider (retries inside the adapter; fallbacks in order) → restore → settle spend
    → audit

``admit`` is the one choke point every endpoint's request passes (``prepare``, ``embed`` and
``count_tokens`` start with it); it decides on the tenant's configuration and reads nothing
else. ``prepare`` does everything before the provider and commits the reservation, so
concurrent calls see it; ``complete`` and ``stream`` call the providers, and ``_finish``
settles and records the one audit event of the call in a second transaction (group-committed
with other calls', settlement.py). Both run straight on psycopg connections of the tenant's
pool (tenant_runtime/driver.py: no ORM session, no SQLAlchemy execution layer on the hot path).
The first writes one statement, the reservation with the call's row, so it runs in autocommit,
one round trip with no ``BEGIN`` or ``COMMIT``: the call is admitted under the snapshot of the
configuration this process holds, and the reservation's statement itself checks that the
configuration is still at that version (``spend.ConfigChanged`` when not: nothing reserved,
the call admitted again under the new one, built in a session, ``config.snapshot``). The second
is sent as one pipeline, its commit included (settlement.py): one round trip. Refusals (a
model off the allowlist, a forbidden tool, a refused image, the spend cap) are audited in
their own transaction and raised as
``TenantError``s with a sentence for the caller. Prompt and answer text are never logged or
audited: only counts. Neither is stored either, with one exception: ``complete_once``, the
platform's own calls for a job step, keeps the restored answer sealed under the tenant's key in
the call's row, settled in the same transaction, so that a retried step is answered from it
instead of paying the model twice; the step clears it (``release_answer``) in the transaction
that records what it made of it, and answers nobody released are cleared after a day
(``forget_kept_answers``)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tenant_runtime import audit, bridge, driver
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError, TenantInvalidInput
from tenant_runtime.gateway import config, features, pricing, settlement, spend, tools
from tenant_runtime.gateway.content import AnswerBlock, Choice, Text, ToolCall
from tenant_runtime.gateway.egress import EgressRefused, check_route
from tenant_runtime.gateway.messages import ChatRequest, EmbeddingRequest, tool_history_problem
from tenant_runtime.gateway.names import shown
from tenant_runtime.gateway.providers.base import (
    Adapter,
    Finished,
    ProviderError,
    StreamEvent,
    Target,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tenant_runtime.gateway.providers.registry import adapter_for
from tenant_runtime.models import GatewayCall
from tenant_runtime.observability import metrics, tracing
from tenant_runtime.redaction import (
    RedactedEmbedding,
    RedactedRequest,
    Restorer,
    StreamRestorer,
    redact_embedding,
    redact_request,
)


class GatewayEvents:
    """The gateway's audit events. A refusal's event (``*_refused``, ``spend_cap_reached``)
    carries ``reason`` (the label of the refusals metric, ``REFUSAL_KINDS``) and
    ``scope_denial``: true for the model and tool refusals, which deny what the caller's key
    may reach (as ``access.scope_denied`` does on the dashboard and API), false otherwise."""

    CALL = "gateway.call"
    MODEL_REFUSED = "gateway.model_refused"  # a scope denial
    TOOL_REFUSED = "gateway.tool_refused"  # a scope denial: a tool the tenant's rules forbid
    IMAGE_REFUSED = "gateway.image_refused"  # images, where the tenant's policy refuses them
    TOKENS_COUNTED = "gateway.tokens_counted"  # count_tokens: no spend, the provider may see it
    SPEND_CAP_REACHED = "gateway.spend_cap_reached"
    SETTINGS_CHANGED = "gateway.settings_changed"
    ROUTE_ADDED = "gateway.route_added"
    ROUTE_CHANGED = "gateway.route_changed"
    ROUTE_DELETED = "gateway.route_deleted"
    PRICE_SET = "gateway.price_set"
    PRICE_REMOVED = "gateway.price_removed"


# a provider's answer that the request itself is invalid: answered 422, the caller's to fix
REFUSED_AS_INVALID = frozenset({400, 422})


class ModelRefused(TenantError):
    status_code = 403
    default_message = "This model is not on the tenant's allowlist."


class ToolRefused(TenantError):
    status_code = 403
    default_message = "The tenant's tool rules do not allow this tool."


class ImagesRefused(TenantError):
    status_code = 403
    default_message = "The tenant's policy does not let images leave."


@dataclass(frozen=True)
class RefusalKind:
    """A refusal the gateway audits: its event, its reason label on the refusals metric, and
    what the console's table of calls says of it."""
    event: str
    metric_reason: str
    reason: str
    scope_denial: bool  # it denies what the caller's key may reach (GatewayEvents)


# Every refusal the gateway audits (``_refused``), by the exception that refuses the call: the
# one list the metric, the audit event and the console's table of calls read.
REFUSAL_KINDS: dict[type[TenantError], RefusalKind] = {
    ModelRefused: RefusalKind(GatewayEvents.MODEL_REFUSED, "model_not_allowed",
                              "the model is not on the allowlist", True),
    ToolRefused: RefusalKind(GatewayEvents.TOOL_REFUSED, "tool_not_allowed",
                             "a tool the tenant's tool rules forbid", True),
    ImagesRefused: RefusalKind(GatewayEvents.IMAGE_REFUSED, "images_not_allowed",
                               "images or documents, which the tenant's policy refuses",
                               False),
    spend.SpendCapReached: RefusalKind(GatewayEvents.SPEND_CAP_REACHED, "spend_cap",
                                       "the monthly spend cap is reached", False),
}
# what ``Gateway.admit`` and the reservation refuse with, each audited as its own event
AUDITED_REFUSALS = tuple(REFUSAL_KINDS)


class ProvidersFailed(TenantError):
    status_code = 502
    default_message = "The model provider could not answer."


@dataclass
class PreparedCall:
    call_id: int
    month: date
    model_name: str
    redacted: RedactedRequest | RedactedEmbedding
    restorer: Restorer = field(repr=False)  # the placeholder map: memory only, this call only
    targets: list[Target] = field(repr=False)
    prices: list[pricing.Price]
    reserved_micros: int
    started: float
    idempotency_key: str | None = None  # set: the answer is kept, sealed, until released
    endpoint_kind: str = ""
    shard: int = 0  # the spend shard it reserved on
    # time inside provider adapters, and each attempt, for the overhead metric and the trace
    provider_seconds: float = 0.0
    attempts: list[tracing.ProviderAttempt] = field(default_factory=list, repr=False)
    # seconds of each of its steps that wait on other processes (metrics.STAGES)
    stages: dict[str, float] = field(default_factory=dict, repr=False)

    def admitted(self, admitted_at: float) -> PreparedCall:
        """Count its admission (from ``started`` to ``admitted_at``) and its reservation (from
        then until now), both ``perf_counter``."""
        self.stages["admission"] = admitted_at - self.started
        self.stages["reservation"] = time.perf_counter() - admitted_at
        return self

    def provider_done(self, target: Target, began: float, error: BaseException | None = None
                      ) -> None:
        """Count an adapter call that began at ``began`` (``perf_counter``) and ends now."""
        ended = time.perf_counter()
        self.provider_seconds += ended - began
        self.attempts.append(tracing.ProviderAttempt(
            target.provider, target.model, began, ended,
            None if error is None else type(error).__name__))

    @property
    def json_answer(self) -> bool:
        """Structured output: the answer text is JSON, restored as JSON."""
        return isinstance(self.redacted, RedactedRequest) and self.redacted.output is not None

    @property
    def chat(self) -> RedactedRequest:
        if not isinstance(self.redacted, RedactedRequest):
            raise TypeError("An embeddings call has no chat request.")
        return self.redacted


class RateLimit(Protocol):
    """The edge's rate limiter, as ``Gateway.admit`` calls it: count one request of about
    ``tokens`` tokens (``what`` says what they are, for the caller's sentence) against the
    tenant's limits, raising at once to refuse a request that could never fit, and return the
    function that judges the count (raising to refuse), or None when it judged already. The
    judgement is asked for once the rest of the admission has run (the count's round trip
    overlaps it), and before any refusal of it: the rate limit's refusal comes first. One per
    request: called again for it (admitted again under a configuration that changed), it
    counts nothing more and judges the same counts against the limits given."""

    def __call__(self, *, tokens: int, what: str, requests_per_minute: int,
                 tokens_per_minute: int) -> Callable[[], None] | None: ...


def rate_tokens(request: ChatRequest | EmbeddingRequest, *,
                generates: bool = True) -> tuple[int, str]:
    """What a request counts against the tenant's tokens per minute, and what they are: its
    prompt's token bound, plus ``max_tokens`` for each answer when it generates any (a token
    count generates nothing and counts as a request only)."""
    if isinstance(request, EmbeddingRequest):
        return pricing.prompt_token_bound(request.inputs), "input"
    if not generates:
        return 0, "nothing generated"
    return (pricing.request_token_bound(request) + request.max_tokens * request.n,
            "prompt and max_tokens")


@dataclass(frozen=True)
class Admitted:
    """A request ``Gateway.admit`` let through: the configuration it was judged by, its
    redacted form and placeholder map, and the routes that can take it, in order."""

    cfg: config.GatewayConfig
    redacted: RedactedRequest | RedactedEmbedding
    restorer: Restorer = field(repr=False)
    chain: list[config.RouteEntry] = field(repr=False)

    @property
    def prices(self) -> list[pricing.Price]:
        return [entry.price for entry in self.chain]

    @property
    def chat(self) -> RedactedRequest:
        if not isinstance(self.redacted, RedactedRequest):
            raise TypeError("An embeddings request has no chat request.")
        return self.redacted


@dataclass(frozen=True)
class CallResult:
    text: str  # restored, of the first choice
    usage: Usage
    finish_reason: str
    provider: str
    cost_micros: int
    replayed: bool = False  # the kept answer of an earlier attempt: no call, no charge
    choices: tuple[Choice, ...] = ()  # restored; empty for a stream's result


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: tuple[list[float] | str, ...]
    usage: Usage
    provider: str
    cost_micros: int


KEPT_ANSWER = ("gateway_calls", "answer_sealed")  # the sealed answer's table and column
KEEP_ANSWERS_FOR = timedelta(days=1)


def _listed(names: list[str]) -> str:
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _now() -> datetime:
    return datetime.now(UTC)


def _on_loop_or_not(adapter: object, method: str, *args: Any) -> Any:
    """An adapter's ``method``: its async twin (``a`` + method) awaited on the event loop when
    the call path runs there (tenant_runtime/bridge.py), else the sync one."""
    twin = getattr(adapter, "a" + method, None)
    if twin is not None and bridge.active():
        return bridge.wait(twin(*args))
    return getattr(adapter, method)(*args)


class Gateway:
    """One tenant's gateway. ``adapters`` maps a provider name to its adapter (the registry by
    default); ``endpoint_kind`` records which drop-in API the call came through.
    ``started``: when the call reached Magistrate (``perf_counter``; default: when ``prepare``
    or ``embed`` begins), the start of its latency and of its overhead metric."""

    def __init__(self, ctx: TenantContext, *, api_key_id: str | None = None,
                 adapters: Callable[[str], Adapter] = adapter_for,
                 clock: Callable[[], datetime] = _now, started: float | None = None) -> None:
        self.ctx, self.api_key_id, self.adapters, self.clock = ctx, api_key_id, adapters, clock
        self.started = started

    # -- before the provider -------------------------------------------------------------

    def prepare(self, request: ChatRequest, *, endpoint_kind: str,
                rate_limit: RateLimit | None = None,
                idempotency_key: str | None = None) -> PreparedCall:
        """The governance of ``admit`` and the spend reservation, committed together.
        ``rate_limit``: see ``admit``; ``idempotency_key``: see ``complete_once``."""
        started = time.perf_counter() if self.started is None else self.started
        month = spend.month_of(self.clock())
        with self._audited_refusals(request.model, endpoint_kind):
            # admitted under the snapshot of the configuration this process holds, then
            # reserved straight on the driver, in autocommit (tenant_runtime/driver.py): the
            # reservation is one statement, a transaction of its own (no BEGIN or COMMIT),
            # which checks that the configuration is still at the snapshot's version, and what
            # it writes is all this step writes: one round trip. The connection is taken for
            # that statement only, not while the call waits for its rate limit's count.
            engine = driver.engine_of(self.ctx.session_factory)
            cfg = config.held(self.ctx)
            if cfg is not None:
                try:
                    admitted = self.admit(cfg, request, rate_limit=rate_limit)
                    admitted_at = time.perf_counter()
                    with driver.autocommit(engine) as connection:
                        prepared = self._reserve_admitted(
                            connection, admitted, request, month, endpoint_kind=endpoint_kind,
                            started=started, idempotency_key=idempotency_key, at_version=True)
                    return prepared.admitted(admitted_at)
                except spend.ConfigChanged:
                    pass  # nothing reserved: admitted again below, under the new version
                except DBAPIError:
                    raise
                except Exception:
                    # a refusal (or an error) decided under a snapshot that may be old
                    # stands only when the snapshot is still the configuration
                    with driver.autocommit(engine) as connection:
                        row = driver.one(connection, config.VERSION)
                    if row is not None and row[0] == cfg.version:
                        raise
            # the configuration changed (or none is held yet): rebuilt in a session, once a
            # change and process, and the call admitted under it in the same transaction
            with self.ctx.session() as s, s.begin():
                admitted = self.admit(config.snapshot(s, self.ctx), request,
                                      rate_limit=rate_limit)
                admitted_at = time.perf_counter()
                prepared = self._reserve_admitted(
                    s, admitted, request, month, endpoint_kind=endpoint_kind, started=started,
                    idempotency_key=idempotency_key)
            return prepared.admitted(admitted_at)

    def _reserve_admitted(self, on: driver.Connectable, admitted: Admitted,
                          request: ChatRequest, month: date, *, endpoint_kind: str,
                          started: float, idempotency_key: str | None,
                          at_version: bool = False) -> PreparedCall:
        """``prepare``'s reservation on ``on`` of a call ``admit`` admitted: its worst case
        reserved, or the spend cap's refusal raised (``at_version``: see ``_reserve``)."""
        cfg, redacted, prices = admitted.cfg, admitted.chat, admitted.prices
        reserved = self._worst_case(redacted, prices)
        prepared = self._reserve(on, cfg, month, admitted.chain, reserved, redacted,
                                 admitted.restorer, endpoint_kind=endpoint_kind,
                                 stream=request.stream, started=started,
                                 idempotency_key=idempotency_key, at_version=at_version)
        if prepared is None:
            raise spend.SpendCapReached(spend.reservation_message(
                on, month=month, cap_micros=cfg.monthly_cap_micros, reserved_micros=reserved,
                prompt_tokens=pricing.request_token_bound(redacted), prices=prices,
                answers=redacted.n))
        return prepared

    def admit(self, cfg: config.GatewayConfig, request: ChatRequest | EmbeddingRequest, *,
              rate_limit: RateLimit | None, generates: bool = True) -> Admitted:
        """The one choke point every endpoint's request passes before anything of it leaves
        (``prepare``, ``embed`` and ``count_tokens`` all start here), in this order: the
        conversation's tool calls and results fit together; the rate limit (``rate_limit``,
        called with the tenant's limits and the request's token bound: its prompt, plus
        ``max_tokens`` for each answer when it ``generates``); the allowlist; the tool rules;
        the image policy; redaction; the routes whose provider can take the request. A refusal
        raises; wrapped in ``_audited_refusals``, it is audited once the transaction is gone.
        The rate limit's count is sent first and judged last (its round trip overlaps the
        other steps), and its refusal wins over theirs: the order of refusals is as listed."""
        if isinstance(request, ChatRequest):
            problem = tool_history_problem(request.messages)
            if problem is not None:
                raise TenantInvalidInput(problem)
        judged: Callable[[], None] | None = None
        if rate_limit is not None:
            tokens, what = rate_tokens(request, generates=generates)
            judged = rate_limit(tokens=tokens, what=what,
                                requests_per_minute=cfg.requests_per_minute,
                                tokens_per_minute=cfg.tokens_per_minute)
        try:
            admitted = self._admit_counted(cfg, request)
        except Exception:
            if judged is not None:
                judged()  # over the limit: that refusal comes first
            raise
        if judged is not None:
            judged()
        return admitted

    def _admit_counted(self, cfg: config.GatewayConfig,
                       request: ChatRequest | EmbeddingRequest) -> Admitted:
        """``admit``'s steps after the rate limit's count: the allowlist, the tool rules, the
        image policy, redaction, the routes."""
        if request.model not in cfg.allowed:
            raise ModelRefused(
                f"The model {shown(request.model)} is not on this tenant's allowlist; an "
                "Owner or Admin can allow it on the tenant's gateway page.")
        if isinstance(request, EmbeddingRequest):
            chain = self._chain(cfg, request.model, lambda provider, _model: (
                [] if provider in features.OPENAI_SHAPED else ["embeddings"]))
            return Admitted(cfg, redact_embedding(request, cfg.profile), Restorer({}), chain)
        refused_tools = tools.refused_tools(request, cfg.tool_rules)
        if refused_tools:
            raise ToolRefused(
                f"This tenant's tool rules do not let programs offer "
                f"{_listed(refused_tools)} to {shown(request.model)}; remove "
                f"{'it' if len(refused_tools) == 1 else 'them'} from the request, or ask an "
                "Owner or Admin to change the rules on the tenant's gateway page.",
                details={"tools": sorted(set(refused_tools))[:20]})
        if not cfg.images_allowed and tools.count_images(request):
            raise ImagesRefused(
                "This tenant's policy does not let images or documents leave (they cannot "
                "be scanned for personal data); send text only, or ask an Owner or Admin "
                "to allow images on the tenant's gateway page.")
        redacted, restorer = redact_request(request, cfg.profile)
        chain = self._chain(cfg, request.model,
                            lambda provider, model: features.unsupported(request, provider,
                                                                         model))
        return Admitted(cfg, redacted, restorer, chain)

    @contextmanager
    def _audited_refusals(self, model: str, endpoint_kind: str) -> Iterator[None]:
        """Audit a governance refusal raised inside (``AUDITED_REFUSALS``) in a transaction of
        its own, after the one it came from is rolled back, and let it go on."""
        try:
            yield
        except AUDITED_REFUSALS as refusal:
            self._refused(refusal, model, endpoint_kind)
            raise

    def _chain(self, cfg: config.GatewayConfig, model: str,
               unsupported: Callable[[str, str], list[str]]) -> list[config.RouteEntry]:
        """The routes a call of ``model`` may take, in order: those whose provider can take
        the request (``unsupported`` lists what a provider, serving a model id, cannot) and
        whose endpoint the egress
        policy allows. None: 422 naming what no provider could take, or 502."""
        chain, egress_refusals = [], []
        untranslatable: dict[str, list[str]] = {}
        for entry in cfg.chains[model]:
            missing = unsupported(entry.provider, entry.target.model)
            if missing:
                untranslatable.setdefault(entry.provider, missing)
                continue
            try:
                check_route(self.ctx.egress, provider=entry.provider, endpoint=entry.endpoint,
                            has_credential=entry.has_credential)
                chain.append(entry)
            except EgressRefused as exc:
                egress_refusals.append(f"{entry.model_name}: {exc.message}")
        if not chain and untranslatable and not egress_refusals:
            if all(fields == [features.NEEDS_A_TURN] for fields in untranslatable.values()):
                raise TenantInvalidInput(
                    f"The model {shown(model)} is served by "
                    f"{' and '.join(sorted(untranslatable))}, which needs at least one user or "
                    "assistant message; this request has only system messages. Add the user's "
                    "message.")
            raise TenantInvalidInput(
                f"The model {shown(model)} is served by "
                + "; ".join(f"{provider}, which cannot take {_listed(fields)}"
                            for provider, fields in sorted(untranslatable.items()))
                + ". Leave those out, or use a model another provider serves.")
        if not chain:
            raise ProvidersFailed(f"The model {shown(model)} cannot be called: "
                                  + " ".join(egress_refusals))
        return chain

    def _reserve(self, s: driver.Connectable, cfg: config.GatewayConfig, month: date,
                 chain: list[config.RouteEntry], reserved: int,
                 redacted: RedactedRequest | RedactedEmbedding, restorer: Restorer, *,
                 endpoint_kind: str, stream: bool, started: float,
                 idempotency_key: str | None = None,
                 at_version: bool = False) -> PreparedCall | None:
        """Reserve the call's worst case and write its row; None when it does not fit.
        ``at_version``: only while the configuration is at ``cfg``'s version, else
        ``spend.ConfigChanged`` is raised."""
        first = chain[0].target
        shard = spend.pick_shard()
        call_id = spend.reserve_call(
            s, month=month, amount_micros=reserved, cap_micros=cfg.monthly_cap_micros,
            shard=shard, config_version=cfg.version if at_version else None,
            call={"api_key_id": self.api_key_id, "model_name": redacted.model,
                  "provider": first.provider, "provider_model": first.model,
                  "endpoint_kind": endpoint_kind, "stream": stream,
                  "redactions": dict(redacted.counts), "idempotency_key": idempotency_key})
        if call_id is None:
            return None
        return PreparedCall(call_id, month, redacted.model, redacted, restorer,
                            [entry.target for entry in chain],
                            [entry.price for entry in chain], reserved, started,
                            idempotency_key, endpoint_kind, shard)

    @staticmethod
    def _worst_case(redacted: RedactedRequest, prices: list[pricing.Price]) -> int:
        tokens_in = pricing.request_token_bound(redacted)
        return max(price.cost_micros(tokens_in, redacted.max_tokens * redacted.n)
                   for price in prices)

    def _refused(self, refusal: TenantError, model: str, endpoint_kind: str) -> None:
        kind = REFUSAL_KINDS[type(refusal)]
        event = kind.event
        metrics.refused(kind.metric_reason)
        with self.ctx.session() as s, s.begin():
            listed = config.route_for(s, model) is not None
            # a name that is no route of the tenant's could be anything a caller typed (an
            # e-mail address, say): the chain keeps only its digest
            name = model if listed else "unlisted:" + hashlib.sha256(
                model.encode("utf-8", "replace")).hexdigest()[:16]
            audit.record(s, event, actor=self.ctx.actor, target_type="model",
                         target_id=name[:64],
                         details={"api_key_id": self.api_key_id, "endpoint": endpoint_kind,
                                  "reason": kind.metric_reason,
                                  "scope_denial": kind.scope_denial,
                                  **(refusal.details or {})})

    # -- the provider ----------------------------------------------------------------------

    def complete_once(self, request: ChatRequest, *, key: str,
                      endpoint_kind: str) -> CallResult:
        """A non-streaming call made at most once per ``key`` (a job step's idempotency key):
        when an earlier attempt's call answered and the step has not released the answer
        (``release_answer``), that answer is returned, with no call, no charge and no second
        audit event. Otherwise the call is made, and its restored answer kept sealed in the
        call's row, written in the transaction that settles and audits it: a worker killed
        after that commit loses nothing its retry would pay for again."""
        kept = self._kept_answer(key)
        if kept is not None:
            return kept
        return self.complete(self.prepare(request, endpoint_kind=endpoint_kind,
                                          idempotency_key=key))

    def _kept_answer(self, key: str) -> CallResult | None:
        with self.ctx.session() as s:
            row = s.execute(
                select(GatewayCall.id, GatewayCall.answer_sealed, GatewayCall.tokens_in,
                       GatewayCall.tokens_out, GatewayCall.provider, GatewayCall.cost_micros)
                .where(GatewayCall.idempotency_key == key, GatewayCall.status == "ok",
                       GatewayCall.answer_sealed.is_not(None))
                .order_by(GatewayCall.id.desc()).limit(1)).first()
        if row is None or row.answer_sealed is None:
            return None
        table, column = KEPT_ANSWER
        kept = json.loads(self.ctx.sealer.open_text(row.answer_sealed, table=table,
                                                    column=column, row_key=row.id))
        return CallResult(kept["text"], Usage(row.tokens_in, row.tokens_out),
                          kept["finish_reason"], row.provider or "", row.cost_micros,
                          replayed=True)

    def complete(self, call: PreparedCall) -> CallResult:
        failures: list[ProviderError] = []
        for target, price in zip(call.targets, call.prices, strict=True):
            began = time.perf_counter()
            try:
                answer = _on_loop_or_not(self.adapters(target.provider), "complete",
                                         call.chat, target)
            except ProviderError as exc:
                call.provider_done(target, began, exc)
                failures.append(exc)
                continue
            except Exception as exc:  # not the provider's answer: still settle, then raise
                call.provider_done(target, began, exc)
                self._finish(call, target, outcome="error", usage=Usage(0, 0),
                             cost=call.reserved_micros, attempts=1, fallback=bool(failures),
                             error=f"unexpected {type(exc).__name__}")
                raise
            call.provider_done(target, began)
            cost = price.cost_micros(answer.usage.input_tokens, answer.usage.output_tokens)
            choices = tuple(restore_choice(choice, call.restorer, json_text=call.json_answer)
                            for choice in answer.choices)
            result = CallResult(choices[0].text if choices else "", answer.usage,
                                answer.finish_reason, target.provider, cost, choices=choices)
            self._finish(call, target, outcome="ok", usage=answer.usage, cost=cost,
                         attempts=sum(f.attempts for f in failures) + answer.attempts,
                         fallback=bool(failures), kept=result,
                         tool_calls=tools.tool_call_counts(answer.choices))
            return result
        raise self._failed(call, failures)

    def stream(self, call: PreparedCall) -> Iterator[StreamEvent | CallResult]:
        """Restored events as they arrive (text, tool calls whose argument fragments are
        restored as JSON, thinking unchanged), then one ``CallResult``. A fallback is taken only
        before the first event; the call is settled and audited however the stream ends, the
        caller hanging up included."""
        failures: list[ProviderError] = []
        for target, price in zip(call.targets, call.prices, strict=True):
            restoring = StreamRestoration(call.restorer, json_text=call.json_answer)
            finished: Finished | None = None
            error: ProviderError | None = None
            fell_back = False
            provider_events = self._timed_stream(call, target)
            try:
                for event in provider_events:
                    if isinstance(event, Finished):
                        finished = event
                        continue
                    yield from restoring.feed(event)
                yield from restoring.flush()
            except ProviderError as exc:
                fell_back = restoring.received == 0
                if fell_back:
                    failures.append(exc)
                else:
                    error = exc
            finally:  # also when the caller hangs up (GeneratorExit at a yield)
                provider_events.close()  # the provider's stream at once, and its time counted
                if not fell_back:
                    self._finish_stream(call, target, price, failures, restoring, finished,
                                        error)
            if fell_back:
                continue
            if error is not None or finished is None:
                raise ProvidersFailed(f"The answer was cut short: {error or 'no end of stream'}")
            yield CallResult("", finished.usage, finished.finish_reason, target.provider,
                             price.cost_micros(finished.usage.input_tokens,
                                               finished.usage.output_tokens))
            return
        raise self._failed(call, failures)

    def _timed_stream(self, call: PreparedCall, target: Target
                      ) -> Generator[StreamEvent, None, None]:
        """The adapter's events, the time spent waiting for each counted as the provider's."""
        began = time.perf_counter()
        error: BaseException | None = None
        adapter = self.adapters(target.provider)
        events = (bridge.iterate(adapter.astream(call.chat, target))
                  if bridge.active() and hasattr(adapter, "astream")
                  else adapter.stream(call.chat, target))
        try:
            while True:
                tick = time.perf_counter()
                try:
                    event = next(events)
                except StopIteration:
                    return
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    call.provider_seconds += time.perf_counter() - tick
                yield event
        finally:
            getattr(events, "close", lambda: None)()
            call.attempts.append(tracing.ProviderAttempt(
                target.provider, target.model, began, time.perf_counter(),
                None if error is None else type(error).__name__))

    def _finish_stream(self, call: PreparedCall, target: Target, price: pricing.Price,
                       failures: list[ProviderError], restoring: StreamRestoration,
                       finished: Finished | None, error: ProviderError | None) -> None:
        if finished is not None:
            usage, attempts = finished.usage, finished.attempts
            cost = price.cost_micros(usage.input_tokens, usage.output_tokens)
        else:  # cut short: the provider may have generated (and billed) up to the worst case,
            # so the reservation is charged in full, on the side of the cap
            usage = Usage(pricing.request_token_bound(call.redacted),
                          pricing.estimate_tokens(restoring.received))
            attempts, cost = (error.attempts if error else 1), call.reserved_micros
        outcome = "error" if error else ("ok" if finished else "cut short")
        self._finish(call, target, outcome=outcome, usage=usage, cost=cost,
                     attempts=sum(f.attempts for f in failures) + attempts,
                     fallback=bool(failures), error=str(error) if error else None,
                     tool_calls=dict(restoring.tool_calls),
                     finish_reason=finished.finish_reason if finished else None)

    # -- embeddings and token counts -------------------------------------------------------

    def embed(self, request: EmbeddingRequest, *, endpoint_kind: str,
              rate_limit: RateLimit | None = None) -> EmbeddingResult:
        """``admit``, the reservation (the input's token bound at the input price), the
        OpenAI-shaped routes in order, settlement and the call's audit event."""
        started = time.perf_counter() if self.started is None else self.started
        month = spend.month_of(self.clock())
        with self._audited_refusals(request.model, endpoint_kind), \
                self.ctx.session() as s, s.begin():
            admitted = self.admit(config.snapshot(s, self.ctx), request, rate_limit=rate_limit)
            admitted_at = time.perf_counter()
            redacted = admitted.redacted
            if not isinstance(redacted, RedactedEmbedding):
                raise TypeError("an embeddings request redacts to a RedactedEmbedding")
            prices = admitted.prices
            tokens = pricing.prompt_token_bound(redacted.inputs)
            reserved = max(price.cost_micros(tokens, 0) for price in prices)
            call = self._reserve(s, admitted.cfg, month, admitted.chain, reserved, redacted,
                                 admitted.restorer, endpoint_kind="embeddings", stream=False,
                                 started=started)
            if call is None:
                raise spend.SpendCapReached(spend.reservation_message(
                    s, month=month, cap_micros=admitted.cfg.monthly_cap_micros,
                    reserved_micros=reserved, prompt_tokens=tokens, prices=prices, answers=1))
        return self._embed(call.admitted(admitted_at), redacted)

    def _embed(self, call: PreparedCall, redacted: RedactedEmbedding) -> EmbeddingResult:
        failures: list[ProviderError] = []
        for target, price in zip(call.targets, call.prices, strict=True):
            adapter = self.adapters(target.provider)
            began = time.perf_counter()
            try:
                answer = _on_loop_or_not(adapter, "embed", redacted, target)
            except ProviderError as exc:
                call.provider_done(target, began, exc)
                failures.append(exc)
                continue
            except Exception as exc:
                call.provider_done(target, began, exc)
                self._finish(call, target, outcome="error", usage=Usage(0, 0),
                             cost=call.reserved_micros, attempts=1, fallback=bool(failures),
                             error=f"unexpected {type(exc).__name__}")
                raise
            call.provider_done(target, began)
            cost = price.cost_micros(answer.usage.input_tokens, 0)
            self._finish(call, target, outcome="ok", usage=answer.usage, cost=cost,
                         attempts=sum(f.attempts for f in failures) + answer.attempts,
                         fallback=bool(failures))
            return EmbeddingResult(answer.vectors, answer.usage, target.provider, cost)
        raise self._failed(call, failures)

    def count_tokens(self, request: ChatRequest, *, endpoint_kind: str,
                     rate_limit: RateLimit | None = None) -> int:
        """The prompt's tokens, after ``admit`` (a request a call would be refused is refused
        here the same way; it counts as a request, and generates nothing): counted by the
        provider (redacted first) when the model's first route that can take the request is
        an Anthropic one, else estimated here (about four characters a token, images at their
        bound). No spend; audited as a call of endpoint ``count_tokens``."""
        with self._audited_refusals(request.model, endpoint_kind), \
                self.ctx.session() as s, s.begin():
            admitted = self.admit(config.snapshot(s, self.ctx), request, rate_limit=rate_limit,
                                  generates=False)
        redacted, entry = admitted.chat, admitted.chain[0]
        counted = "estimate"
        tokens = pricing.request_token_bound(redacted) // 4 + 1
        adapter = self.adapters(entry.provider)
        counter = getattr(adapter, "count_tokens", None)
        if entry.provider == "anthropic" and counter is not None:
            try:
                tokens, counted = _on_loop_or_not(adapter, "count_tokens", redacted,
                                                  entry.target), "provider"
            except ProviderError as exc:
                failed = (TenantInvalidInput if exc.status in REFUSED_AS_INVALID
                          else ProvidersFailed)
                raise failed(
                    f"The model {shown(request.model)} could not count the tokens: "
                    f"{exc.provider} failed after {exc.attempts} attempt"
                    f"{'' if exc.attempts == 1 else 's'}"
                    + (f" (HTTP {exc.status})" if exc.status else "") + ".") from None
        with self.ctx.session() as s, s.begin():
            audit.record(s, GatewayEvents.TOKENS_COUNTED, actor=self.ctx.actor,
                         target_type="model", target_id=request.model[:64],
                         details={"api_key_id": self.api_key_id, "provider": entry.provider,
                                  "counted": counted, "tokens": tokens,
                                  "redactions": dict(redacted.counts)})
        return int(tokens)

    def _failed(self, call: PreparedCall, failures: list[ProviderError]) -> TenantError:
        detail = "; ".join(str(f) for f in failures) or "no provider was configured"
        self._finish(call, call.targets[-1] if call.targets else None, outcome="error",
                     usage=Usage(0, 0), cost=0, attempts=sum(f.attempts for f in failures),
                     fallback=len(failures) > 1, error=detail)
        told = "; ".join(f"{f.provider} failed after {f.attempts} attempt"
                         f"{'' if f.attempts == 1 else 's'}"
                         + (f" (last: HTTP {f.status})" if f.status else "")
                         for f in failures) or "no provider was configured"
        if failures and all(f.status in REFUSED_AS_INVALID for f in failures):
            # every provider said the request itself is wrong: the caller's to fix, not ours
            return TenantInvalidInput(
                f"The provider refused this request as invalid ({told}); check the fields "
                "sent against what the model accepts. The tenant's gateway page shows the "
                "details.")
        return ProvidersFailed(f"The model {shown(call.model_name)} could not answer: {told}. "
                               "The tenant's gateway page shows the details.")

    # -- after the provider ----------------------------------------------------------------

    def _finish(self, call: PreparedCall, target: Target | None, *, outcome: str, usage: Usage,
                cost: int, attempts: int, fallback: bool, error: str | None = None,
                kept: CallResult | None = None, tool_calls: dict[str, int] | None = None,
                finish_reason: str | None = None) -> None:
        latency_ms = round((time.perf_counter() - call.started) * 1000)
        details: dict[str, Any] = {
            "model": call.model_name, "provider": target.provider if target else None,
            "provider_model": target.model if target else None,
            "tokens_in": usage.input_tokens, "tokens_out": usage.output_tokens,
            "cost_micros": cost, "redactions": dict(call.redacted.counts),
            "latency_ms": latency_ms, "outcome": outcome, "attempts": attempts,
            "fallback": fallback, "api_key_id": self.api_key_id}
        if isinstance(call.redacted, RedactedRequest):
            details["stream"] = call.redacted.stream
            if call.redacted.tools:
                details["tools_offered"] = len(call.redacted.tools)
        else:
            details["inputs"] = len(call.redacted.inputs)
        if tool_calls:  # names and counts, never arguments
            details["tool_calls"] = dict(sorted(tool_calls.items())[:50])
        values: dict[str, Any] = {
            "status": outcome, "cost_micros": cost, "tokens_in": usage.input_tokens,
            "tokens_out": usage.output_tokens, "latency_ms": latency_ms, "attempts": attempts,
            "error": error[:300] if error else None}
        if target is not None:
            values.update(provider=target.provider, provider_model=target.model)
        if kept is not None and call.idempotency_key is not None:
            table, column = KEPT_ANSWER
            values["answer_sealed"] = self.ctx.sealer.seal(
                json.dumps({"text": kept.text, "finish_reason": kept.finish_reason}),
                table=table, column=column, row_key=call.call_id)
        # tx 2, group-committed with the tenant's other calls finishing meanwhile in this
        # process (settlement.py); returns once this call's event is durably committed
        settling = time.perf_counter()
        settlement.writer_for(self.ctx.session_factory).submit(settlement.Settlement(
            call_id=call.call_id, month=call.month, reserved_micros=call.reserved_micros,
            cost_micros=cost, values=values, shard=call.shard,
            event=audit.prepare(GatewayEvents.CALL, actor=self.ctx.actor, target_type="model",
                                target_id=call.model_name[:64], details=details)))
        call.stages["settlement"] = time.perf_counter() - settling
        self._observe(call, target, outcome=outcome, usage=usage, cost=cost,
                      finish_reason=finish_reason or (kept.finish_reason if kept else None))

    def _observe(self, call: PreparedCall, target: Target | None, *, outcome: str, usage: Usage,
                 cost: int, finish_reason: str | None) -> None:
        """The call's metrics and (when tracing is on) its spans: names, counts and times."""
        overhead = time.perf_counter() - call.started - call.provider_seconds
        metrics.gateway_call(
            tenant=self.ctx.slug, provider=target.provider if target else None,
            endpoint=call.endpoint_kind, outcome=outcome, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens, cost_micros=cost,
            redactions=call.redacted.counts, overhead=overhead,
            provider_seconds=call.provider_seconds, stages=call.stages)
        if tracing.enabled():
            chat = isinstance(call.redacted, RedactedRequest)
            tracing.record_call(
                operation="chat" if chat else "embeddings", model=call.model_name,
                tenant=self.ctx.slug, endpoint=call.endpoint_kind, outcome=outcome,
                started=call.started, attempts=call.attempts, input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens, finish_reason=finish_reason,
                cost_micros=cost, redactions=call.redacted.counts, overhead=overhead,
                stream=call.chat.stream if chat else False,
                max_tokens=call.chat.max_tokens if chat else None)


def restore_choice(choice: Choice, restorer: Restorer, *, json_text: bool) -> Choice:
    """A choice with the originals back: in text (escaped as JSON string content when the
    answer is structured output) and in tool-call arguments (always JSON); thinking blocks are
    left as the provider signed them."""
    blocks: list[AnswerBlock] = []
    for block in choice.content:
        if isinstance(block, Text):
            blocks.append(Text(restorer.restore_json(block.text) if json_text
                               else restorer.restore(block.text)))
        elif isinstance(block, ToolCall):
            blocks.append(replace(block, arguments=restorer.restore_json(block.arguments)))
        else:
            blocks.append(block)
    return replace(choice, content=tuple(blocks))


class StreamRestoration:
    """Restores a streamed answer event by event. Text and each tool call's arguments have a
    ``StreamRestorer`` of their own (a placeholder may be split across fragments); the
    fragment held back at the end of one is flushed before an event of another block goes
    out, so blocks never interleave."""

    def __init__(self, restorer: Restorer, *, json_text: bool) -> None:
        self._restorer, self._json_text = restorer, json_text
        self._current: tuple[str, int] | None = None  # ("text", 0) or ("tool", index)
        self._pending: StreamRestorer | None = None
        self.received = 0  # content events from the provider
        self.tool_calls: Counter[str] = Counter()

    def feed(self, event: StreamEvent) -> Iterator[StreamEvent]:
        self.received += 1
        if isinstance(event, TextDelta):
            pending = yield from self._switch(("text", 0), json=self._json_text)
            if text := pending.feed(event.text):
                yield TextDelta(text)
        elif isinstance(event, ToolCallStart):
            yield from self._switch(("tool", event.index), json=True)
            self.tool_calls[event.name] += 1
            yield event
        elif isinstance(event, ToolCallDelta):
            pending = yield from self._switch(("tool", event.index), json=True)
            if arguments := pending.feed(event.arguments):
                yield ToolCallDelta(event.index, arguments)
        else:  # thinking and its signature: as the provider sent them
            yield from self.flush()
            yield event

    def _switch(self, block: tuple[str, int], *,
                json: bool) -> Generator[StreamEvent, None, StreamRestorer]:
        """Make ``block`` the current one (flushing the one before); its restorer."""
        if self._current != block or self._pending is None:
            yield from self.flush()
            self._current, self._pending = block, self._restorer.stream(json=json)
        return self._pending

    def flush(self) -> Iterator[StreamEvent]:
        if self._pending is not None and self._current is not None:
            tail = self._pending.flush()
            if tail:
                kind, index = self._current
                yield TextDelta(tail) if kind == "text" else ToolCallDelta(index, tail)
        self._current, self._pending = None, None


def release_answer(s: Session, key: str) -> None:
    """Clear the answer kept for ``key``: call it in the transaction that records what the job
    step made of the answer."""
    s.execute(update(GatewayCall).where(GatewayCall.idempotency_key == key,
                                        GatewayCall.answer_sealed.is_not(None))
              .values(answer_sealed=None))


def forget_kept_answers(s: Session, *, older_than: timedelta = KEEP_ANSWERS_FOR,
                        now: datetime | None = None) -> int:
    """Clear kept answers no job step released (its job failed for good, or was cancelled).
    Only keyed calls keep answers: the condition on the key lets Postgres use its partial
    index instead of reading every call."""
    cutoff = (now or _now()) - older_than
    cleared = s.execute(update(GatewayCall).where(GatewayCall.idempotency_key.is_not(None),
                                                  GatewayCall.answer_sealed.is_not(None),
                                                  GatewayCall.created_at < cutoff)
                        .values(answer_sealed=None).returning(GatewayCall.id))
    return len(cleared.all())

"""The gateway's call path, inside one tenant (DESIGN.md, "Gateway"):

    allowlist → redact → reserve spend → provider (retries inside the adapter; fallbacks in
    order) → restore → settle spend → audit

``prepare`` does everything before the provider in one transaction that commits the
reservation, so concurrent calls see it; ``complete`` and ``stream`` call the providers, and
``_finish`` settles and records the one audit event of the call in a second transaction.
Refusals (a model off the allowlist, the spend cap) are audited in their own transaction and
raised as ``TenantError``s with a sentence for the caller. Prompt and answer text are never
logged or audited: only counts. Neither is stored either, with one exception:
``complete_once``, the platform's own calls for a job step, keeps the restored answer sealed
under the tenant's key in the call's row, settled in the same transaction, so that a retried
step is answered from it instead of paying the model twice; the step clears it
(``release_answer``) in the transaction that records what it made of it, and answers nobody
released are cleared after a day (``forget_kept_answers``)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError, TenantInvalidInput
from tenant_runtime.gateway import config, pricing, spend
from tenant_runtime.gateway.egress import EgressRefused, check_route
from tenant_runtime.gateway.messages import ChatRequest
from tenant_runtime.gateway.names import shown
from tenant_runtime.gateway.providers.base import (
    Adapter,
    Finished,
    ProviderError,
    Target,
    TextDelta,
    Usage,
)
from tenant_runtime.gateway.providers.registry import adapter_for
from tenant_runtime.models import GatewayCall
from tenant_runtime.redaction import RedactedRequest, Restorer, redact_request


class GatewayEvents:
    CALL = "gateway.call"
    MODEL_REFUSED = "gateway.model_refused"  # a scope denial
    SPEND_CAP_REACHED = "gateway.spend_cap_reached"
    SETTINGS_CHANGED = "gateway.settings_changed"
    ROUTE_ADDED = "gateway.route_added"
    ROUTE_CHANGED = "gateway.route_changed"
    ROUTE_DELETED = "gateway.route_deleted"
    PRICE_SET = "gateway.price_set"
    PRICE_REMOVED = "gateway.price_removed"


# providers whose wire format takes the system prompt apart from the conversation and refuses
# a conversation with no turn: a system-only request is refused before any spend or call
NEEDS_A_TURN = frozenset({"anthropic", "bedrock"})


class ModelRefused(TenantError):
    status_code = 403
    default_message = "This model is not on the tenant's allowlist."


class ProvidersFailed(TenantError):
    status_code = 502
    default_message = "The model provider could not answer."


@dataclass
class PreparedCall:
    call_id: int
    month: date
    model_name: str
    redacted: RedactedRequest
    restorer: Restorer = field(repr=False)  # the placeholder map: memory only, this call only
    targets: list[Target] = field(repr=False)
    prices: list[pricing.Price]
    reserved_micros: int
    started: float
    idempotency_key: str | None = None  # set: the answer is kept, sealed, until released


@dataclass(frozen=True)
class CallResult:
    text: str  # restored
    usage: Usage
    finish_reason: str
    provider: str
    cost_micros: int
    replayed: bool = False  # the kept answer of an earlier attempt: no call, no charge


KEPT_ANSWER = ("gateway_calls", "answer_sealed")  # the sealed answer's table and column
KEEP_ANSWERS_FOR = timedelta(days=1)


def _now() -> datetime:
    return datetime.now(UTC)


class Gateway:
    """One tenant's gateway. ``adapters`` maps a provider name to its adapter (the registry by
    default); ``endpoint_kind`` records which drop-in API the call came through."""

    def __init__(self, ctx: TenantContext, *, api_key_id: str | None = None,
                 adapters: Callable[[str], Adapter] = adapter_for,
                 clock: Callable[[], datetime] = _now) -> None:
        self.ctx, self.api_key_id, self.adapters, self.clock = ctx, api_key_id, adapters, clock

    # -- before the provider -------------------------------------------------------------

    def prepare(self, request: ChatRequest, *, endpoint_kind: str,
                rate_limit: Callable[[int, int], None] | None = None,
                idempotency_key: str | None = None) -> PreparedCall:
        """Allowlist, redaction and the spend reservation, committed together. ``rate_limit``
        is called with the tenant's requests and tokens per minute first, and raises to
        refuse. ``idempotency_key``: see ``complete_once``."""
        started = time.perf_counter()
        month = spend.month_of(self.clock())
        with self.ctx.session() as s, s.begin():
            cfg = config.snapshot(s, self.ctx)
            if rate_limit is not None:
                rate_limit(cfg.requests_per_minute, cfg.tokens_per_minute)
            if request.model not in cfg.allowed:
                refusal: TenantError = ModelRefused(
                    f"The model {shown(request.model)} is not on this tenant's allowlist; an "
                    "Owner or Admin can allow it on the tenant's gateway page.")
            else:
                redacted, restorer = redact_request(request, cfg.profile)
                chain, egress_refusals, untranslatable = [], [], []
                turns = any(m.role != "system" for m in request.messages)
                for entry in cfg.chains[request.model]:
                    if not turns and entry.provider in NEEDS_A_TURN:
                        untranslatable.append(entry.provider)
                        continue
                    try:
                        check_route(self.ctx.egress, provider=entry.provider,
                                    endpoint=entry.endpoint, has_credential=entry.has_credential)
                        chain.append(entry)
                    except EgressRefused as exc:
                        egress_refusals.append(f"{entry.model_name}: {exc.message}")
                if not chain and untranslatable and not egress_refusals:
                    raise TenantInvalidInput(
                        f"The model {shown(request.model)} is served by "
                        f"{' and '.join(sorted(set(untranslatable)))}, which needs at least one "
                        "user or assistant message; this request has only system messages. "
                        "Add the user's message.")
                if not chain:
                    raise ProvidersFailed(f"The model {shown(request.model)} cannot be called: "
                                          + " ".join(egress_refusals))
                prices = [entry.price for entry in chain]
                reserved = self._worst_case(redacted, prices)
                first = chain[0].target
                call_id = spend.reserve_call(
                    s, month=month, amount_micros=reserved, cap_micros=cfg.monthly_cap_micros,
                    call={"api_key_id": self.api_key_id, "model_name": request.model,
                          "provider": first.provider, "provider_model": first.model,
                          "endpoint_kind": endpoint_kind, "stream": request.stream,
                          "redactions": dict(redacted.counts),
                          "idempotency_key": idempotency_key})
                if call_id is not None:
                    return PreparedCall(call_id, month, request.model, redacted, restorer,
                                        [entry.target for entry in chain], prices, reserved,
                                        started, idempotency_key)
                refusal = spend.SpendCapReached(spend.cap_message(cfg.monthly_cap_micros, month))
        self._refused(refusal, request, endpoint_kind)
        raise refusal

    @staticmethod
    def _worst_case(redacted: RedactedRequest, prices: list[pricing.Price]) -> int:
        tokens_in = pricing.prompt_token_bound(m.content for m in redacted.messages)
        return max(price.cost_micros(tokens_in, redacted.max_tokens) for price in prices)

    def _refused(self, refusal: TenantError, request: ChatRequest, endpoint_kind: str) -> None:
        event = (GatewayEvents.MODEL_REFUSED if isinstance(refusal, ModelRefused)
                 else GatewayEvents.SPEND_CAP_REACHED)
        with self.ctx.session() as s, s.begin():
            listed = config.route_for(s, request.model) is not None
            # a name that is no route of the tenant's could be anything a caller typed (an
            # e-mail address, say): the chain keeps only its digest
            name = request.model if listed else "unlisted:" + hashlib.sha256(
                request.model.encode("utf-8", "replace")).hexdigest()[:16]
            audit.record(s, event, actor=self.ctx.actor, target_type="model",
                         target_id=name[:64],
                         details={"api_key_id": self.api_key_id, "endpoint": endpoint_kind})

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
            try:
                answer = self.adapters(target.provider).complete(call.redacted, target)
            except ProviderError as exc:
                failures.append(exc)
                continue
            except Exception as exc:  # not the provider's answer: still settle, then raise
                self._finish(call, target, outcome="error", usage=Usage(0, 0),
                             cost=call.reserved_micros, attempts=1, fallback=bool(failures),
                             error=f"unexpected {type(exc).__name__}")
                raise
            cost = price.cost_micros(answer.usage.input_tokens, answer.usage.output_tokens)
            result = CallResult(call.restorer.restore(answer.text), answer.usage,
                                answer.finish_reason, target.provider, cost)
            self._finish(call, target, outcome="ok", usage=answer.usage, cost=cost,
                         attempts=sum(f.attempts for f in failures) + answer.attempts,
                         fallback=bool(failures), kept=result)
            return result
        raise self._failed(call, failures)

    def stream(self, call: PreparedCall) -> Iterator[str | CallResult]:
        """Restored text as it arrives, then one ``CallResult``. A fallback is taken only
        before the first text; the call is settled and audited however the stream ends, the
        caller hanging up included."""
        failures: list[ProviderError] = []
        for target, price in zip(call.targets, call.prices, strict=True):
            restoring, received, finished = call.restorer.stream(), 0, None
            error: ProviderError | None = None
            fell_back = False
            try:
                for event in self.adapters(target.provider).stream(call.redacted, target):
                    if isinstance(event, TextDelta):
                        received += len(event.text)
                        if text := restoring.feed(event.text):
                            yield text
                    elif isinstance(event, Finished):
                        finished = event
                if tail := restoring.flush():
                    yield tail
            except ProviderError as exc:
                fell_back = received == 0
                if fell_back:
                    failures.append(exc)
                else:
                    error = exc
            finally:  # also when the caller hangs up (GeneratorExit at a yield)
                if not fell_back:
                    self._finish_stream(call, target, price, failures, received, finished,
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

    def _finish_stream(self, call: PreparedCall, target: Target, price: pricing.Price,
                       failures: list[ProviderError], received: int, finished: Finished | None,
                       error: ProviderError | None) -> None:
        if finished is not None:
            usage, attempts = finished.usage, finished.attempts
            cost = price.cost_micros(usage.input_tokens, usage.output_tokens)
        else:  # cut short: the provider may have generated (and billed) up to the worst case,
            # so the reservation is charged in full, on the side of the cap
            usage = Usage(pricing.prompt_token_bound(m.content for m in call.redacted.messages),
                          pricing.estimate_tokens(received))
            attempts, cost = (error.attempts if error else 1), call.reserved_micros
        outcome = "error" if error else ("ok" if finished else "cut short")
        self._finish(call, target, outcome=outcome, usage=usage, cost=cost,
                     attempts=sum(f.attempts for f in failures) + attempts,
                     fallback=bool(failures), error=str(error) if error else None)

    def _failed(self, call: PreparedCall, failures: list[ProviderError]) -> ProvidersFailed:
        detail = "; ".join(str(f) for f in failures) or "no provider was configured"
        self._finish(call, call.targets[-1] if call.targets else None, outcome="error",
                     usage=Usage(0, 0), cost=0, attempts=sum(f.attempts for f in failures),
                     fallback=len(failures) > 1, error=detail)
        told = "; ".join(f"{f.provider} failed after {f.attempts} attempt"
                         f"{'' if f.attempts == 1 else 's'}"
                         + (f" (last: HTTP {f.status})" if f.status else "")
                         for f in failures) or "no provider was configured"
        return ProvidersFailed(f"The model {shown(call.model_name)} could not answer: {told}. "
                               "The tenant's gateway page shows the details.")

    # -- after the provider ----------------------------------------------------------------

    def _finish(self, call: PreparedCall, target: Target | None, *, outcome: str, usage: Usage,
                cost: int, attempts: int, fallback: bool, error: str | None = None,
                kept: CallResult | None = None) -> None:
        latency_ms = round((time.perf_counter() - call.started) * 1000)
        details: dict[str, Any] = {
            "model": call.model_name, "provider": target.provider if target else None,
            "provider_model": target.model if target else None,
            "tokens_in": usage.input_tokens, "tokens_out": usage.output_tokens,
            "cost_micros": cost, "redactions": dict(call.redacted.counts),
            "latency_ms": latency_ms, "outcome": outcome, "attempts": attempts,
            "fallback": fallback, "stream": call.redacted.stream, "api_key_id": self.api_key_id}
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
        with self.ctx.session() as s, s.begin():
            # one statement in the usual case: the call is still reserved, settle it
            if not spend.settle_call(s, call_id=call.call_id, month=call.month,
                                     reserved_micros=call.reserved_micros, cost_micros=cost,
                                     values=values):
                # the sweeper charged it in full meanwhile: correct to the real cost
                charged = s.execute(select(GatewayCall.cost_micros).where(
                    GatewayCall.id == call.call_id).with_for_update()).scalar()
                if charged is not None:
                    spend.settle(s, month=call.month, reserved_micros=0,
                                 cost_micros=cost - charged)
                    s.execute(update(GatewayCall).where(GatewayCall.id == call.call_id)
                              .values(**values))
            audit.record(s, GatewayEvents.CALL, actor=self.ctx.actor, target_type="model",
                         target_id=call.model_name[:64], details=details)


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

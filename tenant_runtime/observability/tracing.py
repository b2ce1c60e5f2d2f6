"""OpenTelemetry traces of gateway calls, off unless ``MAGISTRATE_OTLP_ENDPOINT`` is set.

One span per call that reached a provider, named ``{gen_ai.operation.name}
{gen_ai.request.model}`` with the GenAI semantic conventions' attributes
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/), and one child span per
provider attempt. The spans are made when the call has finished, from the times it recorded,
so a call pays nothing for tracing while it runs and nothing at all when tracing is off.

Only names, counts and times are recorded: never prompt or answer text, tool arguments, or
any value the caller chose other than an allowlisted model name (the tenant's own route name).
The ``gen_ai.input.messages`` / ``gen_ai.output.messages`` attributes of the conventions are
opt-in there, and never set here."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

# gen_ai.provider.name values of the conventions, for our provider names
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic",
                  "azure-openai": "azure.ai.openai", "bedrock": "aws.bedrock",
                  "on-prem": "openai"}  # an OpenAI-compatible server
TRACER_NAME = "magistrate.gateway"

_tracer: Tracer | None = None


@dataclass(frozen=True)
class ProviderAttempt:
    """One adapter call: which provider and model, when (``perf_counter`` seconds), and how
    it ended."""

    provider: str
    model: str
    started: float
    ended: float
    error: str | None = None  # the error's type name


def use(provider: TracerProvider | None) -> None:
    """Trace gateway calls with ``provider`` (None: stop tracing)."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(TRACER_NAME)


def enabled() -> bool:
    return _tracer is not None


def configure(endpoint: str | None, *, service_name: str, sample_ratio: float = 1.0) -> None:
    """Export spans over OTLP/HTTP (protobuf) to ``endpoint`` in batches, off the request
    path; no endpoint: no tracing."""
    if not endpoint:
        use(None)
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}),
                                 sampler=ParentBasedTraceIdRatio(sample_ratio))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use(provider)


def _ns(moment: float, now_perf: float, now_ns: int) -> int:
    """A ``perf_counter`` moment as Unix nanoseconds."""
    return now_ns - int((now_perf - moment) * 1e9)


def record_call(*, operation: str, model: str, tenant: str, endpoint: str, outcome: str,
                started: float, attempts: Sequence[ProviderAttempt], input_tokens: int,
                output_tokens: int, finish_reason: str | None, cost_micros: int,
                redactions: Mapping[str, int], overhead: float, stream: bool,
                max_tokens: int | None = None) -> None:
    """The spans of one finished call (nothing when tracing is off)."""
    tracer = _tracer
    if tracer is None:
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

    now_perf, now_ns = time.perf_counter(), time.time_ns()
    answered = attempts[-1] if attempts else None
    attributes: dict[str, str | int | float | bool | list[str]] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "magistrate.tenant": tenant,
        "magistrate.endpoint": endpoint,
        "magistrate.outcome": outcome,
        "magistrate.cost_micros": cost_micros,
        "magistrate.redactions": sum(redactions.values()),
        "magistrate.overhead_ms": round(overhead * 1000, 3),
        "magistrate.stream": stream,
    }
    if answered is not None:
        attributes["gen_ai.provider.name"] = PROVIDER_NAMES.get(answered.provider, "openai")
        attributes["gen_ai.response.model"] = answered.model
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [finish_reason]
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    span = tracer.start_span(f"{operation} {model}", kind=SpanKind.CLIENT,
                             start_time=_ns(started, now_perf, now_ns), attributes=attributes)
    if outcome != "ok":
        span.set_attribute("error.type", outcome.replace(" ", "_"))
        span.set_status(Status(StatusCode.ERROR))
    context = set_span_in_context(span)
    for attempt in attempts:
        child = tracer.start_span(
            f"{operation} {attempt.model}", kind=SpanKind.CLIENT, context=context,
            start_time=_ns(attempt.started, now_perf, now_ns),
            attributes={"gen_ai.operation.name": operation,
                        "gen_ai.provider.name": PROVIDER_NAMES.get(attempt.provider, "openai"),
                        "gen_ai.request.model": attempt.model})
        if attempt.error is not None:
            child.set_attribute("error.type", attempt.error)
            child.set_status(Status(StatusCode.ERROR))
        child.end(end_time=_ns(attempt.ended, now_perf, now_ns))
    span.end(end_time=now_ns)

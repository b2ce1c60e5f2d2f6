"""Retries for provider calls: three attempts in all, exponential backoff with full jitter,
``Retry-After`` honoured (up to a cap), and one clear sentence when the call fails for good.

What is retried: 408, 429 and every 5xx (Anthropic's 529 "overloaded" included), timeouts and
connection errors. What is not: every other status (400, 401, 403, 404, 422, ...), and a
``Retry-After`` longer than ``RetryPolicy.max_retry_after`` (the call fails at once, saying so,
rather than hold a gateway thread that long). The SDKs' own retries are off (``max_retries=0``,
botocore ``total_max_attempts=1``), so nothing is retried twice.

Each adapter gives a *classifier* that turns an SDK exception into a ``Failure`` (the words and
whether to retry), or ``None`` for an exception that is not a provider failure (a bug: it
propagates untouched). Final failures become ``ProviderError``; their detail is built from
statuses, error codes and our own words, never from the SDK's message or repr, so it holds no
traceback, no prompt text and no credential.

Streams are retried only until their first event: once text has been passed on to the caller,
a failure raises ``ProviderError`` at once (a retry would repeat text the caller already has).

``call`` and ``stream`` serve the sync calls, ``acall`` and ``astream`` the async ones, on the
event loop (their waits are ``RetryPolicy.asleep``); both pairs take their decisions from one
copy of the rules (``_failure``, ``_retrying_rules``, ``_final``, ``_broke_off``).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from tenant_runtime import outbound
from tenant_runtime.gateway.egress import RedirectRefused, shown_location
from tenant_runtime.gateway.providers.base import (
    Finished,
    ProviderError,
    StreamEvent,
    Target,
    require_redacted,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """One failed attempt, in words for an operator."""

    detail: str  # one sentence, no SDK text
    retryable: bool
    status: int | None = None
    retry_after: float | None = None  # seconds the provider asked us to wait


Classifier = Callable[[BaseException], Failure | None]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay: float = 0.25  # the first backoff is up to this, doubling each time
    max_delay: float = 4.0
    max_retry_after: float = 20.0
    sleep: Callable[[float], None] = time.sleep

    async def asleep(self, seconds: float) -> None:
        """The async calls' wait: ``anyio.sleep``, or a policy's own ``sleep`` (a test's
        recorder, which must not block: it is called on the event loop)."""
        if self.sleep is time.sleep:
            await anyio.sleep(seconds)
        else:
            self.sleep(seconds)


# -- failures, in words ------------------------------------------------------------------------

RETRYABLE_STATUSES = frozenset({408, 429})


def status_failure(status: int, code: str | None = None,
                   retry_after: float | None = None) -> Failure:
    """``HTTP 503 from the provider (Service Unavailable)``; ``code`` is the provider's error
    type or code (``rate_limit_exceeded``, ``ThrottlingException``), never its message."""
    phrase = status_phrase(status)
    shown = _clean(code)
    if shown and shown.lower() != phrase.lower():
        phrase = f"{phrase}, {shown}"
    return Failure(f"HTTP {status} from the provider ({phrase})",
                   retryable=status in RETRYABLE_STATUSES or status >= 500,
                   status=status, retry_after=retry_after)


def timeout_failure(seconds: float) -> Failure:
    return Failure(f"timed out after {seconds:g} s", retryable=True)


def refused_failure(exc: BaseException) -> Failure | None:
    """Any adapter's call the egress policy stopped (``tenant_runtime.outbound``): a redirect
    answer, or an address the policy refuses at connect time. Not retried: it would be refused
    again."""
    refused = outbound.refusal(exc)
    if isinstance(refused, RedirectRefused):
        return Failure(f"the provider answered with a redirect to "
                       f"{shown_location(refused.location)}, which Magistrate does not follow",
                       retryable=False, status=refused.status)
    if refused is not None:
        return Failure(f"the egress policy refused the connection: {refused.message}",
                       retryable=False)
    return None


def connect_failure(endpoint: str) -> Failure:
    return Failure(f"could not connect to {shown_endpoint(endpoint)}", retryable=True)


def dropped_failure() -> Failure:
    return Failure("the connection closed before the answer was complete", retryable=True)


def httpx_failure(cause: BaseException | None, endpoint: str, timeout: float) -> Failure:
    """A failure below HTTP: httpx2's exceptions, which the openai and anthropic SDKs wrap."""
    if isinstance(cause, httpx2.ConnectTimeout | httpx2.ConnectError):
        return connect_failure(endpoint)
    if isinstance(cause, httpx2.TimeoutException):
        return timeout_failure(timeout)
    return dropped_failure()


def status_phrase(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def shown_endpoint(endpoint: str) -> str:
    """The endpoint without user info, query or fragment, so a URL cannot leak a credential."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date); header names
    lower-case."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = when.timestamp() - time.time()
        if seconds == seconds:  # not NaN
            return max(seconds, 0.0)
    return None


def _clean(code: str | None) -> str:
    if not code:
        return ""
    text = "".join(c for c in str(code) if c.isalnum() or c in "_-.:/")
    return text.split(":", 1)[0][:60]


# -- what every adapter call starts with ---------------------------------------------------------

Plan = tuple[str, RetryPolicy, Classifier]


def plan(provider: str, policy: RetryPolicy, classify: Callable[..., Failure | None],
         request: object, target: Target) -> Plan:
    """Every adapter call's first step: nothing but a redacted request goes on (``TypeError``
    otherwise); then the loops' first arguments: provider, policy and the adapter's
    ``classify`` bound to ``target``."""
    require_redacted(request)
    return provider, policy, partial(classify, target=target)


# -- the retry loops ---------------------------------------------------------------------------
# ``call`` and ``acall``, ``stream`` and ``astream`` are one logic twice over (sync, and async on
# the event loop); what they decide (which failure, whether to retry, how long to wait, the final
# sentence) is written once below and only the calling and sleeping differ.

class _AttemptFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _failure(exc: BaseException, classify: Classifier) -> _AttemptFailed | None:
    """The failed attempt ``exc`` was, or None for an exception that is not a provider failure
    (it propagates untouched)."""
    failure = refused_failure(exc) or classify(exc)
    return None if failure is None else _AttemptFailed(failure)


def _retrying_rules(policy: RetryPolicy) -> dict[str, Any]:
    """tenacity's stop, wait and retry rules for ``policy`` (for Retrying and AsyncRetrying)."""

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, _AttemptFailed) or not exc.failure.retryable:
            return False
        after = exc.failure.retry_after
        return after is None or after <= policy.max_retry_after

    backoff = wait_random_exponential(multiplier=policy.base_delay, max=policy.max_delay)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _AttemptFailed) and exc.failure.retry_after is not None:
            return exc.failure.retry_after
        return float(backoff(state))

    return {"stop": stop_after_attempt(policy.attempts), "wait": wait,
            "retry": retry_if_exception(should_retry), "reraise": True}


def call(provider: str, policy: RetryPolicy, classify: Classifier,
         fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` with retries; returns its result and the number of attempts it took."""
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return fn()
        except Exception as exc:
            if (failed := _failure(exc, classify)) is None:
                raise
            raise failed from exc

    try:
        return Retrying(sleep=policy.sleep, **_retrying_rules(policy))(attempt), attempts
    except _AttemptFailed as failed:
        raise _final(provider, attempts, failed.failure, policy) from None


async def acall(provider: str, policy: RetryPolicy, classify: Classifier,
                fn: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``await fn()`` with the retries of ``call``; waits without blocking the event loop."""
    attempts = 0

    async def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return await fn()
        except Exception as exc:
            if (failed := _failure(exc, classify)) is None:
                raise
            raise failed from exc

    retrying = AsyncRetrying(sleep=policy.asleep, **_retrying_rules(policy))
    try:
        return await retrying(attempt), attempts
    except _AttemptFailed as failed:
        raise _final(provider, attempts, failed.failure, policy) from None


def _final(provider: str, attempts: int, failure: Failure, policy: RetryPolicy) -> ProviderError:
    detail = failure.detail
    after = failure.retry_after
    if failure.retryable and after is not None and after > policy.max_retry_after:
        detail += (f"; it asked to wait {after:g} s, longer than the {policy.max_retry_after:g} s"
                   " this gateway waits")
    return ProviderError(provider, attempts, detail, status=failure.status)


def _broke_off(provider: str, attempts: int, classify: Classifier, exc: Exception) -> None:
    """For a stream that failed with ``exc`` after its first event: raise its ProviderError
    (return when ``exc`` is not a provider failure, for the caller to re-raise)."""
    failure = _ended_early(classify)(exc)
    if failure is not None:
        raise ProviderError(
            provider, attempts,
            f"the answer stream broke off after it had started ({failure.detail}); not "
            "retried, as part of the answer was already passed on",
            status=failure.status) from None


def stream(provider: str, policy: RetryPolicy, classify: Classifier,
           open_events: Callable[[], Iterator[StreamEvent]]) -> Iterator[StreamEvent]:
    """The events of ``open_events()`` (TextDeltas, then one Finished), retrying the whole call
    until its first event arrives; ``Finished.attempts`` is set here."""

    def first_event() -> tuple[StreamEvent, Iterator[StreamEvent]]:
        events = open_events()
        try:
            return next(events), events
        except BaseException:
            _close(events)
            raise

    (event, events), attempts = call(provider, policy, _ended_early(classify), first_event)
    try:
        while not isinstance(event, Finished):
            yield event
            try:
                event = next(events)
            except Exception as exc:
                _broke_off(provider, attempts, classify, exc)
                raise
        yield replace(event, attempts=attempts)
    finally:
        _close(events)


async def astream(provider: str, policy: RetryPolicy, classify: Classifier,
                  open_events: Callable[[], AsyncIterator[StreamEvent]]
                  ) -> AsyncIterator[StreamEvent]:
    """``stream`` on the event loop: the events of ``open_events()``, retried until the first
    one arrives. Closing this generator early closes the provider's stream."""

    async def first_event() -> tuple[StreamEvent, AsyncIterator[StreamEvent]]:
        events = open_events()
        try:
            return await anext(events), events
        except BaseException:
            await _aclose(events)
            raise

    (event, events), attempts = await acall(provider, policy, _ended_early(classify),
                                            first_event)
    try:
        while not isinstance(event, Finished):
            yield event
            try:
                event = await anext(events)
            except Exception as exc:
                _broke_off(provider, attempts, classify, exc)
                raise
        yield replace(event, attempts=attempts)
    finally:
        await _aclose(events)


def _ended_early(classify: Classifier) -> Classifier:
    def classify_or_ended(exc: BaseException) -> Failure | None:
        if isinstance(exc, StopIteration | StopAsyncIteration):
            return Failure("the provider ended the answer stream without finishing it",
                           retryable=True)
        return classify(exc)
    return classify_or_ended


def _close(events: Iterator[StreamEvent]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()

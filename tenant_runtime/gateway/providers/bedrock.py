"""The Amazon Bedrock adapter: the Converse API (``converse``, ``converse_stream``) through boto3.

Credentials: ``target.api_key`` is ``ACCESS_KEY_ID:SECRET_ACCESS_KEY`` (optionally
``:SESSION_TOKEN``); without it boto3's default chain applies (instance role, IRSA, env, ...).
The region is ``target.region`` or us-east-1; ``target.endpoint`` overrides the endpoint (a VPC
endpoint, or a local fake). System messages go to ``system`` (one text block each); botocore's
own retries are off (``total_max_attempts=1``: its ``max_attempts`` counts retries, not
attempts).

The request is rendered by render_bedrock.py (alternating turns, text, image bytes, toolUse,
toolResult, toolConfig) and the answer read back there. Stop reasons: end_turn and stop_sequence
are "stop", max_tokens is "length", tool_use "tool_calls", anything else (guardrail_intervened,
content_filtered, ...) "other". Streams: contentBlockDelta text is a ``TextDelta``; a
contentBlockStart toolUse opens a ``ToolCallStart`` (numbered among the answer's tool calls from
0) whose contentBlockDelta toolUse.input fragments are ``ToolCallDelta``s (a call without any has
arguments ``{}``, sent as one delta when its block stops).

boto3 is sync only: ``acomplete`` runs each attempt in a worker thread, ``astream`` the sync
stream in one (``events_in_thread``), so the event loop never waits on botocore.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import anyio.to_thread
import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from tenant_runtime import outbound
from tenant_runtime.gateway.content import Choice
from tenant_runtime.gateway.providers import render_bedrock as render
from tenant_runtime.gateway.providers import retry
from tenant_runtime.gateway.providers.base import (
    Completion,
    Finished,
    ProviderError,
    StreamEvent,
    Target,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tenant_runtime.gateway.providers.clients import ClientCache
from tenant_runtime.redaction import RedactedRequest

DEFAULT_REGION = "us-east-1"
# Error codes whose status may be missing (exceptions inside an event stream).
RETRYABLE_CODES = {"ThrottlingException": 429, "ServiceUnavailableException": 503,
                   "InternalServerException": 500, "ModelNotReadyException": 429}


class BedrockAdapter:
    provider = "bedrock"

    def __init__(self, *, clients: ClientCache, policy: retry.RetryPolicy | None = None) -> None:
        self._clients = clients
        self._policy = policy or retry.RetryPolicy()

    def complete(self, request: RedactedRequest, target: Target) -> Completion:
        how = self._retried(request, target)
        client, params = self._client(target), self._params(request, target)
        response, attempts = retry.call(*how, lambda: _checked(client.converse(**params)))
        return _completion(response, attempts)

    async def acomplete(self, request: RedactedRequest, target: Target) -> Completion:
        """``complete`` from the event loop: boto3 is sync, so each attempt runs in a worker
        thread (the client is found, or built, there too)."""
        how = self._retried(request, target)
        self._credentials(target)  # a route that cannot work fails here, as ``complete`` does
        params = self._params(request, target)

        def converse() -> dict[str, Any]:
            return _checked(self._client(target).converse(**params))

        response, attempts = await retry.acall(*how, partial(anyio.to_thread.run_sync,
                                                             converse))
        return _completion(response, attempts)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        how = self._retried(request, target)
        return retry.stream(*how, partial(self._events, self._client(target),
                                          self._params(request, target)))

    def astream(self, request: RedactedRequest, target: Target) -> AsyncIterator[StreamEvent]:
        """``stream`` from the event loop: the sync stream runs in a worker thread, which hands
        its events to the loop as they come (the loop takes all that are ready at once, with no
        thread hop per event); closed early, the sync stream is closed by that thread at its
        next event."""
        how = self._retried(request, target)
        self._credentials(target)
        params = self._params(request, target)
        return retry.astream(*how, lambda: events_in_thread(lambda: self._events(
            self._client(target), params)))

    def _retried(self, request: RedactedRequest, target: Target) -> retry.Plan:
        return retry.plan(self.provider, self._policy, classify, request, target)

    def _params(self, request: RedactedRequest, target: Target) -> dict[str, Any]:
        try:
            return render.params(request, target.model)
        except render.CannotSend as exc:
            raise ProviderError(self.provider, 0, str(exc), status=422) from None

    def _events(self, client: Any, params: dict[str, Any]) -> Iterator[StreamEvent]:
        events = client.converse_stream(**params)["stream"]
        usage: dict[str, Any] | None = None
        stop_reason = ""
        calls = 0
        open_call: int | None = None  # the tool call of the open block, until a delta arrives
        try:
            for event in events:
                if "contentBlockDelta" in event:
                    delta = event["contentBlockDelta"].get("delta", {})
                    if delta.get("text"):
                        yield TextDelta(delta["text"])
                    elif isinstance(delta.get("toolUse"), dict) and calls:
                        if delta["toolUse"].get("input"):
                            yield ToolCallDelta(calls - 1, str(delta["toolUse"]["input"]))
                            open_call = None
                elif "contentBlockStart" in event:
                    use = event["contentBlockStart"].get("start", {}).get("toolUse")
                    if isinstance(use, dict):
                        open_call = calls
                        calls += 1
                        yield ToolCallStart(open_call, str(use.get("toolUseId", "")),
                                            str(use.get("name", "")))
                elif "contentBlockStop" in event:
                    if open_call is not None:  # a call without arguments: its input is {}
                        yield ToolCallDelta(open_call, "{}")
                    open_call = None
                elif "messageStop" in event:
                    stop_reason = event["messageStop"].get("stopReason", "")
                elif "metadata" in event:
                    usage = event["metadata"].get("usage")
        finally:
            events.close()
        if not stop_reason:
            raise IncompleteAnswer("the answer stream ended without a messageStop event")
        yield Finished(_usage(usage), render.finish_reason(stop_reason), attempts=0)

    def _credentials(self, target: Target) -> tuple[str | None, str | None, str | None]:
        """The route's access key, secret key and session token (all None: boto3's chain)."""
        if not target.api_key:
            return None, None, None
        access_key, _, rest = target.api_key.partition(":")
        secret_key, _, session_token = rest.partition(":")
        if not access_key or not secret_key:
            raise ProviderError(self.provider, 0, "the route's credential must be "
                                                  "ACCESS_KEY_ID:SECRET_ACCESS_KEY")
        return access_key, secret_key, session_token

    def _client(self, target: Target) -> Any:
        access_key, secret_key, session_token = self._credentials(target)
        region = target.region or DEFAULT_REGION

        def build() -> Any:
            # A session per client: boto3's default session is not safe to share across threads.
            session = boto3.session.Session(
                aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                aws_session_token=session_token or None, region_name=region)
            return outbound.aws_client(
                session, "bedrock-runtime", target.egress, endpoint_url=target.endpoint,
                config=botocore.config.Config(
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=target.timeout_seconds,
                    read_timeout=target.timeout_seconds))

        return self._clients.get(target, build)


async def events_in_thread(open_events: Callable[[], Iterator[StreamEvent]]
                     ) -> AsyncIterator[StreamEvent]:
    """The events of ``open_events()``, iterated in a worker thread."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[tuple[StreamEvent | None, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def hand_over(item: tuple[StreamEvent | None, BaseException | None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(ready.put_nowait, item)

    def pump() -> None:
        try:
            events = open_events()
            try:
                for event in events:
                    hand_over((event, None))
                    if stop.is_set():
                        break
            finally:
                _close(events)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            hand_over((None, exc))
        else:
            hand_over((None, None))

    worker = loop.create_task(anyio.to_thread.run_sync(pump))
    _pumps.add(worker)
    worker.add_done_callback(_pumps.discard)
    try:
        while True:
            event, error = await ready.get()
            if error is not None:
                raise error
            if event is None:
                return
            yield event
    finally:
        stop.set()


_pumps: set[asyncio.Task[None]] = set()  # a task is only weakly held by its loop


def _close(events: Iterator[StreamEvent]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


def _completion(response: dict[str, Any], attempts: int) -> Completion:
    content = response.get("output", {}).get("message", {}).get("content", [])
    choice = Choice(render.answer_blocks(content),
                    render.finish_reason(response.get("stopReason")))
    return Completion((choice,), _usage(response.get("usage")), attempts)


class IncompleteAnswer(Exception):
    """botocore hands back whatever JSON it could parse, even from a body cut short; an answer
    without a stop reason did not arrive whole."""


def _checked(response: dict[str, Any]) -> dict[str, Any]:
    if "stopReason" not in response or "output" not in response:
        raise IncompleteAnswer("the Converse answer has no output or stop reason")
    return response


def _usage(usage: dict[str, Any] | None) -> Usage:
    usage = usage or {}
    return Usage(int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0)))


def _endpoint(target: Target) -> str:
    region = target.region or DEFAULT_REGION
    return target.endpoint or f"https://bedrock-runtime.{region}.amazonaws.com"


def classify(exc: BaseException, *, target: Target) -> retry.Failure | None:
    if isinstance(exc, IncompleteAnswer):
        return retry.Failure("the answer arrived incomplete", retryable=True)
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        metadata = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code") or "")
        status = int(metadata.get("HTTPStatusCode") or 0)
        if status < 400:  # an exception event inside a stream
            status = RETRYABLE_CODES.get(code, 400)
        headers = {k.lower(): v for k, v in (metadata.get("HTTPHeaders") or {}).items()}
        failure = retry.status_failure(status, code, retry.parse_retry_after(headers))
        if code in RETRYABLE_CODES and not failure.retryable:
            failure = retry.Failure(failure.detail, True, status, failure.retry_after)
        return failure
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | urllib3.exceptions.ReadTimeoutError):
        return retry.timeout_failure(target.timeout_seconds)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError
                  | botocore.exceptions.ConnectTimeoutError):
        return retry.connect_failure(_endpoint(target))
    if isinstance(exc, botocore.exceptions.ConnectionClosedError
                  | botocore.exceptions.ResponseStreamingError
                  | botocore.exceptions.HTTPClientError | urllib3.exceptions.HTTPError):
        return retry.dropped_failure()
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return retry.Failure("no AWS credentials were found for the route", retryable=False)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return retry.Failure(f"botocore refused the call ({type(exc).__name__})",
                             retryable=False)
    return None


"""The Chat Completions adapter, through the official ``openai`` SDK, for three providers:

- ``openai``: api.openai.com (or ``target.endpoint``); the API key is required.
- ``azure-openai``: ``openai.AzureOpenAI`` at ``target.endpoint`` with ``target.api_version``;
  ``target.model`` is the deployment name. Authenticated by ``target.api_key`` (``api-key``
  header), else ``target.azure_ad_token_provider``, else an Entra ID token from
  ``azure.identity.DefaultAzureCredential`` (managed identity, workload identity, ...).
- ``on-prem``: any OpenAI-compatible server (vLLM, Ollama, LM Studio, TGI, ...) at
  ``target.endpoint`` (required); the key is optional.

The answer limit goes out as ``max_completion_tokens`` to OpenAI and Azure OpenAI (the SDK marks
``max_tokens`` deprecated, and reasoning models refuse it) and as ``max_tokens`` to on-prem
servers, which do not all know the newer name. Streams ask for a final usage chunk
(``stream_options.include_usage``); a server that sends no usage gets an estimate (characters /
4), so spend is never settled at zero.

The request is rendered by render_openai.py (messages, tool calls and results, images, tools,
tool_choice, parallel_tool_calls, response_format, n, seed, penalties, logit_bias, logprobs,
reasoning_effort; ``top_k`` as the extra body field vLLM and TGI read, on-prem only), and the
answer read back there: one ``Choice`` per choice (text, tool calls, finish reason, logprobs as
sent); streamed ``tool_calls`` deltas become ``ToolCallStart`` / ``ToolCallDelta`` events by
index. Streams carry choice 0 (``n`` > 1 is refused for streams by features.py).

``embed`` posts ``/embeddings`` (Azure's client maps it to the deployment's URL) with the same
retries and error classification, and reads the vectors (floats or base64) back in input order.

The SDK is the client (its request building, authentication, Azure deployment URLs, errors and
connection pool), but its answers are read as plain JSON: ``client.post(..., cast_to=
httpx2.Response)`` instead of ``client.chat.completions.create``, which would build pydantic
models of the request and of the answer (of every streamed chunk too), costing more CPU than the
rest of a gateway call's path. The few fields read are checked here; an answer of another shape
is refused like the SDK's own ``APIResponseValidationError``.

``acomplete``, ``astream`` and ``aembed`` are the same calls on the event loop, through
``openai.AsyncOpenAI`` (``AsyncAzureOpenAI``) on ``outbound.async_http_client``: the same request
template (``asend_chat``), the same answer parsing and the same chunk reader (``ChunkReader``).
Azure's token provider is sync (azure-identity); the async client calls it in a worker thread,
as a token refresh is a blocking HTTP call. Async clients are cached per event loop
(clients.py).
"""

from __future__ import annotations

import json
import ssl
import threading
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any, cast

import anyio
import anyio.to_thread
import httpx2
import openai
from azure.core.exceptions import AzureError
from openai._base_client import get_platform
from openai._compat import model_copy
from openai._models import FinalRequestOptions
from openai._types import RequestOptions

from tenant_runtime import outbound
from tenant_runtime.gateway.content import Choice, Text, ToolCall, text_of
from tenant_runtime.gateway.providers import render_openai as render
from tenant_runtime.gateway.providers import retry
from tenant_runtime.gateway.providers.base import (
    Completion,
    Embeddings,
    Finished,
    ProviderError,
    StreamEvent,
    Target,
    TextDelta,
    ToolCallDelta,
    Usage,
    require_redacted,
)
from tenant_runtime.gateway.providers.clients import ClientCache, LoopClients
from tenant_runtime.redaction import RedactedEmbedding, RedactedRequest

OPENAI_ENDPOINT = "https://api.openai.com/v1"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
# On-prem servers without authentication still need some key for the SDK (vLLM's docs use this).
NO_KEY = "EMPTY"
CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"  # Azure's client maps it to /deployments/{model}/embeddings
# The SDK's header (openai._constants) asking it to return a response with its body unread.
RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


class OpenAICompatAdapter:
    def __init__(self, provider: str, *, clients: ClientCache,
                 async_clients: LoopClients | None = None,
                 policy: retry.RetryPolicy | None = None) -> None:
        if provider not in ("openai", "azure-openai", "on-prem"):
            raise ValueError(f"OpenAICompatAdapter does not serve {provider!r}.")
        self.provider = provider
        self._clients = clients
        self._async_clients = LoopClients() if async_clients is None else async_clients
        self._policy = policy or retry.RetryPolicy()

    def complete(self, request: RedactedRequest, target: Target) -> Completion:
        how = self._retried(request, target)
        client, body = self._client(target), self._params(request, target)
        answer, attempts = retry.call(*how, lambda: parse_completion(
            send_chat(client, body, stream=False), request))
        return replace(answer, attempts=attempts)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        return retry.stream(*self._retried(request, target),
                            partial(self._events, self._client(target), request, target))

    async def acomplete(self, request: RedactedRequest, target: Target) -> Completion:
        """``complete`` on the event loop, through ``openai.AsyncOpenAI``."""
        how = self._retried(request, target)
        client, body = self._async_client(target), self._params(request, target)

        async def post() -> Completion:
            return parse_completion(await asend_chat(client, body, stream=False), request)

        answer, attempts = await retry.acall(*how, post)
        return replace(answer, attempts=attempts)

    def astream(self, request: RedactedRequest, target: Target) -> AsyncIterator[StreamEvent]:
        """``stream`` on the event loop, through ``openai.AsyncOpenAI``."""
        return retry.astream(*self._retried(request, target),
                             partial(self._aevents, self._async_client(target), request, target))

    def _retried(self, request: RedactedRequest | RedactedEmbedding,
                 target: Target) -> retry.Plan:
        return retry.plan(self.provider, self._policy, classify, request, target)

    def embed(self, request: RedactedEmbedding, target: Target) -> Embeddings:
        """Embedding vectors for ``request.inputs``, in order (same retries as ``complete``)."""
        body = _embedding_body(request, target)
        how, client = self._retried(request, target), self._client(target)
        answer, attempts = retry.call(*how, lambda: parse_embeddings(client.post(
            EMBEDDINGS_PATH, body=body, cast_to=httpx2.Response), len(request.inputs)))
        return replace(answer, attempts=attempts)

    async def aembed(self, request: RedactedEmbedding, target: Target) -> Embeddings:
        """``embed`` on the event loop, through ``openai.AsyncOpenAI``."""
        body = _embedding_body(request, target)
        how, client = self._retried(request, target), self._async_client(target)

        async def post() -> Embeddings:
            response = await client.post(EMBEDDINGS_PATH, body=body, cast_to=httpx2.Response)
            return parse_embeddings(response, len(request.inputs))

        answer, attempts = await retry.acall(*how, post)
        return replace(answer, attempts=attempts)

    def _events(self, client: openai.OpenAI, request: RedactedRequest,
                target: Target) -> Iterator[StreamEvent]:
        response = send_chat(client, self._stream_body(request, target), stream=True)
        chunks = ChunkReader(response)
        try:
            for data in sse_data(response.iter_lines()):
                yield from chunks.events(data)
        finally:
            response.close()
        yield chunks.finished(request)

    async def _aevents(self, client: openai.AsyncOpenAI, request: RedactedRequest,
                       target: Target) -> AsyncIterator[StreamEvent]:
        response = await asend_chat(client, self._stream_body(request, target), stream=True)
        chunks = ChunkReader(response)
        try:
            async for data in asse_data(response.aiter_lines()):
                for event in chunks.events(data):
                    yield event
        finally:
            await response.aclose()
        yield chunks.finished(request)

    def _stream_body(self, request: RedactedRequest, target: Target) -> dict[str, Any]:
        return {**self._params(request, target), "stream": True,
                "stream_options": {"include_usage": True}}

    def _params(self, request: RedactedRequest, target: Target) -> dict[str, Any]:
        return render.body(request, target.model, self.provider)

    def _client(self, target: Target) -> openai.OpenAI:
        self._check(target)
        return cast(openai.OpenAI,
                    self._clients.get(target, partial(_build_client, target, sync=True)))

    def _async_client(self, target: Target) -> openai.AsyncOpenAI:
        self._check(target)
        return cast(openai.AsyncOpenAI,
                    self._async_clients.get(target, partial(_build_client, target, sync=False)))

    def _check(self, target: Target) -> None:
        if self.provider == "azure-openai":
            if not target.endpoint or not target.api_version:
                raise ProviderError(self.provider, 0, "the route needs an endpoint and an API "
                                                      "version for Azure OpenAI")
        elif self.provider == "on-prem" and not target.endpoint:
            raise ProviderError(self.provider, 0, "the route needs the server's endpoint")
        elif self.provider == "openai" and not target.api_key:
            raise ProviderError(self.provider, 0, "the route has no API key")


class ChunkReader:
    """One streamed answer's chunks, read one SSE ``data`` at a time (for ``stream`` and
    ``astream``): the events of choice 0, then ``finished`` with the usage and finish reason."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.said: list[str] = []
        self.done = False
        self.calls = render.ToolCallStream()

    def events(self, data: str) -> Iterator[StreamEvent]:
        response = self.response
        # read to the end, past [DONE], as the SDK does: a response closed before its end
        # closes its connection too, and the next call would open another
        if self.done or data.startswith("[DONE]"):
            self.done = True
            return
        chunk = _json_object(response, data)
        if chunk.get("error"):
            raise openai.APIError("The provider reported an error in the stream.",
                                  response.request, body=chunk["error"])
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for choice in _list(response, chunk.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            content = delta.get("content")
            if content:
                if not isinstance(content, str):
                    raise _bad_shape(response, chunk)
                self.said.append(content)
                yield TextDelta(content)
            if delta.get("tool_calls") is not None:
                try:
                    events = self.calls.events(delta["tool_calls"])
                except render.BadShape:
                    raise _bad_shape(response, chunk) from None
                for event in events:
                    if isinstance(event, ToolCallDelta):
                        self.said.append(event.arguments)
                    yield event
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def finished(self, request: RedactedRequest) -> Finished:
        return Finished(self.usage or estimate_usage(request, "".join(self.said)),
                        render.finish_reason(self.finish), attempts=0)


def _embedding_body(request: RedactedEmbedding, target: Target) -> dict[str, Any]:
    require_redacted(request)
    if not isinstance(request, RedactedEmbedding):
        raise TypeError("embed takes a RedactedEmbedding (tenant_runtime.redaction."
                        "redact_embedding).")
    body: dict[str, Any] = {"model": target.model, "input": list(request.inputs)}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.encoding_format is not None:
        body["encoding_format"] = request.encoding_format
    return body


def send_chat(client: openai.OpenAI, body: dict[str, Any], *, stream: bool) -> httpx2.Response:
    """POST ``body`` to the chat path and return the response, its body unread when
    ``stream`` (the SDK's own way to hand back a streaming response unread,
    ``with_streaming_response``), with the SDK's errors: what ``client.post(CHAT_PATH, body=body,
    cast_to=httpx2.Response)`` does. For a plain ``openai.OpenAI`` client (an API key, no
    workload identity, no provider runtime: what ``_client`` makes for ``openai`` and
    ``on-prem``) the request is the one the SDK built for the client's first call, with this
    call's body: its URL, headers and timeout depend on the client only (``max_retries=0``, so
    the retry count is always 0; no idempotency header), and building them again cost a third
    of the provider call's CPU. It is sent through the SDK's ``_send_request`` and its errors
    raised as the SDK's request loop raises them. Any other client (Azure's, whose URL and
    token are per call) goes through ``client.post``."""
    if not _plain(client):
        return client.post(CHAT_PATH, body=body, cast_to=httpx2.Response,
                           options=_post_options(stream))
    template = _known_template(client, stream)
    if template is None:
        options = client._prepare_options(_template_options(stream))
        template = client._build_request(options, retries_taken=0)
        client._prepare_request(template)
        template = _keep_template(client, stream, template)
    request = _chat_request(template, body)
    try:
        response = client._send_request(request, stream=stream)
    except openai.OpenAIError:
        raise
    except SEND_ERRORS as err:
        raise _send_error(err, request) from err
    if not response.is_success:
        response.read()
        raise client._make_status_error_from_response(response)
    return response


async def asend_chat(client: openai.AsyncOpenAI, body: dict[str, Any], *,
                     stream: bool) -> httpx2.Response:
    """``send_chat`` for an async client, on the event loop (its body unread when
    ``stream``)."""
    if not _plain(client):
        return await client.post(CHAT_PATH, body=body, cast_to=httpx2.Response,
                                 options=_post_options(stream))
    template = _known_template(client, stream)
    if template is None:
        if client._platform is None:  # as the SDK's request(): it may read files
            client._platform = await anyio.to_thread.run_sync(get_platform)
        options = await client._prepare_options(_template_options(stream))
        template = client._build_request(options, retries_taken=0)
        await client._prepare_request(template)
        template = _keep_template(client, stream, template)
    request = _chat_request(template, body)
    try:
        response = await client._send_request(request, stream=stream)
    except openai.OpenAIError:
        raise
    except SEND_ERRORS as err:
        raise _send_error(err, request) from err
    if not response.is_success:
        await response.aread()
        raise client._make_status_error_from_response(response)
    return response


# what the SDK's request loop turns into APITimeoutError / APIConnectionError
SEND_ERRORS = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)


def _send_error(err: Exception, request: httpx2.Request) -> openai.APIConnectionError:
    if isinstance(err, httpx2.TimeoutException):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(request=request)


def _post_options(stream: bool) -> RequestOptions:
    return {"headers": {RAW_RESPONSE_HEADER: "stream"}} if stream else {}


def _plain(client: openai.OpenAI | openai.AsyncOpenAI) -> bool:
    return (type(client) in (openai.OpenAI, openai.AsyncOpenAI)
            and client._provider_runtime is None
            and client._workload_identity_auth is None and client._api_key_provider is None
            and client.max_retries == 0)


_templates: weakref.WeakKeyDictionary[openai.OpenAI | openai.AsyncOpenAI,
                                      dict[bool, httpx2.Request]] = weakref.WeakKeyDictionary()
_templates_lock = threading.Lock()


def _known_template(client: openai.OpenAI | openai.AsyncOpenAI,
                    stream: bool) -> httpx2.Request | None:
    """The request the SDK builds for a chat call of ``client`` (with an empty body, its
    length header dropped), once per client and kind: None until ``_keep_template``."""
    with _templates_lock:
        return _templates.get(client, {}).get(stream)


def _keep_template(client: openai.OpenAI | openai.AsyncOpenAI, stream: bool,
                   template: httpx2.Request) -> httpx2.Request:
    del template.headers["content-length"]
    with _templates_lock:
        return _templates.setdefault(client, {}).setdefault(stream, template)


def _template_options(stream: bool) -> FinalRequestOptions:
    # as client.post builds them
    options = FinalRequestOptions.construct(
        method="post", url=CHAT_PATH, json_data={},
        headers={RAW_RESPONSE_HEADER: "stream"}) if stream else \
        FinalRequestOptions.construct(method="post", url=CHAT_PATH, json_data={})
    return model_copy(options)


def _chat_request(template: httpx2.Request, body: dict[str, Any]) -> httpx2.Request:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode()  # as the SDK's openapi_dumps
    return httpx2.Request("POST", template.url, headers=template.headers.copy(),
                          content=content, extensions=dict(template.extensions))


def _build_client(target: Target, *, sync: bool) -> Any:
    """An ``openai.OpenAI`` (``sync``) or ``openai.AsyncOpenAI`` for ``target``, Azure's for
    azure-openai, on a checked HTTP client (tenant_runtime.outbound)."""
    timeout = target.timeout_seconds
    common: dict[str, Any] = {"max_retries": 0, "timeout": timeout}
    if target.provider == "azure-openai":
        assert target.endpoint is not None  # noqa: S101 - checked by the caller
        common.update(azure_endpoint=target.endpoint, api_version=target.api_version)
        if target.api_key:
            common["api_key"] = target.api_key
        else:
            token = target.azure_ad_token_provider or _default_token_provider()
            common["azure_ad_token_provider"] = token if sync else partial(_token_in_thread,
                                                                           token)
        if sync:
            return openai.AzureOpenAI(
                **common, http_client=outbound.http_client(target.egress, timeout=timeout))
        return openai.AsyncAzureOpenAI(**common, http_client=outbound.async_http_client(
            target.egress, timeout=httpx2.Timeout(timeout), lean=True))
    common.update(api_key=target.api_key or NO_KEY, base_url=target.endpoint or OPENAI_ENDPOINT)
    if sync:
        return openai.OpenAI(
            **common, http_client=outbound.http_client(target.egress, timeout=timeout))
    return openai.AsyncOpenAI(**common, http_client=outbound.async_http_client(
        target.egress, timeout=httpx2.Timeout(timeout), lean=True))


async def _token_in_thread(token: Callable[[], str]) -> str:
    """An Entra ID token from a sync provider, in a worker thread: azure-identity answers from
    its cache, but a refresh is a blocking HTTP call the event loop must not wait on."""
    return await anyio.to_thread.run_sync(token)


_default_provider: Callable[[], str] | None = None
_default_provider_lock = threading.Lock()


def _default_token_provider() -> Callable[[], str]:
    """One Entra ID token provider per process, from the default credential chain."""
    global _default_provider
    with _default_provider_lock:
        if _default_provider is None:
            from azure.identity import DefaultAzureCredential, get_bearer_token_provider

            _default_provider = get_bearer_token_provider(DefaultAzureCredential(), AZURE_SCOPE)
        return _default_provider


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event (its ``data:`` lines joined), in order."""
    events = _SSEData()
    for line in lines:
        if (data := events.line(line)) is not None:
            yield data
    if (data := events.end()) is not None:
        yield data


async def asse_data(lines: AsyncIterable[str]) -> AsyncIterator[str]:
    """``sse_data`` of lines read on the event loop."""
    events = _SSEData()
    async for line in lines:
        if (data := events.line(line)) is not None:
            yield data
    if (data := events.end()) is not None:
        yield data


class _SSEData:
    def __init__(self) -> None:
        self.data: list[str] = []

    def line(self, line: str) -> str | None:
        """The event's data when ``line`` ends one."""
        if not line:
            return self.end()
        if line.startswith("data:"):
            self.data.append(line[6:] if line.startswith("data: ") else line[5:])
        return None

    def end(self) -> str | None:
        data, self.data = self.data, []
        return "\n".join(data) if data else None


def _bad_shape(response: httpx2.Response, body: object) -> openai.APIResponseValidationError:
    return openai.APIResponseValidationError(response, body, message="The provider's answer "
                                             "did not have the expected shape.")


def _json_object(response: httpx2.Response, text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise _bad_shape(response, None) from None
    if not isinstance(data, dict):
        raise _bad_shape(response, data)
    return data


def _list(response: httpx2.Response, value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_shape(response, value)
    return value


def _usage(usage: dict[str, Any]) -> Usage:
    return Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))  # type: ignore[arg-type]


def parse_completion(response: httpx2.Response, request: RedactedRequest) -> Completion:
    """A chat completion's choices, usage and finish reasons, read from its JSON."""
    data = _json_object(response, response.content)
    choices = []
    for choice in sorted(_list(response, data.get("choices")),
                         key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        if not isinstance(choice, dict):
            raise _bad_shape(response, data)
        try:
            blocks = render.choice_blocks(choice.get("message"))
        except render.BadShape:
            raise _bad_shape(response, data) from None
        choices.append(Choice(blocks, render.finish_reason(choice.get("finish_reason")),
                              choice.get("logprobs")))
    if not choices:
        choices.append(Choice((), "other"))
    said = "".join(b.text if isinstance(b, Text) else b.arguments
                   for c in choices for b in c.content if isinstance(b, Text | ToolCall))
    usage = _usage(data["usage"]) if isinstance(data.get("usage"), dict) \
        else estimate_usage(request, said)
    return Completion(tuple(choices), usage, attempts=0)


def parse_embeddings(response: httpx2.Response, count: int) -> Embeddings:
    """The vectors of an embeddings answer, in input order (by each item's ``index``)."""
    data = _json_object(response, response.content)
    items = _list(response, data.get("data"))
    vectors: list[list[float] | str | None] = [None] * count
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count \
                or not isinstance(vector, list | str) or vectors[index] is not None:
            raise _bad_shape(response, data)
        vectors[index] = vector
    if any(v is None for v in vectors):
        raise _bad_shape(response, data)
    usage = data.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return Embeddings(tuple(v for v in vectors if v is not None),
                      Usage(tokens if isinstance(tokens, int) else 0, 0), attempts=0)


def estimate_usage(request: RedactedRequest, answer: str) -> Usage:
    """For servers that report no usage: about four characters a token."""
    characters = sum(len(text_of(m.content)) + sum(len(b.arguments) for b in m.blocks
                                                    if isinstance(b, ToolCall))
                     for m in request.messages)
    return Usage(characters // 4 + 1, len(answer) // 4 + 1)


def classify(exc: BaseException, *, target: Target) -> retry.Failure | None:
    endpoint = target.endpoint or OPENAI_ENDPOINT
    if isinstance(exc, openai.APIStatusError):
        return retry.status_failure(exc.status_code, exc.code or exc.type,
                                    retry.parse_retry_after(exc.response.headers))
    if isinstance(exc, openai.APITimeoutError):
        return retry.timeout_failure(target.timeout_seconds)
    if isinstance(exc, openai.APIConnectionError):
        return retry.httpx_failure(exc.__cause__, endpoint, target.timeout_seconds)
    if isinstance(exc, httpx2.TransportError):
        return retry.httpx_failure(exc, endpoint, target.timeout_seconds)
    if isinstance(exc, openai.APIResponseValidationError):
        return retry.Failure("the provider's answer did not have the expected shape",
                             retryable=False, status=exc.status_code)
    if isinstance(exc, AzureError):  # the Entra ID token provider could not get a token
        return retry.Failure(f"Azure sign-in failed ({type(exc).__name__}): check the route's "
                             "managed identity, or give the route an API key", retryable=False)
    if isinstance(exc, openai.OpenAIError):
        return retry.Failure(f"the OpenAI SDK refused the call ({type(exc).__name__})",
                             retryable=False)
    return None


"""A local LLM provider that speaks the wire protocols of the providers the gateway routes to, so
the official SDKs (openai, anthropic, boto3) run their real code paths against it:

    OpenAI            POST /v1/chat/completions (JSON, or ``stream: true`` as SSE ``data:`` lines
                      ending in ``data: [DONE]``, with a usage chunk when
                      ``stream_options.include_usage`` is set), GET /v1/models.
                      Auth ``Authorization: Bearer <api_key>``.
    Azure OpenAI      POST /openai/deployments/{deployment}/chat/completions?api-version=...
                      (OpenAI's bodies). Auth ``api-key: <api_key>`` or ``Authorization: Bearer
                      <azure_token>`` (an Entra ID token); no ``api-version`` → 400.
    Anthropic         POST /v1/messages (JSON, or ``stream: true`` as Anthropic's SSE events
                      message_start, content_block_start, content_block_delta (text_delta),
                      content_block_stop, message_delta, message_stop). Auth ``x-api-key`` or
                      ``Authorization: Bearer`` (what anthropic 2.x sends); the
                      ``anthropic-version`` header is required.
    Bedrock runtime   POST /model/{modelId}/converse (JSON) and /model/{modelId}/converse-stream
                      (``application/vnd.amazon.eventstream``: binary frames with prelude and
                      message CRC32s, events messageStart, contentBlockDelta, contentBlockStop,
                      messageStop, metadata). Auth: a SigV4 ``Authorization`` header whose
                      credential scope names ``aws_access_key_id`` (the signature itself is not
                      checked).

Every protocol answers in its own error shape: OpenAI ``{"error": {"message", "type", "param",
"code"}}``, Azure ``{"error": {"code", "message"}}``, Anthropic ``{"type": "error", "error":
{"type", "message"}}``, Bedrock an ``x-amzn-ErrorType`` header and ``{"message"}``.

The model's behaviour is deterministic:
- the answer is ``"You said: " + <text of the last user message>`` (so a caller's placeholders
  come back and can be restored), or ``reply`` when a test sets it;
- a stop sequence found in the answer cuts it there (finish reason stop / stop_sequence);
- usage: input tokens = total characters of all messages (system prompts included) // 4 + 1,
  output tokens = len(answer) // 4 + 1; an answer longer than ``max_tokens`` allows is cut to
  ``max_tokens * 4 - 1`` characters, so it costs exactly ``max_tokens``, and finishes with
  length / max_tokens;
- streams send the answer in pieces of ``chunk_size`` characters (default 3, so placeholders
  get split across chunks), each piece its own HTTP chunk.

``received`` holds every request exactly as it arrived (method, path with query, headers, raw
body bytes), so tests can assert on the bytes on the wire; ``clear()`` empties it.

Faults: ``fail_next(*modes)`` queues failures, consumed one per request (whatever the path):
- an int status (429, 500, 502, 503, 529, 400, ...) answered in that protocol's error shape;
- ``(429, seconds)`` (or ``("429", seconds)``): 429 with a ``Retry-After: <seconds>`` header;
- ``"timeout"``: hold the connection ``hang_seconds`` (default 5) without answering, then close;
- ``"reset"``: close the connection without answering;
- ``"cut"``: a stream sends its first content piece and then the connection is closed without
  the end of the body (a JSON answer sends half its body); for mid-stream failures.
``latency_seconds`` is added before every answer (for benchmarks).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Fault = int | str | tuple[int | str, float]

OPENAI_MODELS = ("gpt-4o-mini", "gpt-4.1", "o4-mini")


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str  # with the query string, as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# -- what the handler writes -------------------------------------------------------------------

@dataclass
class _Json:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Stream:
    content_type: str
    pieces: Iterable[tuple[bytes, bool]]  # (bytes, whether they carry answer text)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Drop:
    """Close the connection without answering, after ``hold`` seconds."""
    hold: float = 0.0


_Reply = _Json | _Stream | _Drop


@dataclass
class _Answer:
    text: str
    input_tokens: int
    output_tokens: int
    truncated: bool  # cut by max_tokens
    stop_sequence: str | None  # the stop sequence that cut it

    @property
    def stop_reason(self) -> str:  # Anthropic's and Bedrock's words
        if self.truncated:
            return "max_tokens"
        return "stop_sequence" if self.stop_sequence is not None else "end_turn"


def tokens_for(characters: int) -> int:
    return characters // 4 + 1


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return ""


# -- the AWS event stream framing (application/vnd.amazon.eventstream) --------------------------

def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (struct.pack(">B", len(raw_name)) + raw_name + b"\x07"  # 7: a string value
            + struct.pack(">H", len(raw_value)) + raw_value)


def event_stream_message(event_type: str, payload: Any, *, message_type: str = "event") -> bytes:
    """One frame: total length, headers length, prelude CRC32, headers, payload, message CRC32."""
    kind = ":exception-type" if message_type == "exception" else ":event-type"
    headers = (_header(kind, event_type) + _header(":content-type", "application/json")
               + _header(":message-type", message_type))
    body = json.dumps(payload).encode()
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


# -- the HTTP server -----------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection ends after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply, cut = self.server.fake.respond(self.command, self.path, headers, body)
        if isinstance(reply, _Drop):
            self.server.fake.wait(reply.hold)
            self._drop()
        elif isinstance(reply, _Json):
            self._write_json(reply, cut)
        else:
            self._write_stream(reply, cut)

    do_GET = _serve
    do_POST = _serve

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_json(self, reply: _Json, cut: bool) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(data)

    def _write_stream(self, reply: _Stream, cut: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for piece, is_content in reply.pieces:
            self.wfile.write(f"{len(piece):X}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
            if cut and is_content:
                break
        else:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        self._drop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: LLMServer) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        try:
            _Handler(request, client_address, self)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-request are normal here

    def drop_connections(self) -> None:
        with self.connections_lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class LLMServer:
    """One local server for all five provider protocols (see the module docstring)."""

    def __init__(self, *, api_key: str = "test-llm-key", azure_token: str = "entra-test-token",  # noqa: S107
                 aws_access_key_id: str = "AKIDFAKELLM0000000", reply: str | None = None,
                 chunk_size: int = 3, latency_seconds: float = 0.0,
                 hang_seconds: float = 5.0) -> None:
        self.api_key = api_key
        self.azure_token = azure_token
        self.aws_access_key_id = aws_access_key_id
        self.reply = reply
        self.chunk_size = chunk_size
        self.latency_seconds = latency_seconds
        self.hang_seconds = hang_seconds
        self.models = list(OPENAI_MODELS)
        self._lock = threading.Lock()
        self._received: list[ReceivedRequest] = []
        self._faults: deque[Fault] = deque()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LLMServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, name="fake-llm",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        self._stopping.set()  # releases held ("timeout") connections at once
        server.shutdown()
        server.drop_connections()
        server.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- what a test does -----------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._received)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._faults.clear()

    def fail_next(self, *modes: Fault) -> None:
        with self._lock:
            self._faults.extend(modes)

    # -- the protocols --------------------------------------------------------------------

    def respond(self, method: str, target: str, headers: dict[str, str],
                body: bytes) -> tuple[_Reply, bool]:
        """The reply to one request, and whether to cut it short."""
        with self._lock:
            self._received.append(ReceivedRequest(method, target, headers, body))
            fault = self._faults.popleft() if self._faults else None
        self.wait(self.latency_seconds)
        url = urlsplit(target)
        path = unquote(url.path)
        parts = path.strip("/").split("/")
        if path.startswith("/v1/messages"):
            protocol = "anthropic"
        elif path.startswith("/openai/"):
            protocol = "azure"
        elif path.startswith("/model/"):
            protocol = "bedrock"
        else:
            protocol = "openai"
        if fault == "timeout":
            return _Drop(self.hang_seconds), False
        if fault == "reset":
            return _Drop(), False
        if isinstance(fault, int):
            return _error(protocol, fault), False
        if isinstance(fault, tuple):
            status, seconds = int(fault[0]), fault[1]
            reply = _error(protocol, status)
            reply.headers["Retry-After"] = f"{seconds:g}"
            return reply, False
        cut = fault == "cut"
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return _error(protocol, 400, "The request body is not valid JSON."), False
        if not isinstance(request, dict):
            return _error(protocol, 400, "The request body must be a JSON object."), False
        if protocol == "openai":
            if not self._bearer_is(headers, self.api_key):
                return _error("openai", 401), False
            if method == "GET" and path == "/v1/models":
                return _Json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                    for m in self.models]}), cut
            if method == "POST" and path == "/v1/chat/completions":
                return self._chat_completion(request, request.get("model", "")), cut
        elif protocol == "azure":
            if not parse_qs(url.query).get("api-version"):
                return _Json(400, {"error": {
                    "code": "MissingApiVersionParameter",
                    "message": "The api-version query parameter (?api-version=) is required for "
                               "all requests."}}), False
            if not (headers.get("api-key") == self.api_key
                    or self._bearer_is(headers, self.azure_token)):
                return _error("azure", 401), False
            if (method == "POST" and len(parts) == 5 and parts[1] == "deployments"
                    and parts[3:] == ["chat", "completions"]):
                return self._chat_completion(request, parts[2]), cut
        elif protocol == "anthropic":
            if not (headers.get("x-api-key") == self.api_key
                    or self._bearer_is(headers, self.api_key)):
                return _error("anthropic", 401), False
            if not headers.get("anthropic-version"):
                return _error("anthropic", 400, "anthropic-version: header is required"), False
            if method == "POST" and path == "/v1/messages":
                return self._anthropic_message(request), cut
        else:
            credential = headers.get("authorization", "")
            if (not credential.startswith("AWS4-HMAC-SHA256 ")
                    or f"Credential={self.aws_access_key_id}/" not in credential):
                return _error("bedrock", 403), False
            if method == "POST" and len(parts) == 3 and parts[2] in ("converse",
                                                                     "converse-stream"):
                return self._bedrock(request, parts[1], parts[2] == "converse-stream"), cut
        return _error(protocol, 404, f"No route for {method} {path}."), False

    @staticmethod
    def _bearer_is(headers: dict[str, str], expected: str) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and token == expected

    def _answer(self, messages: list[tuple[str, str]], max_tokens: Any,
                stop: list[str]) -> _Answer:
        """``messages`` are (role, text), system prompts included."""
        last_user = next((text for role, text in reversed(messages) if role == "user"), "")
        text = self.reply if self.reply is not None else "You said: " + last_user
        matched = None
        for sequence in stop:
            if sequence and sequence in text:
                text, matched = text[: text.index(sequence)], sequence
        truncated = False
        if isinstance(max_tokens, int) and max_tokens > 0 and tokens_for(len(text)) > max_tokens:
            text, truncated, matched = text[: max_tokens * 4 - 1], True, None
        return _Answer(text, tokens_for(sum(len(t) for _, t in messages)),
                       tokens_for(len(text)), truncated, matched)

    def _pieces(self, text: str) -> list[str]:
        size = max(1, self.chunk_size)
        return [text[i: i + size] for i in range(0, len(text), size)]

    # OpenAI and Azure OpenAI

    def _chat_completion(self, request: dict[str, Any], model: str) -> _Reply:
        messages = [(str(m.get("role")), _text_of(m.get("content")))
                    for m in request.get("messages") or [] if isinstance(m, dict)]
        if not messages:
            return _error("openai", 400, "'messages' must contain at least one message.")
        stop = request.get("stop") or []
        answer = self._answer(messages,
                              request.get("max_completion_tokens") or request.get("max_tokens"),
                              [stop] if isinstance(stop, str) else list(stop))
        finish = "length" if answer.truncated else "stop"
        usage = {"prompt_tokens": answer.input_tokens,
                 "completion_tokens": answer.output_tokens,
                 "total_tokens": answer.input_tokens + answer.output_tokens}
        ident, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if not request.get("stream"):
            return _Json(200, {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                             "message": {"role": "assistant", "content": answer.text,
                                         "refusal": None}}],
                "usage": usage, "system_fingerprint": "fp_fake"})

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": "fp_fake", "choices": choices,
                    **extra}

        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))

        def pieces() -> Iterator[_Marked]:
            yield _sse(None, chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]))
            for piece in self._pieces(answer.text):
                yield _content(_sse(None, chunk([{"index": 0, "delta": {"content": piece},
                                                  "finish_reason": None}])))
            yield _sse(None, chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
            if include_usage:
                yield _sse(None, chunk([], usage=usage))
            yield b"data: [DONE]\n\n"

        return _Stream("text/event-stream; charset=utf-8", _marked(pieces()))

    # Anthropic

    def _anthropic_message(self, request: dict[str, Any]) -> _Reply:
        system = request.get("system")
        messages = [("system", _text_of(system))] if system else []
        messages += [(str(m.get("role")), _text_of(m.get("content")))
                     for m in request.get("messages") or [] if isinstance(m, dict)]
        if not isinstance(request.get("max_tokens"), int):
            return _error("anthropic", 400, "max_tokens: Field required")
        if not messages:
            return _error("anthropic", 400, "messages: at least one message is required")
        stop = list(request.get("stop_sequences") or [])
        answer = self._answer(messages, request["max_tokens"], stop)
        stop_reason, stop_sequence = answer.stop_reason, answer.stop_sequence
        ident, model = "msg_" + uuid.uuid4().hex[:24], request.get("model", "")
        if not request.get("stream"):
            return _Json(200, {
                "id": ident, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": answer.text}],
                "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                "usage": {"input_tokens": answer.input_tokens,
                          "output_tokens": answer.output_tokens}},
                {"request-id": "req_" + uuid.uuid4().hex[:24]})

        def pieces() -> Iterator[_Marked]:
            yield _sse("message_start", {"type": "message_start", "message": {
                "id": ident, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1}}})
            yield _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}})
            yield _sse("ping", {"type": "ping"})
            for piece in self._pieces(answer.text):
                yield _content(_sse("content_block_delta", {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}))
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield _sse("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": answer.output_tokens}})
            yield _sse("message_stop", {"type": "message_stop"})

        return _Stream("text/event-stream; charset=utf-8", _marked(pieces()),
                       {"request-id": "req_" + uuid.uuid4().hex[:24]})

    # Bedrock runtime (Converse)

    def _bedrock(self, request: dict[str, Any], model_id: str, stream: bool) -> _Reply:
        started = time.monotonic()
        messages = [("system", _text_of(block.get("text", "")))
                    for block in request.get("system") or [] if isinstance(block, dict)]
        messages += [(str(m.get("role")), _text_of(m.get("content")))
                     for m in request.get("messages") or [] if isinstance(m, dict)]
        if not any(role != "system" for role, _ in messages):
            return _error("bedrock", 400, "A conversation must start with a user message.")
        config = request.get("inferenceConfig") or {}
        answer = self._answer(messages, config.get("maxTokens"),
                              list(config.get("stopSequences") or []))
        stop_reason = answer.stop_reason
        usage = {"inputTokens": answer.input_tokens, "outputTokens": answer.output_tokens,
                 "totalTokens": answer.input_tokens + answer.output_tokens}
        headers = {"x-amzn-RequestId": str(uuid.uuid4())}
        if not stream:
            return _Json(200, {
                "output": {"message": {"role": "assistant",
                                       "content": [{"text": answer.text}]}},
                "stopReason": stop_reason, "usage": usage,
                "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)}}, headers)

        def pieces() -> Iterator[_Marked]:
            yield event_stream_message("messageStart", {"role": "assistant"})
            for piece in self._pieces(answer.text):
                yield _content(event_stream_message("contentBlockDelta", {
                    "contentBlockIndex": 0, "delta": {"text": piece}}))
            yield event_stream_message("contentBlockStop", {"contentBlockIndex": 0})
            yield event_stream_message("messageStop", {"stopReason": stop_reason})
            yield event_stream_message("metadata", {
                "usage": usage,
                "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)}})

        return _Stream("application/vnd.amazon.eventstream", _marked(pieces()), headers)


# Pieces that carry answer text are marked, so the "cut" fault can stop right after the first.
_Marked = bytes | tuple[bytes, bool]


def _content(piece: bytes) -> tuple[bytes, bool]:
    return piece, True


def _marked(pieces: Iterator[_Marked]) -> Iterator[tuple[bytes, bool]]:
    for piece in pieces:
        yield piece if isinstance(piece, tuple) else (piece, False)


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}
_BEDROCK_ERRORS = {
    400: "ValidationException", 403: "UnrecognizedClientException",
    404: "ResourceNotFoundException", 429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


def _phrase(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error(protocol: str, status: int, message: str | None = None) -> _Json:
    text = message or f"{_phrase(status)} (a fault injected by the fake LLM server)."
    if protocol == "openai":
        if status == 401 and message is None:
            text = "Incorrect API key provided. You can find your API key in your settings."
        kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500
                                                 else "invalid_request_error", None))
        return _Json(status, {"error": {"message": text, "type": kind, "param": None,
                                        "code": code}},
                     {"x-request-id": "req_" + uuid.uuid4().hex[:24]})
    if protocol == "azure":
        if status == 401 and message is None:
            text = ("Access denied due to invalid subscription key or wrong API endpoint. Make "
                    "sure to provide a valid key for an active subscription and use a correct "
                    "regional API endpoint for your resource.")
        return _Json(status, {"error": {"code": str(status), "message": text}})
    if protocol == "anthropic":
        if status == 401 and message is None:
            text = "invalid x-api-key"
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500
                                     else "invalid_request_error")
        return _Json(status, {"type": "error", "error": {"type": kind, "message": text}},
                     {"request-id": "req_" + uuid.uuid4().hex[:24]})
    if status == 403 and message is None:
        text = "The security token included in the request is invalid."
    kind = _BEDROCK_ERRORS.get(status, "InternalServerException" if status >= 500
                               else "ValidationException")
    return _Json(status, {"message": text},
                 {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                  "x-amzn-RequestId": str(uuid.uuid4())})

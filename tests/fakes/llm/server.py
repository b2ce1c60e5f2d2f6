"""The HTTP server and ``LLMServer``, the object tests hold: routing, authentication, faults,
recording, scripting. The protocols' bodies are built in the sibling modules."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.llm import (
    anthropic_messages,
    bedrock_converse,
    openai_chat,
    openai_embeddings,
    openai_responses,
)
from tests.fakes.llm.model import Reply, Scripted, as_reply
from tests.fakes.llm.wire import BadRequest, Drop, Json, ReceivedRequest, Stream, error

Fault = int | str | tuple[int | str, float]

OPENAI_MODELS = ("gpt-4o-mini", "gpt-4.1", "o4-mini", "text-embedding-3-small")


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
        if isinstance(reply, Drop):
            self.server.fake.wait(reply.hold)
            self._drop()
        elif isinstance(reply, Json):
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

    def _write_json(self, reply: Json, cut: bool) -> None:
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

    def _write_stream(self, reply: Stream, cut: bool) -> None:
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
    """One local server for all the provider protocols (see the package docstring)."""

    def __init__(self, *, api_key: str = "test-llm-key", azure_token: str = "entra-test-token",  # noqa: S107
                 aws_access_key_id: str = "AKIDFAKELLM0000000", reply: str | None = None,
                 chunk_size: int = 3, latency_seconds: float = 0.0,
                 hang_seconds: float = 5.0, n_tool_calls: int = 1,
                 redact_thinking: bool = False) -> None:
        self.api_key = api_key
        self.azure_token = azure_token
        self.aws_access_key_id = aws_access_key_id
        self.reply = reply
        self.chunk_size = chunk_size
        self.latency_seconds = latency_seconds
        self.hang_seconds = hang_seconds
        self.n_tool_calls = n_tool_calls
        self.redact_thinking = redact_thinking
        self.models = list(OPENAI_MODELS)
        self._lock = threading.Lock()
        self._received: list[ReceivedRequest] = []
        self._faults: deque[Fault] = deque()
        self._scripted: deque[Reply] = deque()
        self._together: threading.Barrier | None = None
        self._serial = 0
        self.responses: dict[str, list[dict[str, Any]]] = {}  # stored Responses API turns
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
        """Forget the received requests, queued faults and scripted replies."""
        with self._lock:
            self._received.clear()
            self._faults.clear()
            self._scripted.clear()

    def answer_together(self, count: int | None, *, seconds: float = 15.0) -> None:
        """Hold each request until ``count`` requests are held, then answer them all (a
        request not joined by the others within ``seconds`` is answered 503); None: answer
        each at once again."""
        with self._lock:
            self._together = (None if count is None
                              else threading.Barrier(count, timeout=seconds))

    def fail_next(self, *modes: Fault) -> None:
        with self._lock:
            self._faults.extend(modes)

    def script(self, *replies: Scripted) -> None:
        """Queue answers, consumed one per model request (chat completion, response, message,
        converse), overriding the rules: text, a ``ToolCall``, a list of them, or a ``Reply``."""
        items = [as_reply(r) for r in replies]
        with self._lock:
            self._scripted.extend(items)

    # -- used by the protocol modules ------------------------------------------------------

    def next_scripted(self) -> Reply | None:
        with self._lock:
            return self._scripted.popleft() if self._scripted else None

    def id_maker(self, prefix: str, length: int = 24) -> Any:
        """A function from an index to a deterministic id, fresh for each model request."""
        with self._lock:
            self._serial += 1
            serial = self._serial

        def new_id(index: int) -> str:
            digest = hashlib.sha256(f"{serial}:{index}".encode()).hexdigest()
            return prefix + digest[:length]

        return new_id

    def pieces(self, text: str) -> list[str]:
        size = max(1, self.chunk_size)
        return [text[i: i + size] for i in range(0, len(text), size)]

    # -- routing --------------------------------------------------------------------------

    def respond(self, method: str, target: str, headers: dict[str, str],
                body: bytes) -> tuple[Json | Stream | Drop, bool]:
        """The reply to one request, and whether to cut it short."""
        with self._lock:
            self._received.append(ReceivedRequest(method, target, headers, body))
            fault = self._faults.popleft() if self._faults else None
            together = self._together
        if together is not None:
            try:
                together.wait()
            except threading.BrokenBarrierError:  # they never were: a 503 each
                fault = fault or 503
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
            return Drop(self.hang_seconds), False
        if fault == "reset":
            return Drop(), False
        if isinstance(fault, int):
            return error(protocol, fault), False
        if isinstance(fault, tuple):
            status, seconds = int(fault[0]), fault[1]
            reply = error(protocol, status)
            reply.headers["Retry-After"] = f"{seconds:g}"
            return reply, False
        cut = fault == "cut"
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return error(protocol, 400, "The request body is not valid JSON."), False
        if not isinstance(request, dict):
            return error(protocol, 400, "The request body must be a JSON object."), False
        try:
            answer = self._route(protocol, method, path, parts, url.query, headers, request)
        except BadRequest as bad:
            return error(protocol, bad.status, bad.message, param=bad.param,
                         code=bad.code), False
        if answer is None:
            return error(protocol, 404, f"No route for {method} {path}."), False
        return answer, cut and answer.status == 200 if isinstance(answer, Json) else cut

    def _route(self, protocol: str, method: str, path: str, parts: list[str], query: str,
               headers: dict[str, str], request: dict[str, Any]) -> Json | Stream | None:
        model = str(request.get("model", ""))
        if protocol == "openai":
            if not self._bearer_is(headers, self.api_key):
                return error("openai", 401)
            if method == "GET" and path == "/v1/models":
                return Json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                    for m in self.models]})
            if method == "POST":
                return self._openai_route(path.removeprefix("/v1"), request, model)
            return None
        if protocol == "azure":
            if not (headers.get("api-key") == self.api_key
                    or self._bearer_is(headers, self.azure_token)
                    or (parts[:2] == ["openai", "v1"]
                        and self._bearer_is(headers, self.api_key))):
                return error("azure", 401)
            if parts[:2] == ["openai", "v1"] and method == "POST":  # the v1 API: no api-version
                return self._openai_route("/" + "/".join(parts[2:]), request, model)
            if not parse_qs(query).get("api-version"):
                return Json(400, {"error": {
                    "code": "MissingApiVersionParameter",
                    "message": "The api-version query parameter (?api-version=) is required for "
                               "all requests."}})
            if method == "POST" and len(parts) >= 4 and parts[1] == "deployments":
                return self._openai_route("/" + "/".join(parts[3:]), request, parts[2],
                                          responses=False)
            return None
        if protocol == "anthropic":
            if not (headers.get("x-api-key") == self.api_key
                    or self._bearer_is(headers, self.api_key)):
                return error("anthropic", 401)
            if not headers.get("anthropic-version"):
                return error("anthropic", 400, "anthropic-version: header is required")
            if method == "POST" and path == "/v1/messages":
                return anthropic_messages.message(self, request)
            if method == "POST" and path == "/v1/messages/count_tokens":
                return anthropic_messages.count_tokens(self, request)
            return None
        credential = headers.get("authorization", "")
        if (not credential.startswith("AWS4-HMAC-SHA256 ")
                or f"Credential={self.aws_access_key_id}/" not in credential):
            return error("bedrock", 403)
        if method == "POST" and len(parts) == 3 and parts[2] in ("converse", "converse-stream"):
            return bedrock_converse.converse(self, request, parts[1],
                                             stream=parts[2] == "converse-stream")
        return None

    def _openai_route(self, route: str, request: dict[str, Any], model: str, *,
                      responses: bool = True) -> Json | Stream | None:
        if route == "/chat/completions":
            return openai_chat.chat_completion(self, request, model)
        if route == "/embeddings":
            return openai_embeddings.embeddings(request, model)
        if route == "/responses" and responses:
            return openai_responses.response(self, request, model)
        return None

    @staticmethod
    def _bearer_is(headers: dict[str, str], expected: str) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and token == expected

"""What goes on the wire: the recorded request, the three kinds of answer the handler writes
(JSON, a stream of pieces, a dropped connection), SSE and AWS event-stream framing, and each
protocol's error shape."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str  # with the query string, as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Json:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    content_type: str
    pieces: Iterable[tuple[bytes, bool]]  # (bytes, whether they carry answer content)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Drop:
    """Close the connection without answering, after ``hold`` seconds."""
    hold: float = 0.0


Reply = Json | Stream | Drop

# Pieces that carry answer content (text, thinking, tool arguments) are marked, so the "cut"
# fault can stop right after the first of them.
Marked = bytes | tuple[bytes, bool]


def content(piece: bytes) -> tuple[bytes, bool]:
    return piece, True


def marked(pieces: Iterator[Marked]) -> Iterator[tuple[bytes, bool]]:
    for piece in pieces:
        yield piece if isinstance(piece, tuple) else (piece, False)


def sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


SSE = "text/event-stream; charset=utf-8"


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


# -- errors ----------------------------------------------------------------------------------------

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


def error(protocol: str, status: int, message: str | None = None, *,
          param: str | None = None, code: str | None = None) -> Json:
    """``protocol``: openai, azure, anthropic or bedrock. ``param``/``code`` are OpenAI's fields
    (Azure puts ``code`` in its own field)."""
    text = message or f"{_phrase(status)} (a fault injected by the fake LLM server)."
    if protocol == "openai":
        if status == 401 and message is None:
            text = "Incorrect API key provided. You can find your API key in your settings."
        kind, default_code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500
                                                         else "invalid_request_error", None))
        return Json(status, {"error": {"message": text, "type": kind, "param": param,
                                       "code": code if code is not None else default_code}},
                    {"x-request-id": "req_" + uuid.uuid4().hex[:24]})
    if protocol == "azure":
        if status == 401 and message is None:
            text = ("Access denied due to invalid subscription key or wrong API endpoint. Make "
                    "sure to provide a valid key for an active subscription and use a correct "
                    "regional API endpoint for your resource.")
        return Json(status, {"error": {"code": code or str(status), "message": text}})
    if protocol == "anthropic":
        if status == 401 and message is None:
            text = "invalid x-api-key"
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500
                                     else "invalid_request_error")
        return Json(status, {"type": "error", "error": {"type": kind, "message": text}},
                    {"request-id": "req_" + uuid.uuid4().hex[:24]})
    if status == 403 and message is None:
        text = "The security token included in the request is invalid."
    kind = _BEDROCK_ERRORS.get(status, "InternalServerException" if status >= 500
                               else "ValidationException")
    return Json(status, {"message": text},
                {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                 "x-amzn-RequestId": str(uuid.uuid4())})


class BadRequest(Exception):  # noqa: N818 - it is the answer, not a failure of the fake
    """A request the real provider refuses: raised while reading it, answered as a 400 (or
    ``status``) in the protocol's error shape."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

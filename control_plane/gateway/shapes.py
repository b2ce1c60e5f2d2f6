"""What the drop-in request shapes share: pydantic models that refuse unknown fields, the
sentence a validation error becomes (422, naming the field), model names, tool names, tool-call
arguments and images. Each API has its module: ``openai_chat`` (Chat Completions),
``responses`` (the Responses API), ``anthropic_messages`` (Messages), ``embeddings``.

A field the gateway does not support is refused rather than silently dropped (a caller relying
on it must not get an answer that ignored it); fields that could carry personal data and have no
effect on the answer (``user``, ``safety_identifier``, ``metadata``, a message's ``name``) are
accepted and never forwarded. docs/gateway.md lists, per API and provider, what is accepted,
translated and refused."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenant_runtime.gateway.content import Image
from tenant_runtime.gateway.names import normalize_model_name
from tenant_runtime.text import escaped

DEFAULT_MAX_TOKENS = 4096
MAX_TOKENS_LIMIT = 200_000
MAX_MESSAGES = 1000
MAX_TOOLS = 128
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
DATA_URL = re.compile(r"^data:(image/[a-z+.-]+);base64,([A-Za-z0-9+/=\s]*)$", re.DOTALL)

M = TypeVar("M", bound=BaseModel)


class InvalidBody(Exception):
    """JSON that does not fit the shape: answered 422 with ``message``, naming ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TextPart(Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # Anthropic prompt caching: accepted, ignored


Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]


def _path(loc: tuple[Any, ...], body: Any, *, keep_last: bool) -> str:
    """An error's location as the caller wrote the body: the steps pydantic adds (a union's
    tag or member name) are left out by walking the body itself; a missing or unknown field,
    the last step, is kept though the body does not hold it."""
    steps: list[str] = []
    current = body
    for n, part in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(current, dict) and not last and part in (current.get("type"),
                                                               current.get("role")):
            continue  # a tagged union's tag, not a field
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif not (last and keep_last):
            continue
        steps.append(str(part))
    return ".".join(steps)


def _sentence(exc: ValidationError, body: Any) -> InvalidBody:
    # of a union's alternatives, the one that got furthest into the body says most: an unknown
    # or missing field inside a list of blocks rather than "should be a valid string"
    errors = exc.errors()
    error = max(errors, key=lambda e: (e["type"] in ("extra_forbidden", "missing"),
                                       len(e["loc"]), -errors.index(e)))
    where = _path(tuple(error["loc"]), body,
                  keep_last=error["type"] in ("missing", "extra_forbidden"))
    if error["type"] == "extra_forbidden":
        return InvalidBody(f"Unrecognized request argument supplied: {where}. docs/gateway.md "
                           "lists what the gateway accepts.", where)
    if error["type"] == "missing":
        return InvalidBody(f"Missing required parameter: {where}.", where)
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return InvalidBody(f"Invalid value for {where}: {ctx.get('tag')!s} is not supported "
                           f"here; expected {ctx.get('expected_tags')}.", where)
    if not where:
        return InvalidBody("The request body must be a JSON object.")
    return InvalidBody(f"Invalid value for {where}: {error['msg']}.", where)


def validated(shape: type[M], body: Any) -> M:
    """``body`` as ``shape``, its model name's NUL characters and unpaired surrogates written as
    escapes (such a name is no model's, and goes on to be refused by the allowlist, audited,
    like any other unlisted name; every other string was checked at the edge)."""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body = {**body, "model": escaped(body["model"])}
    try:
        return shape.model_validate(body)
    except ValidationError as exc:
        raise _sentence(exc, body) from None


def model_name(raw: str) -> str:
    """The normalized name; a name that cannot be one is kept as sent (stripped): it matches
    no route, so the gateway refuses it as off the allowlist (403, audited) like any other."""
    if not raw.strip():
        raise InvalidBody("The model must be a model name such as 'gpt-4o-mini'.", "model")
    return normalize_model_name(raw) or raw.strip()[:100]


def arguments_json(text: str, where: str) -> str:
    """Tool-call arguments as sent back in a conversation: JSON text of an object."""
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidBody(f"{where} must be JSON text of an object (the arguments the model "
                          "gave).", where) from None
    if not isinstance(value, dict):
        raise InvalidBody(f"{where} must be JSON text of an object.", where)
    return text


def image_block(url: str, detail: str | None, where: str) -> Image:
    """An image given by URL: an https URL, or a data: URL of base64 PNG, JPEG, GIF or WebP
    (which becomes base64 bytes with its media type)."""
    if url.startswith("data:"):
        found = DATA_URL.match(url)
        if found is None or found.group(1) not in IMAGE_TYPES:
            raise InvalidBody(f"{where} must be a data: URL of a base64 PNG, JPEG, GIF or WebP "
                              "image (data:image/png;base64,...).", where)
        data = re.sub(r"\s", "", found.group(2))
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidBody(f"{where} holds base64 that does not decode.", where) from None
        return Image("base64", data, found.group(1), detail)
    if not url.startswith("https://") or len(url) > 4096:
        raise InvalidBody(f"{where} must be an https URL (at most 4,096 characters) or a data: "
                          "URL.", where)
    return Image("url", url, None, detail)

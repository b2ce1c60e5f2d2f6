"""Form parsing: pydantic models with ``extra="forbid"``, so an unknown field is refused with a
sentence naming it. Handlers stay plain ``def`` functions run in the threadpool.

This is also the edge where body text is checked (tenant_runtime/text.py): ``read_form`` refuses
a field holding a NUL, an unpaired surrogate or another control character (tab, line feed and
carriage return excepted; a file read as text may hold controls, not NUL), and
``read_json_object`` a JSON string, key or value, that cannot be stored. Every form and every
``/api`` JSON body is read by one of the two, so no route can skip the check."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from control_plane.exceptions import (
    InvalidInput,
    PayloadTooLarge,
    UnstorableText,
    UnsupportedMediaType,
)
from tenant_runtime.text import first_unstorable, refusal, safe_path, unstorable, untypable

F = TypeVar("F", bound="Form")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Form(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)

    csrf_token: str = ""  # checked by SecurityMiddleware before the handler runs


JSON_MAX_BYTES = 64 * 1024


async def read_json_object(request: Request, max_bytes: int = JSON_MAX_BYTES
                           ) -> dict[str, Any]:
    """A JSON API's body: 415 for another content type, 413 past ``max_bytes`` (read no
    further), 422 for anything that is not one JSON object (too deeply nested included) or
    holding a string in it that cannot be stored (tenant_runtime/text.py)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType("Send a JSON body with Content-Type: application/json.")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"The request body is over {max_bytes // 1024} KiB.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    found = first_unstorable(body)
    if found is not None:
        raise UnstorableText(refusal(*found))
    return body


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], raw: dict[str, Any]) -> M:
    """``raw`` as ``model``, or 422 with a sentence naming the first field to fix. The JSON
    APIs call it once the caller is authenticated: a stranger learns nothing of the schema."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "form"
    if first["type"] == "extra_forbidden":
        return f"Unknown field '{field}': remove it and send the form again."
    if first["type"] == "missing":
        return f"The field '{field}' is required."
    return f"The field '{field}' is not valid: {first['msg']}."


def parse_form(model: type[F], data: dict[str, Any]) -> F:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


async def read_form(request: Request, model: type[F]) -> F:
    content_type = request.headers.get("content-type", "")
    if not content_type and not await request.body():
        return parse_form(model, {})  # an empty POST is an empty form
    if not content_type.startswith(FORM_TYPES):
        raise UnsupportedMediaType()
    # A model may take files as text, ``file_fields = ("name",)``, or as the uploaded file
    # itself, spooled to disk by Starlette, for a handler that streams it: ``upload_fields``
    # (both ClassVars). Uploads stay open until ``request.close()``, which the edge calls once
    # the handler has answered; everything else is closed here.
    # ``list_fields`` (a ClassVar) name fields sent once per value, as checkboxes of one name
    # are: they arrive as a list (empty when none is ticked); any other field keeps its last.
    uploads: tuple[str, ...] = getattr(model, "upload_fields", ())
    lists: tuple[str, ...] = getattr(model, "list_fields", ())
    form = await request.form()
    try:
        data: dict[str, Any] = {name: [] for name in lists}
        for key, value in form.multi_items():
            if key in lists and isinstance(value, str):
                data[key].append(value)
                continue
            if not isinstance(value, str):
                if key in uploads:
                    data[key] = value
                    continue
                if key not in getattr(model, "file_fields", ()):
                    raise InvalidInput(f"The field '{key}' does not take a file.")
                try:
                    value = (await value.read()).decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"The file in '{key}' is not UTF-8 text.") from None
                check_text(key, value, typed=False)
            else:
                check_text(key, value, typed=True)
            data[key] = value
    finally:
        if not uploads:
            await form.close()
    return parse_form(model, data)


def check_text(field: str, value: str, *, typed: bool) -> None:
    """Refuse (400) a form field's name or value that cannot be stored, or, for a ``typed``
    value (not a file read as text), that holds a control character."""
    what = untypable(field) or (untypable(value) if typed else unstorable(value))
    if what is not None:
        raise UnstorableText(refusal(safe_path(field), what))


def form_endpoint(model: type[F]) -> Callable[[Callable[[Request, F], Response]],
                                              Callable[[Request], Awaitable[Response]]]:
    """Wrap a plain ``def handler(request, form)``: parse and validate, then run it in the
    threadpool, so database work never blocks the event loop."""

    def decorate(handler: Callable[[Request, F], Response]
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            form = await read_form(request, model)
            return await run_in_threadpool(handler, request, form)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        endpoint.form_model = model  # type: ignore[attr-defined]  # for route-walking tests
        return endpoint

    return decorate

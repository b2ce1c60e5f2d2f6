"""OpenAI's Embeddings in and out: ``POST /v1/embeddings`` with a string or a list of strings.
Inputs are redacted like prompts (an embedding is never restored: the placeholders stand in the
vector's text); token arrays are refused, since the gateway cannot scan them for personal data.
Spend is reserved at the input price for an upper bound of the input's tokens and settled to
the provider's count; one audit event per call, as for chat."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from control_plane.gateway.shapes import InvalidBody, Strict, model_name, validated
from tenant_runtime.gateway.messages import EmbeddingRequest
from tenant_runtime.gateway.service import EmbeddingResult

MAX_INPUTS = 2048
MAX_DIMENSIONS = 3072  # the largest of the current embedding models (text-embedding-3-large)


class Embeddings(Strict):
    model: str = Field(max_length=200)
    input: str | list[str] = Field(description="text, or a list of texts: token arrays are "
                                               "refused, since they cannot be scanned")
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    user: str | None = None


def parse(body: Any) -> EmbeddingRequest:
    raw_input = body.get("input") if isinstance(body, dict) else None
    if isinstance(raw_input, list) and any(isinstance(item, int | list) for item in raw_input):
        raise InvalidBody("input must be text (a string or a list of strings): token arrays "
                          "cannot be scanned for personal data.", "input")
    parsed = validated(Embeddings, body)
    raw = parsed.input
    inputs = [raw] if isinstance(raw, str) else raw
    if not inputs:
        raise InvalidBody("input must hold at least one text.", "input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidBody(f"At most {MAX_INPUTS:,} inputs per request.", "input")
    if any(not text for text in inputs):
        raise InvalidBody("input must not hold an empty string.", "input")
    return EmbeddingRequest(model_name(parsed.model), tuple(str(t) for t in inputs),
                            parsed.dimensions, parsed.encoding_format)


def answer(request: EmbeddingRequest, result: EmbeddingResult) -> dict[str, Any]:
    return {"object": "list", "model": request.model,
            "data": [{"object": "embedding", "index": n, "embedding": vector}
                     for n, vector in enumerate(result.vectors)],
            "usage": {"prompt_tokens": result.usage.input_tokens,
                      "total_tokens": result.usage.input_tokens}}

"""OpenAI embeddings (``POST /v1/embeddings``, Azure's deployments and v1): input as a string,
a list of strings, a token array or a list of token arrays; ``encoding_format`` float or
base64 (little-endian float32, what the openai SDK asks for by default and decodes);
``dimensions``. Vectors are deterministic: derived from the sha256 of the input, unit length."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

from tests.fakes.llm.model import tokens_for
from tests.fakes.llm.wire import BadRequest, Json

DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
              "text-embedding-ada-002": 1536}
DEFAULT_DIMENSIONS = 1536


def vector(text: str, dimensions: int) -> list[float]:
    """The embedding of ``text``: sha256 blocks read as numbers in [-1, 1], normalised to unit
    length and rounded to float32 (so the float and base64 answers hold the same numbers)."""
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        raw += [(value / 32767.5) - 1.0 for value in struct.unpack(">16H", digest)]
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f",
                                                             *(v / norm for v in raw))))


def _inputs(value: Any) -> list[tuple[str, int]]:
    """(the text a vector is derived from, its tokens) per input."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a non-empty string, array of strings, array of "
                         "tokens or array of token arrays.", param="input")
    out = []
    for item in value:
        if isinstance(item, str) and item:
            out.append((item, tokens_for(len(item))))
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            out.append((json.dumps(item), len(item)))
        else:
            raise BadRequest("'input' must not contain empty strings or empty token arrays.",
                             param="input")
    return out


def embeddings(request: dict[str, Any], model: str) -> Json:
    inputs = _inputs(request.get("input"))
    size = DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    dimensions = request.get("dimensions")
    if dimensions is not None:
        if model == "text-embedding-ada-002":
            raise BadRequest("This model does not support specifying dimensions.",
                             param="dimensions")
        if not isinstance(dimensions, int) or not 1 <= dimensions <= size:
            raise BadRequest(f"'dimensions' must be an integer between 1 and {size}.",
                             param="dimensions")
        size = dimensions
    encoding = request.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest(f"Invalid value for 'encoding_format': '{encoding}'. Supported values "
                         "are: 'float' and 'base64'.", param="encoding_format")
    data = []
    for index, (text, _) in enumerate(inputs):
        values = vector(text, size)
        embedded: Any = values if encoding == "float" else base64.b64encode(
            struct.pack(f"<{size}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedded})
    tokens = sum(t for _, t in inputs)
    return Json(200, {"object": "list", "data": data, "model": model,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

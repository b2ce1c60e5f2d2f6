"""Redaction before egress, restoration on the way back (DESIGN.md, invariant 1).

``redact_request`` is the only way to build a ``RedactedRequest``, and provider adapters accept
nothing else: text cannot reach a provider without passing through here. The placeholder map
lives only in the returned ``Restorer``, in memory, for one request; it is never logged, stored
or audited (``counts`` says how many of each type, never which).

CONTRACT (the gateway and the adapters are written against it):
- ``Profile.named(name)`` for "off", "standard", "aggressive"; ``Profile.custom(...)`` for the
  tenant's own; ``Profile.from_settings(...)`` for stored settings; all frozen.
- ``redact_request(request: ChatRequest, profile: Profile) -> (RedactedRequest, Restorer)``.
- ``RedactedRequest``: every field of ``ChatRequest``, the texts redacted (walk.py says which),
  and ``counts`` (entities per type, e.g. {"EMAIL": 2}).
- ``redact_embedding(request: EmbeddingRequest, profile) -> RedactedEmbedding`` (inputs
  redacted; nothing to restore).
- ``Restorer.restore(text) -> str`` and ``Restorer.restore_json(text) -> str`` (inside JSON
  text: each original is written as JSON string content, quotes and backslashes escaped);
  ``Restorer.stream(json=False) -> StreamRestorer`` with ``feed(chunk) -> str`` and
  ``flush() -> str`` for streamed answers and tool-call arguments, where a placeholder may be
  split across chunks.
- ``redact_text(text, profile) -> RedactionResult`` (``text``, ``entities``) for the CLI.

How a text is redacted: it is normalized (normalize.py: percent-escapes and HTML character
references decoded, NFKC, zero-width characters removed, dashes, digits of every script and
Cyrillic or Greek look-alike letters folded, with a map back to the original); the tenant's
terms and patterns (custom.py), the structured detectors (detectors.py, one compiled
alternation) and the name scan (names.py) report spans in the normalized text; so does the
base64 layer (encoded.py): a chunk whose decoded text holds a value is one entity, whole;
overlapping spans are merged into one entity, so no part of a value escapes; each entity is
mapped back to the original text and replaced there by its placeholder (placeholders.py),
leaving every other character as it was. The placeholder stands for the original characters,
escapes and all, so the answer gets back exactly what the caller wrote.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tenant_runtime.gateway.messages import ChatRequest, EmbeddingRequest
from tenant_runtime.redaction import custom, encoded
from tenant_runtime.redaction.exceptions import RedactionTimeout
from tenant_runtime.redaction.names import find_names
from tenant_runtime.redaction.normalize import normalize
from tenant_runtime.redaction.placeholders import (
    ENTITY_TYPES,
    PlaceholderBook,
    Restorer,
    StreamRestorer,
)
from tenant_runtime.redaction.profiles import DETECTORS, PROFILES, Profile
from tenant_runtime.redaction.request import RedactedEmbedding, RedactedRequest, _build
from tenant_runtime.redaction.walk import visit_request

__all__ = ["DETECTORS", "ENTITY_TYPES", "PROFILES", "Entity", "Profile", "RedactedEmbedding",
           "RedactedRequest", "RedactionResult", "RedactionTimeout", "Restorer", "StreamRestorer",
           "redact_embedding", "redact_request", "redact_text"]

# when spans of two types overlap and are as long as each other, the merged entity takes the
# type listed first
_PRIORITY = {t: n for n, t in enumerate(("TERM", "PATTERN", "EMAIL", "CARD", "SSN", "EIN",
                                         "PHONE", "IP", "DOB", "ADDRESS", "PERSON"))}


@dataclass(frozen=True, slots=True)
class Entity:
    """A value found in a text: offsets in the original text, ``end`` exclusive."""

    type: str
    start: int
    end: int
    placeholder: str


@dataclass(frozen=True)
class RedactionResult:
    text: str
    entities: list[Entity]
    restorer: Restorer = field(repr=False, compare=False)


def _spans(text: str, profile: Profile, depth: int = 0) -> list[tuple[int, int, str]]:
    """(start, end, type) of every value in ``text`` (normalized), overlapping or not;
    ``depth`` counts the base64 layers ``text`` came through."""
    spans: list[tuple[int, int, str]] = []
    terms = custom.terms_pattern(profile.terms)
    if terms is not None:
        spans.extend((s, e, "TERM") for s, e in custom.find_terms(terms, text))
    for pattern in profile.patterns:
        spans.extend((s, e, "PATTERN") for s, e in custom.find_pattern(pattern, text))
    spans.extend(profile.structured.find(text))
    listed, pairs = "person" in profile.detectors, "name_pair" in profile.detectors
    if listed or pairs:
        spans.extend((s, e, "PERSON") for s, e in find_names(text, listed=listed, pairs=pairs))
    if depth < encoded.MAX_DEPTH:
        for start, end, decoded in encoded.base64_chunks(text):
            inner = _merge(_spans(normalize(decoded).text, profile, depth + 1))
            if inner:
                kind = max(inner, key=lambda span: (span[1] - span[0], -_PRIORITY[span[2]]))[2]
                spans.append((start, end, kind))
    return spans


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans become one, typed by its longest part (ties: ``_PRIORITY``)."""
    merged: list[tuple[int, int, str]] = []
    best: tuple[int, int] = (0, 0)
    for start, end, kind in sorted(spans):
        rank = (end - start, -_PRIORITY[kind])
        if merged and start < merged[-1][1]:
            last_start, last_end, last_kind = merged[-1]
            if rank > best:
                best, last_kind = rank, kind
            merged[-1] = (last_start, max(last_end, end), last_kind)
        else:
            merged.append((start, end, kind))
            best = rank
    return merged


def _redact(text: str, profile: Profile, book: PlaceholderBook) -> tuple[str, list[Entity]]:
    if not text or profile.name == "off":
        return text, []
    norm = normalize(text)
    found = _merge(_spans(norm.text, profile))
    if not found:
        return text, []
    pieces: list[str] = []
    entities: list[Entity] = []
    done = 0  # original text before this offset is written out
    for n_start, n_end, kind in found:
        start, end = norm.original_span(n_start, n_end)
        if start < done:  # two entities met inside one normalized character: join them
            previous = entities.pop()
            pieces.pop()
            start, kind = previous.start, previous.type
        pieces.append(text[done:start])
        placeholder = book.placeholder(kind, text[start:end])
        pieces.append(placeholder)
        entities.append(Entity(kind, start, end, placeholder))
        done = end
    pieces.append(text[done:])
    return "".join(pieces), entities


def redact_text(text: str, profile: Profile) -> RedactionResult:
    book = PlaceholderBook((text,))
    redacted, entities = _redact(text, profile, book)
    return RedactionResult(redacted, entities, Restorer(book.originals))


def redact_request(request: ChatRequest, profile: Profile) -> tuple[RedactedRequest, Restorer]:
    """The request with every text redacted (walk.py lists where text can be), and the
    ``Restorer`` for the answer. Raises ``RedactionTimeout`` when a custom pattern runs past its
    bound."""
    texts: list[str] = []

    def collect(text: str) -> str:
        texts.append(text)
        return text

    visit_request(request, collect)
    book = PlaceholderBook(texts)
    counts: Counter[str] = Counter()

    def redact(text: str) -> str:
        redacted, entities = _redact(text, profile, book)
        counts.update(e.type for e in entities)
        return redacted

    out = visit_request(request, redact)
    built = _build(RedactedRequest, model=out.model, messages=out.messages,
                   max_tokens=out.max_tokens, temperature=out.temperature, top_p=out.top_p,
                   stop=out.stop, stream=out.stream, tools=out.tools,
                   tool_choice=out.tool_choice, parallel_tool_calls=out.parallel_tool_calls,
                   output=out.output, n=out.n, sampling=out.sampling, counts=dict(counts))
    return built, Restorer(book.originals)


def redact_embedding(request: EmbeddingRequest, profile: Profile) -> RedactedEmbedding:
    """The inputs redacted like prompt text. An embedding is not restored: the placeholders
    stand in the vector's text for good."""
    book = PlaceholderBook(request.inputs)
    counts: Counter[str] = Counter()
    inputs = []
    for text in request.inputs:
        redacted, entities = _redact(text, profile, book)
        counts.update(e.type for e in entities)
        inputs.append(redacted)
    return _build(RedactedEmbedding, model=request.model, inputs=tuple(inputs),
                  dimensions=request.dimensions, encoding_format=request.encoding_format,
                  counts=dict(counts))

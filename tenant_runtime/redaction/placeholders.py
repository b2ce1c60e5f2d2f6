"""Placeholders (``[EMAIL_1]``, ``[PERSON_2]``...) and their restoration.

Within one request the same value gets the same placeholder, numbered per type from 1. A
placeholder that already occurs in the request's own text is never handed out (the number is
skipped), so the model's copy of the caller's literal "[EMAIL_1]" is never mistaken for ours and
``restore(redact(text)) == text`` holds for any text. The map lives in the ``Restorer`` only,
for one request, in memory: it is never logged or stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

ENTITY_TYPES = ("EMAIL", "PHONE", "SSN", "EIN", "CARD", "PERSON", "ADDRESS", "IP", "DOB", "TERM",
                "PATTERN")
PLACEHOLDER = re.compile(r"\[(?:" + "|".join(ENTITY_TYPES) + r")_\d+\]")
_LONGEST_TYPE = max(len(t) for t in ENTITY_TYPES)


class PlaceholderBook:
    """Hands out placeholders for one request and remembers what they stand for."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._taken = {m for text in texts if "[" in text for m in PLACEHOLDER.findall(text)}
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: dict[str, int] = {}
        self.originals: dict[str, str] = {}  # placeholder -> original text

    def placeholder(self, entity_type: str, value: str) -> str:
        key = (entity_type, value)
        found = self._by_value.get(key)
        if found is not None:
            return found
        n = self._next.get(entity_type, 1)
        candidate = f"[{entity_type}_{n}]"
        while candidate in self._taken:
            n += 1
            candidate = f"[{entity_type}_{n}]"
        self._next[entity_type] = n + 1
        self._by_value[key] = candidate
        self.originals[candidate] = value
        return candidate


class Restorer:
    """Puts the originals back into a provider's answer. Unknown bracket tokens stay as they
    are. One pass over the text, however many placeholders there are."""

    __slots__ = ("_originals", "_escaped", "_longest")

    def __init__(self, originals: Mapping[str, str]) -> None:
        self._originals = dict(originals)  # placeholder -> original text
        # the same, written as the content of a JSON string: quotes, backslashes and control
        # characters escaped, so a restored value cannot end the string or inject JSON
        self._escaped = {p: json.dumps(v, ensure_ascii=False)[1:-1]
                         for p, v in self._originals.items()}
        self._longest = max((len(p) for p in self._originals), default=0)

    def __repr__(self) -> str:  # never the originals
        return f"<Restorer of {len(self._originals)} placeholders>"

    def placeholders(self) -> list[str]:
        """The placeholders it restores (a later book of the same exchange skips them)."""
        return list(self._originals)

    def merged(self, later: Restorer) -> Restorer:
        """One restorer for both: ``later``'s book was made skipping this one's placeholders,
        so none stands for two values."""
        return Restorer({**self._originals, **later._originals})

    def _original(self, m: re.Match[str]) -> str:
        token = m.group()
        return self._originals.get(token, token)

    def _original_escaped(self, m: re.Match[str]) -> str:
        token = m.group()
        return self._escaped.get(token, token)

    def restore(self, text: str) -> str:
        if not self._originals or "[" not in text:
            return text
        return PLACEHOLDER.sub(self._original, text)

    def restore_json(self, text: str) -> str:
        """Restore inside JSON text (tool-call arguments, structured output): placeholders
        appear inside JSON strings, so each original goes back escaped as string content."""
        if not self._originals or "[" not in text:
            return text
        return PLACEHOLDER.sub(self._original_escaped, text)

    def stream(self, *, json: bool = False) -> StreamRestorer:
        return StreamRestorer(self, json=json)

    def _pending_start(self, text: str) -> int:
        """Where a trailing fragment that may still become a known placeholder starts, or
        ``len(text)`` if there is none."""
        start = text.rfind("[")
        if start < 0 or len(text) - start >= self._longest:
            return len(text)
        fragment = text[start:]
        if "]" not in fragment and any(p.startswith(fragment) for p in self._originals):
            return start
        return len(text)


class StreamRestorer:
    """Restores a streamed answer chunk by chunk. ``feed`` returns what is safe to emit now,
    holding back a trailing fragment that may be the start of a placeholder ("[EMA");
    ``flush`` returns the rest at the end of the stream."""

    __slots__ = ("_restorer", "_pending", "_restore")

    def __init__(self, restorer: Restorer, *, json: bool = False) -> None:
        self._restorer = restorer
        self._pending = ""
        self._restore = restorer.restore_json if json else restorer.restore

    def __repr__(self) -> str:
        return "<StreamRestorer>"

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk if self._pending else chunk
        cut = self._restorer._pending_start(text)
        self._pending = text[cut:]
        return self._restore(text[:cut])

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self._restore(text)

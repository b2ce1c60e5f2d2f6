"""Redacting a tool call's arguments (a JSON object) before they leave for an external MCP
upstream, and restoring the placeholders in what comes back. Every string value, at any depth,
passes the same redaction as a chat message (``tenant_runtime.redaction._redact``); keys and
non-string values are left as they are. One ``PlaceholderBook`` for the whole object, so the
same value gets the same placeholder wherever it occurs; the ``Restorer`` lives in memory for
one call only."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tenant_runtime.redaction import _redact
from tenant_runtime.redaction.placeholders import PlaceholderBook, Restorer
from tenant_runtime.redaction.profiles import Profile


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def redact_arguments(arguments: dict[str, Any], profile: Profile, *,
                     after: Restorer | None = None
                     ) -> tuple[dict[str, Any], Restorer, dict[str, int]]:
    """The arguments with every string redacted, the ``Restorer`` for the result, and the
    count of entities per type. ``after``: the restorer of an earlier redaction in the same
    exchange (a call's arguments, then what the agent's client answered during it): its
    placeholders are not handed out again, and the restorer returned restores both."""
    book = PlaceholderBook([*_strings(arguments), *(after.placeholders() if after else [])])
    counts: Counter[str] = Counter()

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            text, entities = _redact(value, profile, book)
            counts.update(e.type for e in entities)
            return text
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    redacted = walk(arguments)
    restorer = Restorer(book.originals)
    return redacted, after.merged(restorer) if after else restorer, dict(counts)


def restore_value(value: Any, restorer: Restorer) -> Any:
    """``value`` (a tool result's JSON) with every string's placeholders restored."""
    if isinstance(value, str):
        return restorer.restore(value)
    if isinstance(value, dict):
        return {key: restore_value(item, restorer) for key, item in value.items()}
    if isinstance(value, list):
        return [restore_value(item, restorer) for item in value]
    return value

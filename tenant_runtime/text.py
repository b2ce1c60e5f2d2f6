"""What text Magistrate accepts, decided in one place and applied once per input kind at the
edge (control_plane/web/inputs.py: form bodies, JSON bodies, query strings and paths).

Two rules:

- **Storable** (every input): no NUL character, which a Postgres ``text`` or ``jsonb`` value
  cannot hold, and no unpaired surrogate (``"\\ud800"`` in JSON, which Python's ``json``
  module accepts), which cannot be encoded as UTF-8 and so cannot be stored, logged or sent
  anywhere. A surrogate *pair* in JSON decodes to one character and is fine.
- **Typed** (what a person types into a page or an address bar: form fields, query
  parameters, path segments): storable, and no other control character either, tab, line
  feed and carriage return excepted (C0 controls, DEL and the C1 controls U+0080–U+009F). They
  cannot be typed, are invisible on a page, and in a name or an address they can rewrite what
  a terminal shows. JSON bodies (programs) may carry them: a prompt or a payload can hold an
  escape sequence legitimately, and JSON escapes them again on the way out.

A value that breaks a rule is refused (400) with a sentence naming the field and the
character, never repeating the value (it is unprintable, and could be anything).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNTYPABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _describe(char: str) -> str:
    if char == "\x00":
        return "a NUL character"
    if "\ud800" <= char <= "\udfff":
        return "an unpaired surrogate (a broken UTF-16 escape such as \\ud800)"
    return f"a control character (U+{ord(char):04X})"


def unstorable(text: str) -> str | None:
    """What in ``text`` cannot be stored, as a phrase ("a NUL character"), or None."""
    found = _UNSTORABLE.search(text)
    return None if found is None else _describe(found.group())


def untypable(text: str) -> str | None:
    """What in ``text`` a typed field may not hold (the storable rule included), or None."""
    found = _UNTYPABLE.search(text)
    return None if found is None else _describe(found.group())


def escaped(text: str) -> str:
    """``text`` with every character that cannot be stored written as its escape
    (``"x\\u0000"``): storable, and never equal to a name that holds none."""
    return _UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def refusal(name: str, what: str, *, kind: str = "field") -> str:
    """The sentence a refused value gets: ``kind`` is "field", "query parameter", "header"."""
    return f"The {kind} '{name}' contains {what}, which cannot be stored; remove it."


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, keys included, with its path (``messages.0.content``)."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str):
                yield path, key
            yield from _strings(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}.{index}" if where else str(index))


def first_unstorable(value: Any, *, skip: frozenset[str] = frozenset()
                     ) -> tuple[str, str] | None:
    """The path and the phrase of the first string in a JSON value that cannot be stored,
    or None. ``skip``: paths decided elsewhere (the gateway's model name)."""
    for where, text in _strings(value, ""):
        if where in skip:
            continue
        what = unstorable(text)
        if what is not None:
            return safe_path(where), what
    return None


def safe_path(where: str) -> str:
    """A path for a sentence: a key may itself hold what it is refused for."""
    return _UNTYPABLE.sub("?", where)[:200]


class UnstorableJson(ValueError):
    """JSON text that parsed, holding a string that cannot be stored; ``args[0]`` is the
    sentence."""


def loads_storable(raw: str | bytes, *, field: str = "body") -> Any:
    """``json.loads``, refusing a string that cannot be stored (``UnstorableJson``, with a
    sentence naming ``field`` and the path inside it). Every JSON the platform parses from a
    caller goes through here or through ``first_unstorable``. Raises ``ValueError`` (or
    ``RecursionError``) for text that is not JSON, as ``json.loads`` does."""
    value = json.loads(raw)
    found = first_unstorable(value)
    if found is not None:
        where, what = found
        raise UnstorableJson(refusal(f"{field}.{where}" if where else field, what))
    return value

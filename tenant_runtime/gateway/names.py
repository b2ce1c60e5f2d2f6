"""Model names as the allowlist compares them. A caller's name is NFKC-normalized, stripped of
invisible characters and surrounding whitespace, and lowercased, so "GPT-4o ", "ｇｐｔ-4o" and
"gpt\u200b-4o" all mean the route "gpt-4o" and get that route's decision; a name that is not
a plausible model name after that is refused like any other unlisted model. What is sent to a
provider is always the route's own model id, never the caller's string."""

from __future__ import annotations

import re
import unicodedata

_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._:/@+-]{0,99}")


def normalize_model_name(raw: object) -> str | None:
    """The canonical form of a model name, or None when it cannot be one."""
    if not isinstance(raw, str):
        return None
    name = _INVISIBLE.sub("", unicodedata.normalize("NFKC", raw)).strip().lower()
    return name if MODEL_NAME.fullmatch(name) else None


def shown(raw: object) -> str:
    """A caller's model name, safe to put in an error sentence."""
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text[:100])

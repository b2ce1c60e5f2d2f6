"""The description scan: what an upstream says of a tool is read by the model, so a tool
description is a place to hide instructions for it (tool poisoning). Each finding is a flag shown
in the catalogue; the scan does not decide, an Admin does.

- ``invisible``: zero-width, bidirectional-control or tag characters (text a person reviewing the
  catalogue does not see, the model does);
- ``html-comment``: ``<!-- ... -->``;
- ``instructions``: text aimed at the model rather than describing the tool ("ignore previous
  instructions", "do not tell the user", "<important>", "before using this tool, read ...");
- ``encoded``: a base64 run of 40 characters or more (a payload to decode).

The schema's own descriptions (``properties.*.description``) are scanned as well."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
                       "\U000e0000-\U000e007f]")
HTML_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)
INSTRUCTIONS = re.compile(
    r"ignore (all |any )?(previous|prior|above|earlier) (instructions|prompts?)"
    r"|disregard (all |any )?(previous|prior|the above)"
    r"|do not (tell|inform|mention|show)[^.]{0,40}\buser\b"
    r"|don'?t (tell|inform|mention)[^.]{0,40}\buser\b"
    r"|without (telling|informing|asking) the user"
    r"|<\s*/?\s*(important|system|instructions?|secret)\s*>"
    r"|\byou (must|should) (always )?(first )?(read|send|call|include|pass)\b"
    r"|before (using|calling) (this|any) tool"
    r"|\bsystem prompt\b"
    r"|~/\.ssh|id_rsa|\.env\b|mcp\.json",
    re.I)
BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
FLAGS = ("invisible", "html-comment", "instructions", "encoded")


def _texts(description: str, schema: Any) -> Iterator[str]:
    yield description
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("description", "title") and isinstance(item, str):
                    yield item
                else:
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)


def scan(description: str, schema: Any = None) -> list[str]:
    """The flags raised by a tool's description and its schema's descriptions, in ``FLAGS``
    order."""
    found: set[str] = set()
    for text in _texts(description or "", schema):
        if INVISIBLE.search(text):
            found.add("invisible")
        if HTML_COMMENT.search(text):
            found.add("html-comment")
        if INSTRUCTIONS.search(INVISIBLE.sub("", text)):
            found.add("instructions")
        if BASE64.search(text):
            found.add("encoded")
    return [flag for flag in FLAGS if flag in found]

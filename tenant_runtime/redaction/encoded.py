"""Base64 chunks in a text, decoded, so that a value written in base64 is redacted too.

Percent-escapes and HTML character references are decoded in normalize.py, character by
character, because each decoded character maps back to its escape. Base64 does not map so:
four characters write three bytes. So a chunk of base64 (standard or URL-safe alphabet, padded
or not, at least ``MIN_LENGTH`` characters) is decoded whole; when it decodes to printable UTF-8,
``__init__`` runs every detector of the profile over the decoded text (which may itself be
encoded: ``MAX_DEPTH`` layers are read) and, if anything is found, the whole chunk becomes one
entity. The placeholder stands for the chunk as written, so restoring gives it back.

Words that cannot be base64 of text are skipped before decoding: those without a capital
letter ("configuration", "follow-up", "2024-01-15"), and words of letters only in capitals or
capitalized ("README", "Kubernetes"). Base64 of a value of at least six bytes ("a@b.io") has eight
characters or more.
"""

from __future__ import annotations

import binascii
import re

MIN_LENGTH = 8
MAX_DEPTH = 2
# A chunk starts and ends next to no word character, "+", "/" or "-" (nor ends before "=").
# Both are checked after the match, not by lookarounds: a lookbehind at every position costs
# more than the scan, and a lookahead that fails would make the engine retry the run from each
# of its characters (quadratic: "AAAA…Aé").
_CANDIDATE = re.compile(rf"[A-Za-z0-9+/_-]{{{MIN_LENGTH},}}={{0,2}}")
_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def base64_chunks(text: str) -> list[tuple[int, int, str]]:
    """(start, end, decoded text) of each chunk of ``text`` that decodes to printable text."""
    if len(text) < MIN_LENGTH:
        return []
    found: list[tuple[int, int, str]] = []
    for m in _CANDIDATE.finditer(text):
        start, end = m.span()
        if start and _joins(text[start - 1]) or end < len(text) and \
                (_joins(text[end]) or text[end] == "="):
            continue
        decoded = decode(m.group())
        if decoded is not None:
            found.append((m.start(), m.end(), decoded))
    return found


def _joins(ch: str) -> bool:
    """Whether ``ch`` next to a chunk makes it part of something longer ("=" before it does
    not: "payload=<chunk>")."""
    return ch.isalnum() or ch in "_+/-"


def decode(token: str) -> str | None:
    """The text ``token`` is the base64 of, or None when it is not printable text."""
    body = token.rstrip("=")
    if body.lower() == body or (body.isalpha() and (body.isupper() or body[1:].islower())):
        return None  # base64 of six bytes of text or more has capitals, and is no word
    data = body.encode("ascii")
    if b"-" in data or b"_" in data:
        if b"+" in data or b"/" in data:
            return None  # two alphabets in one chunk: not base64
        data = data.translate(_URL_SAFE)
    if len(data) % 4 == 1:  # one character too many: padding anchors the end, else the start
        data = data[1:] if token.endswith("=") else data[:-1]
    data += b"=" * (-len(data) % 4)
    try:
        text = binascii.a2b_base64(data, strict_mode=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if len(text) < 6 or not text.replace("\n", " ").replace("\t", " ").replace("\r", " ") \
            .isprintable():
        return None
    return text

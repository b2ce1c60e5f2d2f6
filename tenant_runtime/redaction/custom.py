"""A tenant's own terms (literal, case-insensitive: a project code name, a customer's name) and
regular expressions, validated when the profile is built and run with a time bound.

Patterns are compiled with the ``regex`` module and each runs under ``PATTERN_TIMEOUT_MS`` per
text: a catastrophic one (``(a+)+$`` on "aaaa…b") raises ``RedactionTimeout`` naming it, and the
gateway refuses the call rather than send text it could not redact.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING

from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.redaction.exceptions import RedactionTimeout
from tenant_runtime.redaction.normalize import normalize

if TYPE_CHECKING:
    import regex

MAX_PATTERNS = 20
MAX_PATTERN_LENGTH = 200
MAX_TERMS = 200
MAX_TERM_LENGTH = 200
PATTERN_TIMEOUT_MS = 50

# texts on which a pattern must not match the empty string anywhere
_EMPTY_PROBES = ("", "a", "Ab 1-2 x.y@z\n", "  \t", "0123456789")


def check_terms(terms: tuple[str, ...]) -> None:
    if len(terms) > MAX_TERMS:
        raise TenantInvalidInput(f"A redaction profile holds at most {MAX_TERMS} custom terms; "
                                 f"remove {len(terms) - MAX_TERMS} of the {len(terms)}.")
    for n, term in enumerate(terms, 1):
        if not term.strip():
            raise TenantInvalidInput(f"Custom term {n} is empty; remove it or give the word "
                                     "to redact.")
        if len(term) > MAX_TERM_LENGTH:
            raise TenantInvalidInput(f"Custom term {n} is longer than {MAX_TERM_LENGTH} "
                                     "characters; shorten it.")


def check_patterns(patterns: tuple[str, ...]) -> None:
    if len(patterns) > MAX_PATTERNS:
        raise TenantInvalidInput(f"A redaction profile holds at most {MAX_PATTERNS} custom "
                                 f"patterns; remove {len(patterns) - MAX_PATTERNS} of the "
                                 f"{len(patterns)}.")
    for n, pattern in enumerate(patterns, 1):
        if not pattern:
            raise TenantInvalidInput(f"Custom pattern {n} is empty; remove it or write the "
                                     "regular expression to redact.")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise TenantInvalidInput(f"Custom pattern {n} is longer than {MAX_PATTERN_LENGTH} "
                                     "characters; shorten it.")
        compiled = _compile(pattern, n)
        for probe in _EMPTY_PROBES:
            try:
                empty = any(m.start() == m.end()
                            for m in compiled.finditer(probe, timeout=PATTERN_TIMEOUT_MS / 1000))
            except TimeoutError:
                raise RedactionTimeout(pattern, PATTERN_TIMEOUT_MS) from None
            if empty:
                raise TenantInvalidInput(f"Custom pattern {n} ({pattern!r}) can match an empty "
                                         "string; make it require at least one character "
                                         "(for example + instead of *).")


def _compile(pattern: str, n: int) -> regex.Pattern[str]:
    import regex  # imported when first needed: the `magistrate` command starts faster

    try:
        return compiled_pattern(pattern)
    except regex.error as exc:
        raise TenantInvalidInput(f"Custom pattern {n} ({pattern!r}) is not a valid regular "
                                 f"expression ({exc}); correct it.") from None


@lru_cache(maxsize=512)
def compiled_pattern(pattern: str) -> regex.Pattern[str]:
    import regex

    return regex.compile(pattern, regex.VERSION0)


@lru_cache(maxsize=128)
def terms_pattern(terms: tuple[str, ...]) -> regex.Pattern[str] | None:
    """One alternation of the terms, longest first, whole words where a term starts or ends
    with a word character."""
    if not terms:
        return None
    import regex

    parts = []
    # the texts are matched after normalization, so the terms are normalized the same way
    normalized = {normalize(t).text.strip() for t in terms}
    for term in sorted(normalized, key=len, reverse=True):
        escaped = regex.escape(term)
        if term[0].isalnum() or term[0] == "_":
            escaped = r"(?<!\w)" + escaped
        if term[-1].isalnum() or term[-1] == "_":
            escaped += r"(?!\w)"
        parts.append(escaped)
    return regex.compile("|".join(parts), regex.IGNORECASE | regex.VERSION0)


def find_terms(pattern: regex.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


def find_pattern(pattern: str, text: str) -> list[tuple[int, int]]:
    """The non-empty matches of ``pattern`` in ``text``, all of them within the time bound."""
    compiled = compiled_pattern(pattern)
    budget = PATTERN_TIMEOUT_MS / 1000
    deadline = time.perf_counter() + budget
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos <= len(text):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise RedactionTimeout(pattern, PATTERN_TIMEOUT_MS)
        try:
            m = compiled.search(text, pos, timeout=remaining)
        except TimeoutError:
            raise RedactionTimeout(pattern, PATTERN_TIMEOUT_MS) from None
        if m is None:
            break
        if m.end() > m.start():
            spans.append(m.span())
            pos = m.end()
        else:
            pos = m.end() + 1
    return spans

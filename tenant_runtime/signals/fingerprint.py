"""A signal's ``template``: what stays of its title once everything that differs between two
instances of the same event is masked. Clustering (signals/clustering.py) groups signals whose
templates are equal, so "Disk 91% full on db-7 (10.0.3.12)" and "Disk 97% full on db-2
(10.0.3.40)" fall together, and no personal value ever reaches the plain ``template`` column.

``template_of(title)``, a pure function, does, in this order:

1. redact the title with the redaction module under the ``standard`` profile (e-mails, phone
   numbers, card numbers, SSNs, EINs, people's names), each value replaced by ``<type>``
   (``<email>``, ``<person>``...): the numbered placeholders of one text (``[EMAIL_2]``) would
   make two instances differ;
2. mask UUIDs (``<uuid>``), timestamps and dates (``<time>``), IPv4 and IPv6 addresses
   (``<ip>``), hex ids of 6 or more hex digits with at least one digit, or ``0x``-prefixed
   (``<hex>``), then any other number (``<n>``, with its decimals and thousands separators);
3. lowercase, collapse whitespace to one space, strip, and cut to ``TEMPLATE_MAX_CHARS``.
"""

from __future__ import annotations

import re

from tenant_runtime.redaction import Profile, redact_text
from tenant_runtime.redaction.placeholders import PLACEHOLDER

TEMPLATE_MAX_CHARS = 300  # the column's length
PROFILE = Profile.named("standard")

_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
     "<uuid>"),
    # 2024-05-01T10:20:30.123Z, 2024-05-01 10:20:30+02:00, 2024/05/01, 10:20:30, 10:20
    (re.compile(r"\b\d{4}[-/]\d{1,2}[-/]\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
                r"(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|\b)"), "<time>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"(?<![\w:])(?=[0-9a-f:]*[0-9a-f])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}"
                r"(?![\w:])", re.I), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,}\b", re.I), "<hex>"),
    (re.compile(r"\d+(?:[.,]\d+)*"), "<n>"),
)
_SPACE = re.compile(r"\s+")


def _type_of(match: re.Match[str]) -> str:
    return "<" + match.group(0)[1:].rsplit("_", 1)[0].lower() + ">"


def template_of(title: str) -> str:
    """The title with personal values redacted and variable parts masked (module docstring)."""
    text = redact_text(title, PROFILE).text
    text = PLACEHOLDER.sub(_type_of, text)
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return _SPACE.sub(" ", text.lower()).strip()[:TEMPLATE_MAX_CHARS]

"""The structured detectors: e-mail, phone, SSN, EIN, payment card, street address, IP address
and date of birth. The values that start with a digit, "+" or "(" (and IPv6 addresses) are
compiled into one alternation per set of detectors, so the text is scanned once for them all;
e-mail addresses are looked for only around an "@", dates of birth only after a cue word. Matches
the shape allows but the value does not (an SSN in a range never issued, a card number failing
Luhn, an IPv6-looking time) are dropped after the match, and the scan resumes inside them.

The patterns are ours and written so that none backtracks badly (every repetition is bounded or
made unambiguous by a required separator), which is why they run under the standard ``re``
module without a time bound; tenants' own patterns go through ``custom.py`` instead.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

# detector name -> the entity type it reports
ENTITY_TYPES = {"email": "EMAIL", "phone": "PHONE", "ssn": "SSN", "ein": "EIN", "card": "CARD",
                "address": "ADDRESS", "ip": "IP", "dob": "DOB"}

# The local part is searched from at most 64 characters before the "@" (``_emails``), so a run
# of dots or dashes before it cannot push its start out of reach; the address ends where its
# top-level domain does, whatever follows ("jane@example.com--", "_", "-x", "1").
_EMAIL = (r"(?P<email>[\w.%+'-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){0,8}"
          r"\.[^\W\d_]{2,24})(?![^\W\d_])")

_CARD = (r"(?P<card>(?<![\w+-])(?:\d{13,19}"
         r"|\d{4}(?P<cs1>[ ./-])\d{4}(?P=cs1)\d{4}(?P=cs1)\d{1,4}(?:(?P=cs1)\d{1,3})?"
         r"|\d{4}(?P<cs2>[ ./-])\d{6}(?P=cs2)\d{4,5}))(?!\w)")

_SSN = (r"(?P<ssn>(?<![\w-])(?<!\d[./])\d{3}(?P<ss>[./-])\d{2}(?P=ss)\d{4})"
        r"(?![\w-])(?![./]\d)")
_SSN_CONTEXT = r"(?P<ssnctx>(?<![\w-])(?:\d{3} \d{2} \d{4}|\d{9}))(?![\w-])"  # needs a cue
_EIN = r"(?P<ein>(?<![\w-])\d{2}-\d{7})(?![\w-])"

_PHONE = (r"(?P<phone>(?<![\w+])(?:\+?1[ ./-]?)?(?:\(\d{3}\)[ ./-]?|\d{3}[ ./-]?)\d{3}[ ./-]?"
          r"\d{4})(?!\w|[./-]\d)")
_INTL_PHONE = (r"(?P<intl>(?<![\w+])\+(?:\d{8,15}|[1-9]\d{0,2}(?:[ ./-]?\(\d{1,4}\)\d{0,6})?"
               r"(?:[ ./-]\d{1,8}){1,5}))(?!\w|[./-]\d)")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?P<ipv4>(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}})(?!\w|\.\d)"
_IPV6 = r"(?P<ipv6>(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w:])"

_STREET_TYPE = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way"
                r"|Place|Pl|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail"
                r"|Trl|Alley|Plaza)")
_ADDRESS = (r"(?P<address>(?<![\w-])\d{1,6}[A-Za-z]?"
            r"(?: (?:[NSEW]|N[EW]|S[EW]|North|South|East|West)\.?)?"
            r"(?: (?:[A-Z][a-z]+|\d{1,4}(?:st|nd|rd|th))){1,3}"
            rf" {_STREET_TYPE}\b\.?"
            r"(?:,? (?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|Room|Rm)\.? ?#? ?[\w-]{1,6}"
            r"|,? # ?[\w-]{1,6})?)(?!\w)")

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]{0,6}\.?"
_DATE = (r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"
         rf"|{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}"
         rf"|\d{{1,2}}(?:st|nd|rd|th)? {_MONTH},? \d{{4}})")
_DOB = (r"(?P<dob>(?i:\b(?:DOB|D\.O\.B|date of birth|birth ?date|birthday|born))"
        rf"[^\d\n]{{0,12}}?(?P<dobdate>{_DATE}))(?!\w)")

# detector name -> its branches, in the order they are tried at one position. Each group of
# branches sits behind a lookahead on its first character, so at most positions (letters) the
# engine fails once instead of once per branch.
_DIGIT_BRANCHES = {"address": (_ADDRESS,), "card": (_CARD,), "ssn": (_SSN, _SSN_CONTEXT),
                   "ein": (_EIN,), "phone": (_PHONE, _INTL_PHONE), "ip": (_IPV4,)}
_EMAIL_PATTERN = re.compile(_EMAIL)
_LOCAL_PART = re.compile(r"[\w.%+'-]{1,64}@")  # the longest local part before one "@"
_DOB_PATTERN = re.compile(_DOB)
_DOB_CUES = ("dob", "d.o.b", "birth", "born")

_SSN_CUE = re.compile(r"(?i)\b(?:ssn|ss#|ss no|social security|social sec|soc\.? ?sec)\b")
_INVALID_EIN_PREFIXES = frozenset({"00", "07", "08", "09", "17", "18", "19", "28", "29", "49",
                                   "69", "70", "78", "79", "89", "96", "97"})


def valid_ssn(digits: str) -> bool:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (area != "000" and area != "666" and area[0] != "9" and group != "00"
            and serial != "0000")


def luhn(digits: str) -> bool:
    """The Luhn check over the numeric value of each digit, whatever its script."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = unicodedata.decimal(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdecimal())


# A check returns the span of the value in the match, or None: not a value after all.
Span = tuple[int, int] | None


def _card(text: str, m: re.Match[str]) -> Span:
    value = m.group()
    if luhn(_digits(value)):
        return m.span()
    # "4111 1111 1111 1111 12": the shape took a trailing group that is not part of the card
    cut = max(value.rfind(" "), value.rfind("-"), value.rfind("."), value.rfind("/"))
    if cut > 0 and value.count(value[cut]) == 4 and luhn(_digits(value[:cut])):
        return m.start(), m.start() + cut
    return None


def _ssn(text: str, m: re.Match[str]) -> Span:
    return m.span() if valid_ssn(_digits(m.group())) else None


def _ssn_with_cue(text: str, m: re.Match[str]) -> Span:
    start = m.start()
    if valid_ssn(_digits(m.group())) and _SSN_CUE.search(text, max(0, start - 40), start):
        return m.span()
    return None


def _ein(text: str, m: re.Match[str]) -> Span:
    return m.span() if m.group()[:2] not in _INVALID_EIN_PREFIXES else None


def _phone(text: str, m: re.Match[str]) -> Span:
    value = m.group()
    if value.isdigit() and len(value) == 10:  # a bare number: only a valid NANP one
        return m.span() if value[0] in "23456789" and value[3] in "23456789" else None
    return m.span()


def _intl(text: str, m: re.Match[str]) -> Span:
    return m.span() if 8 <= len(_digits(m.group())) <= 15 else None


def _ipv6(text: str, m: re.Match[str]) -> Span:
    try:
        ipaddress.IPv6Address(m.group())
    except ValueError:
        return None
    return m.span()


def _whole(group: str) -> Callable[[str, re.Match[str]], Span]:
    return lambda text, m: m.span(group)


# branch (group name) -> (entity type, the check that gives the value's span)
_BRANCH_INFO: dict[str, tuple[str, Callable[[str, re.Match[str]], Span]]] = {
    "email": ("EMAIL", _whole("email")), "card": ("CARD", _card), "ssn": ("SSN", _ssn),
    "ssnctx": ("SSN", _ssn_with_cue), "ein": ("EIN", _ein), "phone": ("PHONE", _phone),
    "intl": ("PHONE", _intl), "address": ("ADDRESS", _whole("address")),
    "ipv4": ("IP", _whole("ipv4")), "ipv6": ("IP", _ipv6), "dob": ("DOB", _whole("dobdate")),
}


class StructuredDetector:
    """The structured detectors of one set of detector names. E-mail addresses are looked for
    only around an "@", dates of birth only after a cue word; everything else (the values that
    start with a digit, "+" or "(", and IPv6 addresses) in one pass of one alternation."""

    def __init__(self, detectors: frozenset[str]) -> None:
        self.email = "email" in detectors
        self.dob = "dob" in detectors
        digit = [b for name, branches in _DIGIT_BRANCHES.items() if name in detectors
                 for b in branches]
        parts = [r"(?=[\d+(])(?:" + "|".join(digit) + ")"] if digit else []
        if "ip" in detectors:
            parts.append(r"(?=[0-9A-Fa-f]{0,4}:)" + _IPV6)
        self.pattern = re.compile("|".join(parts)) if parts else None

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, entity type) of each value found in ``text``; they may overlap."""
        found: list[tuple[int, int, str]] = []
        if self.pattern is not None:
            self._collect(self.pattern, text, found)
        if self.email and "@" in text:
            self._emails(text, found)
        if self.dob:
            lowered = text.lower()
            if any(cue in lowered for cue in _DOB_CUES):
                self._collect(_DOB_PATTERN, text, found)
        return found

    @staticmethod
    def _collect(pattern: re.Pattern[str], text: str,
                 found: list[tuple[int, int, str]]) -> None:
        """Like ``finditer``, except that after a match its check refuses ("4111 1111 1111
        1111 123-45-6789" read as one 19-digit number failing Luhn), the search resumes one
        character later rather than after the match, so a value inside it is not skipped."""
        pos = 0
        while (m := pattern.search(text, pos)) is not None:
            entity_type, check = _BRANCH_INFO[m.lastgroup or ""]
            span = check(text, m)
            if span is None:
                pos = m.start() + 1
                continue
            found.append((span[0], span[1], entity_type))
            pos = max(span[1], m.start() + 1)

    @staticmethod
    def _emails(text: str, found: list[tuple[int, int, str]]) -> None:
        """Each "@", with the 64 characters a local part may take before it (the match starts
        at the first of them that may belong to a local part; never before the "@" ahead of
        it, which no local part holds, so a run of "@"s costs one step each)."""
        at = text.find("@")
        done = previous = 0
        while at >= 0:
            if 0 < at < len(text) - 1 and (text[at + 1].isalnum() or text[at + 1] == "-"):
                local = _LOCAL_PART.search(text, max(done, previous, at - 64), at + 1)
                m = local and _EMAIL_PATTERN.match(text, local.start(), min(len(text), at + 400))
                if m:
                    found.append((m.start(), m.end(), "EMAIL"))
                    done = m.end()
            previous = at + 1
            at = text.find("@", max(at + 1, done))


@lru_cache(maxsize=64)
def structured_detector(detectors: frozenset[str]) -> StructuredDetector:
    return StructuredDetector(detectors)

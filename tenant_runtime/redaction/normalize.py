"""The text the detectors see, and a map from each of its characters back to the original text.

What a human reads as an e-mail address, SSN, phone, card or name must be found whatever code
points spell it, yet the replacement is made on the original text, so that everything that is
not an entity stays byte-identical. ``normalize`` applies these layers, each with its own map,
and composes the maps:

- decoding: percent-encoding (``jane%40example.com``, UTF-8 sequences included) and HTML
  character references (``&#64;``, ``&#x40;``, ``&commat;``); a decoded character points back to
  the whole escape that wrote it, so an entity covers its escapes and nothing else;
- NFKC (fullwidth and mathematical letters and digits become ASCII), zero-width characters
  removed; each run of a base character and the combining marks after it is normalized on its
  own, and every character it yields points back to the whole run;
- folding, one character for one: every dash and minus sign (``‐ ‑ – − ﹣``...) becomes "-",
  every decimal digit of any script (Arabic-Indic ``٤``, Devanagari ``४``, Bengali ``৪``...)
  becomes its ASCII digit by numeric value, and in a word whose letters all have a Latin
  look-alike, the Cyrillic and Greek letters become the Latin ones ("Маria" with a Cyrillic М
  becomes "Maria"; a word with any other Cyrillic letter, "Мария", stays as it is).

The layers repeat (at most ``MAX_ROUNDS``) while one of them still changes the text, so that a
fullwidth "％４０" or a double-encoded "%2540" is read too. Base64 is not a layer here: its
characters do not map one to one, so ``__init__`` decodes candidate chunks and redacts a whole
chunk when its plaintext holds a value.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from html.entities import html5

# zero-width space, non-joiner, joiner; word joiner; byte-order mark; soft hyphen
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_HAS_ZERO_WIDTH = re.compile(f"[{ZERO_WIDTH}]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
MAX_ROUNDS = 3


_LAST_DIGIT_OR_DASH = 0x1FBFA  # no code point past this one is a decimal digit or a dash


@lru_cache(maxsize=1)  # built when the first non-ASCII text comes: the CLI starts faster
def _fold_table() -> tuple[dict[int, str], re.Pattern[str], re.Pattern[str]]:
    """Every dash (category Pd) and minus sign to "-", every non-ASCII decimal digit to its
    ASCII digit; and two patterns that find any of them: one of the Basic Multilingual Plane
    only (a class the engine checks by table, fast), one of all (for texts beyond it)."""
    table: dict[int, str] = {}
    for code in range(0x80, _LAST_DIGIT_OR_DASH):
        ch = chr(code)
        category = unicodedata.category(ch)
        if category == "Pd":
            table[code] = "-"
        elif category == "Nd":
            table[code] = str(unicodedata.decimal(ch))
    for minus in "\u2212\u2796\u02d7\u2043\u207b\u208b\ufe63\uff0d":
        table[ord(minus)] = "-"
    return table, _class([c for c in table if c <= 0xFFFF]), _class(list(table))


def _class(codes: list[int]) -> re.Pattern[str]:
    """A character class of ``codes``, written as ranges (digits come in runs of ten)."""
    ranges: list[list[int]] = []
    for code in sorted(codes):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    body = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)
    return re.compile(f"[{body}]")


# Cyrillic and Greek letters that look like a Latin letter (after Unicode's confusables.txt,
# the letters a reader takes for Latin in a name or an address)
CONFUSABLES = {
    # Cyrillic capitals
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Һ": "H",
    "Ү": "Y", "Ӏ": "I", "Ԁ": "D", "Ԍ": "G", "Ꙇ": "I",
    # Cyrillic small letters
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i",
    "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y", "ӏ": "l", "ɡ": "g", "ԍ": "g",
    "к": "k", "м": "m", "н": "h", "т": "t", "в": "b", "п": "n", "г": "r", "ь": "b", "ѵ": "v",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J",
    # Greek small letters
    "ο": "o", "α": "a", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "ϲ": "c", "ϳ": "j", "ε": "e", "η": "n", "ω": "w",
}
_CONFUSABLE_TABLE = str.maketrans(CONFUSABLES)
_HAS_CONFUSABLE = re.compile("[" + "".join(CONFUSABLES) + "]")
_LATIN_END = "\u0250"  # Basic Latin through Latin Extended-B

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+"
                      r"|&(?:#[0-9]{1,8}|#[xX][0-9A-Fa-f]{1,7}|[A-Za-z][A-Za-z0-9]{1,31};);?")


@dataclass(frozen=True, slots=True)
class Normalized:
    """``text`` as the detectors see it. ``starts[i]``/``ends[i]`` are the original offsets of
    what produced ``text[i]``; both are None when each character of ``text`` stands for the
    original character at the same offset (the original itself, or a one-for-one fold)."""

    text: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``text[start:end]`` (``end`` exclusive, ``end > start``)."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def normalize(text: str) -> Normalized:
    view = Normalized(text)
    for _ in range(MAX_ROUNDS):
        changed = False
        if "%" in view.text or "&" in view.text:
            decoded = _decode(view.text)
            if decoded is not None:
                view, changed = _compose(view, decoded), True
        folded = _fold(view.text)
        if folded is not None:
            view, changed = _compose(view, folded), True
        if not changed:
            break
    return view


def _compose(outer: Normalized, inner: Normalized) -> Normalized:
    """``inner`` (a view of ``outer.text``) as a view of ``outer``'s original."""
    if inner.starts is None or inner.ends is None:
        return Normalized(inner.text, outer.starts, outer.ends)
    if outer.starts is None or outer.ends is None:
        return inner
    starts, ends = outer.starts, outer.ends
    return Normalized(inner.text, [starts[s] for s in inner.starts],
                      [ends[e - 1] for e in inner.ends])


# ------------------------------------------------------------------------------- decoding


def _decode(text: str) -> Normalized | None:
    """Percent-escapes and HTML character references decoded; None when there are none."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in _ESCAPES.finditer(text):
        pieces = _percent(m.group()) if m.group()[0] == "%" else _reference(m.group())
        if pieces is None:
            continue
        start = m.start()
        out.append(text[pos:start])
        starts.extend(range(pos, start))
        ends.extend(range(pos + 1, start + 1))
        for decoded, offset, length in pieces:
            out.append(decoded)
            starts.extend([start + offset] * len(decoded))
            ends.extend([start + offset + length] * len(decoded))
        pos = m.end()
    if pos == 0:
        return None
    out.append(text[pos:])
    decoded = "".join(out)
    if decoded == text:  # only escapes that stand for no character
        return None
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return Normalized(decoded, starts, ends)


def _percent(escapes: str) -> list[tuple[str, int, int]] | None:
    """(decoded text, offset, length) of each character a run of "%XX" escapes writes in
    UTF-8; an escape that is no part of valid UTF-8 is kept as it is."""
    data = bytes.fromhex(escapes.replace("%", ""))
    pieces: list[tuple[str, int, int]] = []
    i = 0
    while i < len(data):
        lead = data[i]
        size = 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else \
            4 if lead >> 3 == 30 else 0
        try:
            ch = data[i:i + size].decode("utf-8") if size else ""
        except UnicodeDecodeError:
            ch = ""
        if not ch:
            pieces.append((escapes[3 * i:3 * i + 3], 3 * i, 3))
            i += 1
            continue
        pieces.append((ch, 3 * i, 3 * size))
        i += size
    return pieces


def _reference(reference: str) -> list[tuple[str, int, int]] | None:
    """The character(s) an HTML character reference stands for; None if it is none."""
    body = reference[1:].rstrip(";")
    if body.startswith("#"):
        try:
            code = int(body[2:], 16) if body[1:2] in ("x", "X") else int(body[1:])
        except ValueError:
            return None
        if code == 0 or code > sys.maxunicode or 0xD800 <= code <= 0xDFFF:
            return None
        return [(chr(code), 0, len(reference))]
    if not reference.endswith(";"):
        return None
    value = html5.get(body + ";")
    return [(value, 0, len(reference))] if value else None


# ------------------------------------------------------------------- NFKC and folding


def _fold(text: str) -> Normalized | None:
    """NFKC, zero-width characters removed, dashes, digits and look-alike letters folded;
    None when that changes nothing."""
    if text.isascii():  # NFKC leaves ASCII as it is, and there is nothing to fold in it
        return None
    if unicodedata.is_normalized("NFKC", text) and not _HAS_ZERO_WIDTH.search(text):
        view = Normalized(text)
    else:
        view = _nfkc(text)
    folded = _fold_characters(view.text)
    if folded is view.text:
        return None if view.text == text else view
    return Normalized(folded, view.starts, view.ends)


def _fold_characters(text: str) -> str:
    """Dashes, digits and look-alike letters folded, one character for one; ``text`` itself
    when there is nothing to fold."""
    if not text:
        return text
    table, basic, every = _fold_table()
    foldable = every if max(text) > "\uffff" else basic
    if foldable.search(text):  # replaced where they are: translate() walks every character
        text = foldable.sub(lambda m: table[ord(m.group())], text)
    if _HAS_CONFUSABLE.search(text):
        text = _latin_words(text)
    return text


def _latin_words(text: str) -> str:
    """Each word with a look-alike letter in it, folded to Latin when all its letters then are
    (linear: each word is walked once, from the look-alike letter it was found by)."""
    pieces: list[str] = []
    done = 0
    for m in _HAS_CONFUSABLE.finditer(text):
        if m.start() < done:
            continue  # inside the word just folded
        start = m.start()
        while start > done and text[start - 1].isalpha():
            start -= 1
        end = m.end()
        while end < len(text) and text[end].isalpha():
            end += 1
        word = text[start:end]
        folded = word.translate(_CONFUSABLE_TABLE)
        pieces.append(text[done:start])
        pieces.append(folded if all(ch < _LATIN_END for ch in folded) else word)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _nfkc(text: str) -> Normalized:
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0  # text before pos is done
    for m in _NON_ASCII.finditer(text):
        seg_start, seg_end = m.span()
        if seg_start > pos and unicodedata.combining(text[seg_start]):
            seg_start -= 1  # the ASCII letter before a combining mark composes with it
        out.append(text[pos:seg_start])  # ASCII stays as it is, one to one
        starts.extend(range(pos, seg_start))
        ends.extend(range(pos + 1, seg_start + 1))
        _normalize_segment(text, seg_start, seg_end, out, starts, ends)
        pos = seg_end
    out.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return Normalized("".join(out), starts, ends)


def _normalize_segment(text: str, start: int, end: int, out: list[str], starts: list[int],
                       ends: list[int]) -> None:
    """NFKC of each base character with its combining marks in ``text[start:end]``."""
    run: list[str] = []
    run_start = run_end = start

    def close() -> None:
        if run:
            piece = unicodedata.normalize("NFKC", "".join(run))
            out.append(piece)
            starts.extend([run_start] * len(piece))
            ends.extend([run_end] * len(piece))
            run.clear()

    for i in range(start, end):
        ch = text[i]
        if ch in ZERO_WIDTH:
            continue  # dropped: in no run, so only an entity around it covers it
        if not run or ch.isascii() or not unicodedata.combining(ch):
            close()
            run_start = i
        run.append(ch)
        run_end = i + 1
    close()

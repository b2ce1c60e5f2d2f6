"""The text the detectors see: NFKC-normalized, with zero-width characters removed, and a map
from each of its characters back to the original text.

Fullwidth digits ("１２３-４５-６７８９") and hidden characters ("j\\u200bohn@example.com") must not
let a value slip past the detectors, yet the replacement is made on the original text, so that
everything that is not an entity stays byte-identical. Each run of a base character and the
combining marks after it is normalized on its own; every character it yields points back to the
whole run, so an entity found in the normalized text maps to whole original characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# zero-width space, non-joiner, joiner; word joiner; byte-order mark; soft hyphen
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_HAS_ZERO_WIDTH = re.compile(f"[{ZERO_WIDTH}]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


@dataclass(frozen=True, slots=True)
class Normalized:
    """``text`` as the detectors see it. ``starts[i]``/``ends[i]`` are the original offsets of
    the run that produced ``text[i]``; both are None when ``text`` is the original itself."""

    text: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``text[start:end]`` (``end`` exclusive, ``end > start``)."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def normalize(text: str) -> Normalized:
    if text.isascii():  # NFKC leaves ASCII as it is, and no zero-width character is ASCII
        return Normalized(text)
    if unicodedata.is_normalized("NFKC", text) and not _HAS_ZERO_WIDTH.search(text):
        return Normalized(text)
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

"""Person names: one scan over the capitalized tokens of a text, and set lookups.

A token is a PERSON when
- its lowercase form is a common first name (data/first_names.txt), optionally followed by a
  middle initial and a capitalized surname ("Maria Lopez", "John Q. Public"); first names that
  are also ordinary words ("Grace", "Hope", "June") need a known surname after them or a cue;
- it follows an honorific: "Dr. Okafor", "Ms Jane Doe";
- it follows a cue: "my name is X", "signed, X", "name: X" (any capitalized X); "I'm X Y",
  "patient X Y", "contact X Y" (two capitalized tokens, or a listed name);
- and, under the aggressive profile only, any two capitalized words in a row that do not start
  a sentence ("met with Ngozi Adeyemi yesterday").
A capitalized word that starts a sentence and is in neither list is left alone.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

# first names that are also ordinary English words or places: a surname or a cue must confirm
AMBIGUOUS_FIRST = frozenset("""
    amber angel april aurora austin autumn bill bob brooke brooklyn carter chance chase christian
    claire cooper crystal daisy dallas dawn dean destiny faith frank gene georgia glen grace guy
    harmony harley hope hunter iris ivy jack jade jay jordan joy june kelly lance lee lily london
    madison mark mason max miles morgan norman parker penny pat peyton quinn ray reese rich
    rose ruby sage savannah skylar sky summer sydney taylor trinity tracy victoria virginia wade
    willow will
""".split())

# capitalized words that never join a name, nor make an aggressive pair
STOPWORDS = frozenset("""
    a about after all also am an and any are as at be because been before but by can could
    dear did do does each for from had has have he her here hers him his how i if in into is it
    its just let me my no not now of on once only or our out please so some than thanks thank
    that the their them then there these they this those to too under until up us was we were
    what when where which while who whom whose why will with would yes yet you your hello hi hey
    regards sincerely best cheers note notes ok okay today tomorrow yesterday
    monday tuesday wednesday thursday friday saturday sunday
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec
    mr mrs ms miss mx dr prof sir madam
    inc llc ltd corp co company corporation group team support service services department
    university college school hospital clinic bank center centre office street st avenue ave
    road rd project report meeting api http https json sql aws new old north south east west
    subject re fw fwd summary action item items step steps total order invoice account
""".split())

HONORIFICS = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof"})

# A capitalized token: "Maria", "O'Brien", "Jean-Luc", "McDonald"; possessive "'s" is split off.
_TOKEN = re.compile(r"(?<![\w'’@-])[A-ZÀ-ÖØ-Þ][A-Za-zÀ-ÖØ-öø-ÿ]*(?:['’-][A-Za-zÀ-ÖØ-öø-ÿ]+)*")
# cues that name whatever capitalized word follows
_CUE_ONE = re.compile(r"(?i)(?:\bmy name is|\bname is|\bname:|\bsigned,?|\bsincerely,)\s+$")
# cues that need two capitalized words, or a listed name
_CUE_TWO = re.compile(r"(?i)(?:\bi'm|\bi’m|\bi am|\bpatient:?|\bcontact)\s+$")
_SENTENCE_ENDS = frozenset(".!?:;\n\"“”'‘’()[]{}<>*#>|•-–—")


def _load(name: str) -> frozenset[str]:
    with (DATA / name).open(encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), lowercase."""
    return _load("first_names.txt"), _load("last_names.txt")


def _tokens(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _TOKEN.finditer(text):
        start, end = m.span()
        word = m.group()
        if word.endswith(("'s", "’s")) and len(word) > 3:
            end -= 2
            word = word[:-2]
        if len(word) > 1 and word.isupper():
            continue  # an acronym, not a name
        out.append((start, end, word.lower()))
    return out


def _starts_sentence(text: str, start: int) -> bool:
    i = start - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] in _SENTENCE_ENDS


def find_names(text: str, listed: bool = True, pairs: bool = False) -> list[tuple[int, int]]:
    """The spans of person names in ``text``: by the lists, honorifics and cues (``listed``,
    the "person" detector) and by capitalized pairs (``pairs``, the "name_pair" detector)."""
    first, last = name_lists()
    tokens = _tokens(text)
    found: list[tuple[int, int]] = []
    n = len(tokens)

    def adjacent(i: int, gaps: tuple[str, ...] = (" ",)) -> bool:
        return i + 1 < n and text[tokens[i][1]:tokens[i + 1][0]] in gaps

    def surname_after(i: int, any_capitalized: bool) -> int:
        """Index of the last token of a name whose first part ends at token ``i``."""
        gaps: tuple[str, ...] = (" ",)
        j = i
        if adjacent(j) and len(tokens[j + 1][2]) == 1 and adjacent(j + 1, (". ", " ")):
            j, gaps = j + 1, (". ", " ")  # a middle initial
        if adjacent(j, gaps):
            word = tokens[j + 1][2]
            if word in last or (any_capitalized and word not in STOPWORDS and len(word) > 1):
                return j + 1
        return i

    def cue(start: int, cues: re.Pattern[str]) -> bool:
        return cues.search(text, max(0, start - 24), start) is not None

    def listed_name(i: int) -> int | None:
        """Index of the last token of the name starting at token ``i``, if it is one."""
        start, _, word = tokens[i]
        if word in HONORIFICS:
            return None
        if i > 0 and tokens[i - 1][2] in HONORIFICS and \
                text[tokens[i - 1][1]:start] in (" ", ". ", "  ", ".  ") and \
                (word not in STOPWORDS or word in last):
            return surname_after(i, any_capitalized=True)
        if word in first and word not in AMBIGUOUS_FIRST:
            return surname_after(i, any_capitalized=True)
        if word in STOPWORDS and word not in first:
            return None
        if cue(start, _CUE_ONE):
            return surname_after(i, any_capitalized=True)
        j = surname_after(i, any_capitalized=word not in first)
        if word in first and j > i:  # an ambiguous first name confirmed by a known surname
            return j
        if (j > i or word in first or word in last) and cue(start, _CUE_TWO):
            return surname_after(i, any_capitalized=True)
        return None

    i = 0
    while i < n:
        start, end, word = tokens[i]
        j = listed_name(i) if listed else None
        if j is not None:
            found.append((start, tokens[j][1]))
            i = j + 1
            continue
        if pairs and adjacent(i) and len(word) > 1 and len(tokens[i + 1][2]) > 1 \
                and word not in STOPWORDS and tokens[i + 1][2] not in STOPWORDS \
                and not _starts_sentence(text, start):
            found.append((start, tokens[i + 1][1]))
            i += 2
            continue
        i += 1
    return found

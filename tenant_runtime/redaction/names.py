"""Person names: one scan over the words of a text, and set lookups.

A capitalized token is a PERSON when
- its lowercase form is a common first name (data/first_names.txt), optionally followed by a
  middle initial and a capitalized surname ("Maria Lopez", "John Q. Public"); first names that
  are also ordinary words ("Grace", "Hope", "June") need a known surname after them or a cue;
- it follows an honorific: "Dr. Okafor", "Ms Jane Doe";
- it follows a cue: "my name is X", "signed, X", "name: X" (any capitalized X); "I'm X Y",
  "patient X Y", "contact X Y" (two capitalized tokens, or a listed name);
- and, under the aggressive profile only, any two capitalized words in a row that do not start
  a sentence ("met with Ngozi Adeyemi yesterday").
A capitalized word that starts a sentence and is in neither list is left alone.

Case does not hide a name. A word in ALL CAPITALS is read like a capitalized one, except that
capitals carry no sign of a name there: a surname after it must be a listed one ("MARIA LOPEZ",
not "JOHN SENT"), and a first name alone needs four letters ("MARIA", not "ANN" or "SAM"). A
lowercase word is a name only from the lists: a first name that is no ordinary word
("maria", not "mark", "will" or "jade"), with a listed surname after it ("maria lopez"); a
lowercase surname confirms no capitalized first name that is an ordinary word ("Rose gold").
Accents do not hide one either: the lists are looked up without diacritics ("Jöhn" is "john"),
and normalize.py has already folded Cyrillic and Greek look-alike letters to Latin.

Places, organizations and products built on a first name are not people: a name right after a
place prefix ("San Francisco", "St. Louis", "Lake Charles") or a brand ("Amazon Alexa"), right
before an organization word ("George Washington University", "Charles Schwab Corp"), or one of
the phrases in data/not_names.txt ("Morgan Stanley", "Microsoft Teams") is left alone.
"""

from __future__ import annotations

import re
import unicodedata
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
    willow will claude alexa
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

# first names that are ordinary lowercase words or names of things ("carol", "jasmine",
# "julia" the language): lowercase, they are never read as a name
LOWERCASE_WORDS = frozenset("""
    alexa aria axel bailey bobby bonnie brad carmen carol chad chester clara claude don earl
    eden emery finn genesis gloria harper hazel heather hector holly hudson ida isla jasmine
    jean jerry jimmy jo joe jude julia kai ken kent kirk levi lincoln logan marc marshall
    maverick maya melody mia mike nina norma nova paisley patsy piper randy regina roman rosa
    rowan ruth sally serenity shelly sherry stanley stella sue ted terry tiffany tom tommy tony
    troy warren willie
""".split())

# words before a name that make it a place ("San Francisco", "St. Louis", "Lake Charles")
PLACE_PREFIXES = frozenset("""
    san santa santo sao st ste saint sainte fort ft port lake mount mt cape el la las los
    glen point
""".split())

# brands before a first name that make it a product ("Amazon Alexa", "Microsoft Teams")
BRANDS = frozenset("""
    amazon apple google microsoft meta facebook ibm oracle adobe salesforce atlassian slack
    zoom aws azure openai anthropic nvidia intel cisco samsung sony github gitlab jira tesla
""".split())

# words after a name that make it an organization or a place
ORGANIZATION_WORDS = frozenset("""
    university college school academy institute hospital clinic foundation fund trust inc
    llc ltd corp corporation company co group bank capital partners associates holdings
    labs technologies systems motors airport station park bridge street avenue road
    boulevard county city hall center centre library museum church memorial stadium arena
""".split())

# Latin letters (through Latin Extended-B): the lists hold Latin names, and normalize.py has
# folded Cyrillic and Greek look-alikes to Latin already


def _letter_class(test: str) -> str:
    """The letters of U+0000-U+024F for which ``str.<test>()`` holds, as a class body of
    ranges (a long list of single characters makes a slow class)."""
    codes = [c for c in range(0x250) if getattr(chr(c), test)()]
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)


_UPPER = _letter_class("isupper")
_LOWER = _letter_class("islower")
_REST = r"[^\W\d_]*(?:['’-][^\W\d_]+)*"
# A word: "Maria", "O'Brien", "Jean-Luc", "McDonald", "MARIA"; possessive "'s" is split off.
# (a token starts after no word character, "'", "’", "@" or "-": checked after the match, a
# lookbehind at every position costs more than the whole scan)
_UPPER_TOKEN = re.compile(rf"[{_UPPER}]{_REST}")
_LOWER_TOKEN = re.compile(rf"(?<![\w'’@-])[{_LOWER}]{_REST}")
_WORD = re.compile(rf"[^\W\d_]{_REST}")
_LETTERS = re.compile(r"[^\W\d_]+")
_ASCII_LETTERS = re.compile(r"[A-Za-z]+")  # _LETTERS on ASCII text, at half its cost
# cues that name whatever capitalized word follows
_CUE_ONE = re.compile(r"(?i)(?:\bmy name is|\bname is|\bname:|\bsigned,?|\bsincerely,)\s+$")
# cues that need two capitalized words, or a listed name
_CUE_TWO = re.compile(r"(?i)(?:\bi'm|\bi’m|\bi am|\bpatient:?|\bcontact)\s+$")
_SENTENCE_ENDS = frozenset(".!?:;\n\"“”'‘’()[]{}<>*#>|•-–—")

TITLE, CAPS, LOWER = "T", "C", "L"  # how a token is written


def _load(name: str) -> frozenset[str]:
    with (DATA / name).open(encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), lowercase."""
    return _load("first_names.txt"), _load("last_names.txt")


@lru_cache(maxsize=1)
def lexicon() -> frozenset[str]:
    """First names and surnames: the lowercase words that may be part of a name."""
    first, last = name_lists()
    return first | last


@lru_cache(maxsize=1)
def not_names() -> dict[str, list[tuple[str, ...]]]:
    """The phrases of data/not_names.txt (lowercase words), by their first word."""
    phrases: dict[str, list[tuple[str, ...]]] = {}
    for line in _load("not_names.txt"):
        words = tuple(_key(w) for w in _WORD.findall(line))
        phrases.setdefault(words[0], []).append(words)
    return phrases


def _key(word: str) -> str:
    """The lookup form of a word: lowercase, without diacritics."""
    word = word.lower()
    if not word.isascii():
        decomposed = unicodedata.normalize("NFKD", word)
        word = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return word


def _tokens(text: str, lexicon: frozenset[str]) -> list[tuple[int, int, str, str]]:
    """(start, end, lookup form, TITLE/CAPS/LOWER) of each word that may be part of a name:
    capitalized words and words in capitals, and lowercase words of ``lexicon``. Lowercase
    words are many and seldom names, so each distinct one is looked up once, and only those in
    ``lexicon`` are looked for again."""
    out = [_token(m, CAPS if len(m.group()) > 1 and m.group().isupper() else TITLE)
           for m in _UPPER_TOKEN.finditer(text)
           if m.start() == 0 or _not_in_word(text[m.start() - 1])]
    if lexicon:
        words = set((_ASCII_LETTERS if text.isascii() else _LETTERS).findall(text))
        hits = words & lexicon
        if not text.isascii():
            hits.update(w for w in words if not w.isascii() and _key(w) in lexicon)
        for word in hits:
            if word[0].islower():
                out.extend(_occurrences(text, word))
        out.sort()
    return out


def _without_possessive(word: str) -> str:
    return word[:-2] if word.endswith(("'s", "’s")) and len(word) > 3 else word


def _token(m: re.Match[str], style: str) -> tuple[int, int, str, str]:
    start, end = m.span()
    word = _without_possessive(m.group())
    return start, start + len(word), _key(word), style


def _occurrences(text: str, word: str) -> list[tuple[int, int, str, str]]:
    """The tokens of ``text`` that are ``word`` (lowercase), as ``_LOWER_TOKEN`` reads them."""
    out = []
    at = text.find(word)
    while at >= 0:
        m = _LOWER_TOKEN.match(text, at)
        if m is not None and _without_possessive(m.group()) == word and \
                (at == 0 or _not_in_word(text[at - 1])):
            out.append(_token(m, LOWER))
        at = text.find(word, at + len(word))
    return out


def _not_in_word(ch: str) -> bool:
    return not (ch.isalnum() or ch in "_'’@-")


def _starts_sentence(text: str, start: int) -> bool:
    i = start - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] in _SENTENCE_ENDS


def _excluded(text: str, tokens: list[tuple[int, int, str, str]]) -> set[int]:
    """Indexes of the tokens that are part of a place, a product or an organization."""
    phrases = not_names()
    out: set[int] = set()
    for i, (_, end, word, _style) in enumerate(tokens):
        for phrase in phrases.get(word, ()):
            n = len(phrase)
            if tuple(t[2] for t in tokens[i:i + n]) == phrase and all(
                    len(text[tokens[k][1]:tokens[k + 1][0]]) <= 3 for k in range(i, i + n - 1)):
                out.update(range(i, i + n))
        if (word in PLACE_PREFIXES or word in BRANDS) and i + 1 < len(tokens) and \
                text[end:tokens[i + 1][0]] in (" ", ". "):
            out.add(i + 1)
    return out


def find_names(text: str, listed: bool = True, pairs: bool = False) -> list[tuple[int, int]]:
    """The spans of person names in ``text``: by the lists, honorifics and cues (``listed``,
    the "person" detector) and by capitalized pairs (``pairs``, the "name_pair" detector)."""
    first, last = name_lists()
    tokens = _tokens(text, lexicon() if listed else frozenset())
    excluded = _excluded(text, tokens) if tokens else set()
    found: list[tuple[int, int]] = []
    n = len(tokens)

    def adjacent(i: int, gaps: tuple[str, ...] = (" ",)) -> bool:
        return i + 1 < n and text[tokens[i][1]:tokens[i + 1][0]] in gaps

    def surname_after(i: int, any_capitalized: bool, confirmed: bool = True) -> int:
        """Index of the last token of a name whose first part ends at token ``i``; a listed
        surname, or (``any_capitalized``) any capitalized word that is no stopword. A
        lowercase surname after a capitalized word counts only for a name ``confirmed``
        already ("Maria lopez"), never as the proof of one ("Rose gold")."""
        gaps: tuple[str, ...] = (" ",)
        j = i
        if adjacent(j) and len(tokens[j + 1][2]) == 1 and tokens[j + 1][3] is TITLE and \
                adjacent(j + 1, (". ", " ")):
            j, gaps = j + 1, (". ", " ")  # a middle initial
        if adjacent(j, gaps) and j + 1 not in excluded:
            _, _, word, style = tokens[j + 1]
            if word in last and (style is not LOWER or tokens[i][3] is LOWER or confirmed):
                return j + 1
            if any_capitalized and style is TITLE and word not in STOPWORDS and len(word) > 1:
                return j + 1
        return i

    def cue(start: int, cues: re.Pattern[str]) -> bool:
        return cues.search(text, max(0, start - 24), start) is not None

    def listed_name(i: int) -> int | None:
        """Index of the last token of the name starting at token ``i``, if it is one."""
        start, _, word, style = tokens[i]
        if word in HONORIFICS or i in excluded:
            return None
        if style is LOWER:  # only from the lists, and no ordinary word ("jade green")
            if word not in first or word in STOPWORDS or word in AMBIGUOUS_FIRST or \
                    word in LOWERCASE_WORDS:
                return None
            return surname_after(i, any_capitalized=False)
        # in capitals, capitalization is no sign of a name
        loose = style is TITLE
        if i > 0 and tokens[i - 1][2] in HONORIFICS and tokens[i - 1][3] is not LOWER and \
                text[tokens[i - 1][1]:start] in (" ", ". ", "  ", ".  ") and \
                (word not in STOPWORDS or word in last):
            return surname_after(i, any_capitalized=loose)
        if word in first and word not in AMBIGUOUS_FIRST:
            j = surname_after(i, any_capitalized=loose)
            return j if loose or j > i or len(word) >= 4 else None
        if word in STOPWORDS and word not in first:
            return None
        if cue(start, _CUE_ONE):
            return surname_after(i, any_capitalized=loose)
        j = surname_after(i, any_capitalized=loose and word not in first, confirmed=False)
        if word in first and j > i:  # an ambiguous first name confirmed by a known surname
            return j
        if (j > i or word in first or word in last) and cue(start, _CUE_TWO):
            return surname_after(i, any_capitalized=loose)
        return None

    def organization_after(j: int) -> bool:
        return adjacent(j) and tokens[j + 1][2] in ORGANIZATION_WORDS

    i = 0
    while i < n:
        start, end, word, style = tokens[i]
        j = listed_name(i) if listed else None
        if j is not None:
            if not organization_after(j):
                found.append((start, tokens[j][1]))
            i = j + 1
            continue
        if pairs and style is TITLE and adjacent(i) and tokens[i + 1][3] is TITLE \
                and len(word) > 1 and len(tokens[i + 1][2]) > 1 \
                and word not in STOPWORDS and tokens[i + 1][2] not in STOPWORDS \
                and i not in excluded and i + 1 not in excluded \
                and not _starts_sentence(text, start) and not organization_after(i + 1):
            found.append((start, tokens[i + 1][1]))
            i += 2
            continue
        i += 1
    return found

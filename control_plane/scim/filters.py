"""SCIM filters (RFC 7644 section 3.4.2.2) and sorting (3.4.2.3), compiled to SQL.

The grammar read here, all of what Entra ID and Okta send and more::

    filter  = or
    or      = and *("or" and)
    and     = unary *("and" unary)
    unary   = "not" "(" filter ")" / "(" filter ")" / compare
    compare = attrPath "pr" / attrPath op value
    op      = "eq" / "ne" / "co" / "sw" / "ew" / "gt" / "ge" / "lt" / "le"
    value   = string (JSON) / number / "true" / "false" / "null"

Operators and attribute names are case-insensitive; an attribute may carry its schema's URN
(``urn:ietf:params:scim:schemas:core:2.0:User:userName``). Each resource type lists the
attributes it can be filtered and sorted by (``Attribute``), with their ``caseExact``
(RFC 7643): ``userName``, ``displayName`` and ``emails.value`` compare without case,
``externalId`` and ``id`` exactly. Value paths (``emails[type eq "work"]``) are refused.

Whatever cannot be read or compiled is a ``ScimError`` 400 ``invalidFilter`` (or
``invalidValue`` for ``sortBy``/``sortOrder``) with one sentence saying what to fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, false, func, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

MAX_LENGTH = 4000
MAX_TERMS = 64
MAX_DEPTH = 16
OPERATORS = ("eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le")
SCHEMA_PREFIXES = ("urn:ietf:params:scim:schemas:core:2.0:user:",
                   "urn:ietf:params:scim:schemas:core:2.0:group:")

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<paren>[()])
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<bracket>[\[\]])
    | (?P<word>[A-Za-z0-9_:.$\-+]+)
    )""", re.VERBOSE)


class FilterError(ValueError):
    """A filter that cannot be read or compiled; ``str()`` is the sentence for the client."""


Comparison = Callable[[str, Any], ColumnElement[bool]]


@dataclass(frozen=True)
class Attribute:
    """An attribute a filter may name: ``compare(op, value)`` builds its SQL (or raises
    FilterError for an operator the attribute's type has not); ``sort`` orders by it."""

    compare: Comparison
    present: Callable[[], ColumnElement[bool]]
    sort: Any = None


# ------------------------------------------------------------------------------- comparisons


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def string_comparison(column: Any, *, case_exact: bool) -> Comparison:
    """The nine operators over a text column; ``ne`` matches a missing value too."""

    def compare(op: str, value: Any) -> ColumnElement[bool]:
        if value is None:
            if op == "eq":
                return column.is_(None)  # type: ignore[no-any-return]
            if op == "ne":
                return column.is_not(None)  # type: ignore[no-any-return]
            raise FilterError(f"Only eq and ne compare with null, not {op}.")
        if not isinstance(value, str):
            raise FilterError(f"Compare this attribute with a string in double quotes, not "
                              f"{json.dumps(value)}.")
        col, val = (column, value) if case_exact else (func.lower(column), value.lower())
        if op in ("co", "sw", "ew"):
            pattern = _like_escape(val)
            pattern = {"co": f"%{pattern}%", "sw": f"{pattern}%", "ew": f"%{pattern}"}[op]
            return col.like(pattern, escape="\\")
        if op == "ne":
            return or_(column.is_(None), col != val)
        return {"eq": col == val, "gt": col > val, "ge": col >= val, "lt": col < val,
                "le": col <= val}[op]

    return compare


def boolean_comparison(column: Any) -> Comparison:
    def compare(op: str, value: Any) -> ColumnElement[bool]:
        if op not in ("eq", "ne") or not isinstance(value, bool):
            raise FilterError("A boolean attribute is compared with eq or ne and true or "
                              "false.")
        return (column == value) if op == "eq" else (column != value)  # type: ignore[no-any-return]

    return compare


def id_comparison(column: Any) -> Comparison:
    """``id`` is a string of digits here: eq/ne with such a string (another never matches)."""

    def compare(op: str, value: Any) -> ColumnElement[bool]:
        if op not in ("eq", "ne") or not isinstance(value, str):
            raise FilterError("id is compared with eq or ne and a string.")
        if not value.isdigit() or len(value) > 18:
            return false() if op == "eq" else true()
        return (column == int(value)) if op == "eq" else (column != int(value))  # type: ignore[no-any-return]

    return compare


def any_of(*comparisons: Comparison) -> Comparison:
    """A multi-valued attribute: it matches when one of its places matches."""

    def compare(op: str, value: Any) -> ColumnElement[bool]:
        return or_(*(c(op, value) for c in comparisons))

    return compare


# ------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Token:
    kind: str  # paren, string, bracket, word
    text: str
    at: int


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterError(f"The filter has a character it cannot read at position "
                              f"{position + 1} ({text[position:position + 10].strip()!r}).")
        kind = match.lastgroup or "word"
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, attributes: dict[str, Attribute]) -> None:
        if len(text) > MAX_LENGTH:
            raise FilterError(f"The filter is longer than {MAX_LENGTH} characters.")
        self.tokens = _tokens(text)
        self.position = 0
        self.attributes = attributes
        self.terms = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("The filter ends too early: a comparison or a closing "
                              "parenthesis is missing.")
        self.position += 1
        return token

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() in words:
            self.position += 1
            return token.text.lower()
        return None

    def expect_paren(self, paren: str) -> None:
        token = self.take()
        if token.kind != "paren" or token.text != paren:
            raise FilterError(f"Expected {paren!r} at position {token.at + 1}, found "
                              f"{token.text[:30]!r}.")

    def parse(self) -> ColumnElement[bool]:
        if not self.tokens:
            raise FilterError("The filter is empty.")
        clause = self.or_(0)
        token = self.peek()
        if token is not None:
            raise FilterError(f"Unexpected {token.text[:30]!r} at position {token.at + 1}: "
                              "join comparisons with and / or.")
        return clause

    def or_(self, depth: int) -> ColumnElement[bool]:
        clauses = [self.and_(depth)]
        while self.keyword("or"):
            clauses.append(self.and_(depth))
        return clauses[0] if len(clauses) == 1 else or_(*clauses)

    def and_(self, depth: int) -> ColumnElement[bool]:
        clauses = [self.unary(depth)]
        while self.keyword("and"):
            clauses.append(self.unary(depth))
        return clauses[0] if len(clauses) == 1 else and_(*clauses)

    def unary(self, depth: int) -> ColumnElement[bool]:
        if depth > MAX_DEPTH:
            raise FilterError(f"The filter nests deeper than {MAX_DEPTH} levels.")
        if self.keyword("not"):
            self.expect_paren("(")
            inner = self.or_(depth + 1)
            self.expect_paren(")")
            return not_(func.coalesce(inner, False))
        token = self.peek()
        if token is not None and token.kind == "paren" and token.text == "(":
            self.take()
            inner = self.or_(depth + 1)
            self.expect_paren(")")
            return inner
        return self.compare()

    def compare(self) -> ColumnElement[bool]:
        token = self.take()
        if token.kind != "word" or token.text.lower() in ("and", "or", "not", *OPERATORS):
            raise FilterError(f"Expected an attribute at position {token.at + 1}, found "
                              f"{token.text[:30]!r}.")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"The filter has more than {MAX_TERMS} comparisons.")
        name = token.text.lower()
        for prefix in SCHEMA_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        after = self.peek()
        if after is not None and after.kind == "bracket":
            raise FilterError("Value paths (attribute[...]) are not supported; filter on "
                              "the attribute itself, e.g. emails.value co \"@example.com\".")
        attribute = self.attributes.get(name)
        if attribute is None:
            raise FilterError(f"{token.text[:60]!r} cannot be filtered on; use "
                              f"{', '.join(sorted(self.attributes))}.")
        op_token = self.take()
        op = op_token.text.lower()
        if op == "pr":
            return attribute.present()
        if op_token.kind != "word" or op not in OPERATORS:
            raise FilterError(f"{op_token.text[:30]!r} at position {op_token.at + 1} is not an "
                              f"operator ({', '.join(OPERATORS)} or pr).")
        return attribute.compare(op, self.value())

    def value(self) -> Any:
        token = self.take()
        if token.kind == "string":
            try:
                return json.loads(token.text)
            except ValueError:
                raise FilterError(f"The string at position {token.at + 1} has a bad escape."
                                  ) from None
        word = token.text.lower()
        if token.kind == "word" and word in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[word]
        if token.kind == "word" and re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", word):
            return json.loads(word)
        raise FilterError(f"Expected a value at position {token.at + 1} (a string in double "
                          f"quotes, a number, true, false or null), found {token.text[:30]!r}.")


def compile_filter(text: str, attributes: dict[str, Attribute]) -> ColumnElement[bool]:
    """The SQL condition for ``text``; ``attributes`` keyed by lowercase name."""
    return _Parser(text, attributes).parse()


def sort_order(sort_by: str | None, sort_order: str | None,
               attributes: dict[str, Attribute]) -> tuple[Any, bool] | None:
    """(the column to order by, descending) for ``sortBy``/``sortOrder``; None without
    sortBy. RFC 7644 section 3.4.2.3: ascending by default."""
    order = (sort_order or "ascending").strip().lower()
    if order not in ("ascending", "descending"):
        raise FilterError("sortOrder is ascending or descending.")
    if sort_by is None or not sort_by.strip():
        return None
    name = sort_by.strip().lower()
    for prefix in SCHEMA_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    attribute = attributes.get(name)
    if attribute is None or attribute.sort is None:
        sortable = sorted(n for n, a in attributes.items() if a.sort is not None)
        raise FilterError(f"{sort_by.strip()[:60]!r} cannot be sorted on; use "
                          f"{', '.join(sortable)}.")
    return attribute.sort, order == "descending"


__all__ = ["Attribute", "FilterError", "any_of", "boolean_comparison", "compile_filter",
           "id_comparison", "sort_order", "string_comparison"]

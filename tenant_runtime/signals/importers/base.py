"""What every importer shares: the row it produces, how a row or a whole file is refused, field
access that is liberal in names, dates in the forms exports use, and the streaming readers of
JSON, JSON Lines and CSV over a metered byte stream.

Errors (both are ``TenantInvalidInput`` or a subclass of it, so the web answers 4xx)::

    RowRejected      one row cannot be used: it is reported with its number and the reason, and
                     the rest of the file is imported (never raised out of an importer)
    FileUnreadable   422 the file cannot be read as a whole (not JSON, truncated, wrong CSV
                     header for the source's kind, not UTF-8): nothing of it is written
    └── FileTooLarge 413 over the size limit

Reasons and errors never quote the file's content (a title, a name): they are stored in plain
columns and shown to people who may not see the row itself."""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import ijson

from tenant_runtime.exceptions import TenantInvalidInput

TITLE_MAX_CHARS = 2000
EXTERNAL_ID_MAX_CHARS = 200
TEAM_MAX_CHARS = 100
OUTCOME_MAX_CHARS = 50
PERSON_MAX_CHARS = 320
LINE_MAX_BYTES = 1024 * 1024  # one JSON Lines line, one CSV field
READ_BUFFER_BYTES = 256 * 1024
FORMATS = ("json", "jsonl", "csv")


class RowRejected(Exception):
    """A row that cannot be used; ``reason`` is one sentence, without the row's content."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FileUnreadable(TenantInvalidInput):
    default_message = "The file cannot be read; nothing was imported."


class FileTooLarge(FileUnreadable):
    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than the limit of {limit // (1024 * 1024)} MB; "
                         "nothing was imported. Split it and import the parts.")


@dataclass(frozen=True, slots=True)
class Row:
    """One signal as read from a file, before minimization (the title is sealed, the person
    pseudonymized and the template derived when it is stored)."""

    external_id: str
    title: str
    occurred_at: datetime
    resolved_at: datetime | None = None
    outcome: str | None = None
    team: str | None = None  # None: the import's default team
    person: str | None = None  # an identity (account id, login, e-mail), never stored as is


# -- reading bytes -----------------------------------------------------------------------------


class Meter(io.RawIOBase):
    """A read-only byte stream over another, counting what was read and refusing to read past
    ``limit`` bytes (FileTooLarge). Wrapped in a BufferedReader by ``buffered``."""

    def __init__(self, source: BinaryIO, limit: int | None) -> None:
        super().__init__()
        self._source = source
        self.limit = limit
        self.count = 0
        self.at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._source.read(len(view))
        if not data:
            self.at_end = True
            return 0
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise FileTooLarge(self.limit)
        view[:len(data)] = data
        return len(data)


def buffered(meter: Meter) -> io.BufferedReader:
    return io.BufferedReader(meter, READ_BUFFER_BYTES)


def skip_bom_and_space(stream: io.BufferedReader) -> bytes:
    """Consume a UTF-8 byte-order mark and leading whitespace; the first byte that follows
    (not consumed), or b"" for an empty file."""
    if stream.peek(3)[:3] == codecs.BOM_UTF8:
        stream.read(3)
    while True:
        head = stream.peek(1)[:1]
        if head not in (b" ", b"\t", b"\r", b"\n"):
            return head
        stream.read(1)


def first_line_is_object(stream: io.BufferedReader, key: str | None) -> bool:
    """Whether the buffered start of the stream is a whole JSON object on one line without
    ``key``: the sign of JSON Lines rather than one JSON document."""
    head = stream.peek(READ_BUFFER_BYTES)
    end = head.find(b"\n")
    if end < 0:
        return False
    try:
        first = json.loads(head[:end])
    except ValueError:
        return False
    return isinstance(first, dict) and (key is None or key not in first)


# -- fields ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def norm(name: str) -> str:
    """Field names compared without case or punctuation: "Issue key", "issue_key", "issueKey"
    and "IssueKey" are one name."""
    return re.sub(r"[^a-z0-9@]", "", name.lower())


class Fields:
    """A record's values by normalized name, with typed, length-checked getters that raise
    RowRejected naming the field (never its value)."""

    __slots__ = ("_values",)

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._values: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(key, str):
                self._values.setdefault(norm(key), value)

    def raw(self, *names: str) -> Any:
        for name in names:
            value = self._values.get(norm(name))
            if value is not None and value != "":
                return value
        return None

    def obj(self, *names: str) -> Fields | None:
        value = self.raw(*names)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise RowRejected(f"the field '{names[0]}' is not an object")
        return Fields(value)

    def text(self, *names: str, max_chars: int | None = None,
             numbers: bool = True) -> str | None:
        """The first of ``names`` that holds a value, as stripped text (None: none does); a
        number is taken as its text unless ``numbers`` is False (titles must be text)."""
        value = self.raw(*names)
        if isinstance(value, dict | list | bool) or (
                not numbers and not isinstance(value, str | None)):
            raise RowRejected(f"the field '{names[0]}' is not text")
        text = "" if value is None else str(value).strip()
        if not text:
            return None
        if max_chars is not None and len(text) > max_chars:
            raise RowRejected(f"the field '{names[0]}' is longer than {max_chars:,} characters")
        return text

    def must_text(self, *names: str, missing: str, max_chars: int | None = None,
                  numbers: bool = True) -> str:
        text = self.text(*names, max_chars=max_chars, numbers=numbers)
        if text is None:
            raise RowRejected(missing)
        return text

    def must_time(self, *names: str, missing: str) -> datetime:
        value = self.time(*names)
        if value is None:
            raise RowRejected(missing)
        return value

    def name_of(self, *names: str) -> str | None:
        """A name given as text, as ``{"name": ...}`` or as a list of either (the first):
        Jira's components and resolution, for instance."""
        value = self.raw(*names)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, dict):
            value = Fields(value).raw("name", "value", "displayName")
        if value is None:
            return None
        if isinstance(value, dict | list | bool):
            raise RowRejected(f"the field '{names[0]}' is not a name")
        return str(value).strip() or None

    def time(self, *names: str) -> datetime | None:
        value = self.raw(*names)
        if value is None:
            return None
        parsed = parse_time(value)
        if parsed is None:
            raise RowRejected(f"the field '{names[0]}' is not a date and time (ISO 8601, "
                              "or seconds or milliseconds since 1970)")
        return parsed


_EXPORT_TIME_FORMATS = (
    "%d/%b/%y %I:%M %p",  # Jira's CSV export: 15/Jan/24 10:30 AM
    "%d/%b/%Y %I:%M %p",
    "%d/%b/%y %H:%M",
    "%d/%b/%Y %H:%M",
    "%Y-%m-%d %H:%M:%S %z",
    "%Y/%m/%d %H:%M:%S",
)


def parse_time(value: Any) -> datetime | None:
    """A timestamp as exports write it: ISO 8601 (``Z``, ``+0000`` or ``+00:00``; without an
    offset, UTC), seconds or milliseconds since 1970 (as a number or digits), or Jira's CSV
    form ``15/Jan/24 10:30 AM``. None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d{9,13}(\.\d+)?", text):
            value = float(text)
        else:
            return _parse_text_time(text)
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _parse_text_time(text: str) -> datetime | None:
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        for form in _EXPORT_TIME_FORMATS:
            try:
                parsed = datetime.strptime(text, form)  # noqa: DTZ007 - UTC is set below
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


# -- streaming records -------------------------------------------------------------------------

Record = tuple[int, Any]  # (row number, the decoded record or a RowRejected)


def json_records(stream: io.BufferedReader, meter: Meter, key: str | None,
                 label: str) -> Iterator[Record]:
    """The items of one JSON document: a list of records, or an object whose ``key`` holds
    the list. Several documents one after another (``gh api --paginate``) are read in turn.
    Row numbers count items from 1 across the file."""
    first = skip_bom_and_space(stream)
    if first not in (b"[", b"{"):
        raise FileUnreadable("The file is not JSON (it does not start with '{' or '['); "
                             "nothing was imported. Choose the JSON export, or the CSV format.")
    target = "item" if first == b"[" else f"{key}.item"
    number = 0
    seen_list = first == b"["
    events = ijson.parse(stream, multiple_values=True, use_float=True)
    try:
        for prefix, event, value in events:
            if prefix == key and event == "start_array":
                seen_list = True
            if prefix != target:
                continue
            number += 1
            if event in ("start_map", "start_array"):
                builder = ijson.ObjectBuilder()
                end = event.replace("start", "end")
                current = prefix
                while (current, event) != (target, end):
                    builder.event(event, value)
                    current, event, value = next(events)
                yield number, builder.value
            else:
                yield number, value
    except ijson.JSONError as exc:
        where = f"near byte {meter.count:,}"
        # the parser's own message quotes the file, so only its kind is used
        if meter.at_end and any(m in str(exc) for m in ("premature EOF", "Incomplete")):
            raise FileUnreadable(f"The JSON ends before it is complete ({where}): the file is "
                                 "truncated; nothing was imported.") from None
        raise FileUnreadable(f"The file is not valid JSON ({where}); nothing was "
                             "imported.") from None
    except UnicodeDecodeError:
        raise _not_utf8(meter) from None
    if not seen_list:
        raise FileUnreadable(f"The JSON has no \"{key}\" list: is it {label}? Nothing was "
                             "imported.")


def jsonl_records(stream: io.BufferedReader, meter: Meter) -> Iterator[Record]:
    """One JSON object per line; blank lines are skipped; row numbers are line numbers. The
    first non-blank line must be JSON, or the file is not JSON Lines at all."""
    skip_bom_and_space(stream)
    line_number = 0
    first = True
    while True:
        line = stream.readline(LINE_MAX_BYTES + 1)
        if not line:
            return
        line_number += 1
        if len(line) > LINE_MAX_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the long line
                line = stream.readline(LINE_MAX_BYTES)
            yield line_number, RowRejected("the line is longer than 1 MB")
            continue
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(meter) from None
        try:
            record = json.loads(text)
        except ValueError:
            if first:
                raise FileUnreadable("The first line is not JSON: the file is not JSON Lines "
                                     "(one JSON object per line); nothing was "
                                     "imported.") from None
            record = RowRejected("the line is not valid JSON")
        first = False
        yield line_number, record


def csv_records(stream: io.BufferedReader, meter: Meter, required: tuple[tuple[str, ...], ...],
                label: str) -> Iterator[Record]:
    """Rows of a CSV file with a header row, as dicts by normalized column name (a repeated
    column, like Jira's "Component/s", gives its first non-empty value). Row numbers are the
    file's line numbers (the header is line 1). ``required``: for each needed value, the
    column names that can hold it; a header without one of them fails the whole file."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    csv.field_size_limit(LINE_MAX_BYTES)
    try:
        header = next(reader, None)
        if header is None:
            raise FileUnreadable("The file is empty; nothing was imported.")
        names = [norm(h) for h in header]
        missing = [alternatives[0] for alternatives in required
                   if not any(norm(a) in names for a in alternatives)]
        if missing:
            raise FileUnreadable(
                f"The CSV header lacks the column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)}, which {label} has; nothing was "
                "imported. Check that the file is the right export for this source.")
        line = reader.line_num
        for values in reader:
            start, line = line + 1, reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(names):
                yield start, RowRejected(f"the row has {len(values)} fields where the header "
                                         f"has {len(names)}")
                continue
            record: dict[str, str] = {}
            for name, value in zip(names, values, strict=True):
                if value.strip() and not record.get(name):
                    record[name] = value
            yield start, record
    except UnicodeDecodeError:
        raise _not_utf8(meter) from None
    except csv.Error as exc:
        raise FileUnreadable(f"The CSV cannot be read at line {reader.line_num}: {exc}; "
                             "nothing was imported.") from None
    finally:
        text.detach()


def _not_utf8(meter: Meter) -> FileUnreadable:
    return FileUnreadable(f"The file is not UTF-8 text (near byte {meter.count:,}); nothing "
                          "was imported. Export it as UTF-8.")

"""Importers of exported files into signals, one module per source kind (cloudwatch, jira,
github_actions, logs: each module's docstring says which exports and field names it accepts).

``SignalFile(stream, kind=..., file_format=..., max_bytes=...)`` reads a binary stream once,
front to back, never holding more than one record (and a read buffer) in memory, and yields
``(row number, Row)`` or ``(row number, RowRejected)``; ``bytes_read`` says how far it got.
A whole-file problem raises ``FileUnreadable`` (base.py) from the iteration.

The format is the one asked for (json, jsonl, csv), else the file name's extension (.json,
.jsonl or .ndjson, .csv), else guessed from the first bytes: ``[`` is JSON; ``{`` is JSON Lines
when the first line is a whole object without the kind's list (``issues``...), else JSON;
anything else is CSV."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, BinaryIO

from tenant_runtime.signals.importers import cloudwatch, github_actions, jira, logs
from tenant_runtime.signals.importers.base import (
    FORMATS,
    FileTooLarge,
    FileUnreadable,
    Meter,
    Row,
    RowRejected,
    buffered,
    csv_records,
    first_line_is_object,
    json_records,
    jsonl_records,
    skip_bom_and_space,
)
from tenant_runtime.text import first_unstorable

__all__ = ["FORMATS", "IMPORTERS", "FileTooLarge", "FileUnreadable", "Row", "RowRejected",
           "SignalFile", "format_of_name"]


@dataclass(frozen=True)
class Importer:
    kind: str
    label: str
    json_key: str
    csv_columns: tuple[tuple[str, ...], ...]
    row_of: Callable[[Any], Row]

    @classmethod
    def of(cls, module: ModuleType) -> Importer:
        return cls(module.KIND, module.LABEL, module.JSON_KEY, module.CSV_COLUMNS,
                   module.row_of)


IMPORTERS = {i.kind: i for i in map(Importer.of, (cloudwatch, jira, github_actions, logs))}


def format_of_name(filename: str | None) -> str | None:
    name = (filename or "").lower()
    for suffix, file_format in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                                (".csv", "csv")):
        if name.endswith(suffix):
            return file_format
    return None


class SignalFile:
    def __init__(self, stream: BinaryIO, *, kind: str, file_format: str | None = None,
                 filename: str | None = None, max_bytes: int | None = None) -> None:
        if kind not in IMPORTERS:
            raise FileUnreadable(f"There is no importer for sources of kind {kind!r}.")
        if file_format is not None and file_format not in FORMATS:
            raise FileUnreadable(f"The format must be one of {', '.join(FORMATS)}.")
        self.importer = IMPORTERS[kind]
        self._meter = Meter(stream, max_bytes)
        self._stream = buffered(self._meter)
        self.file_format = file_format or format_of_name(filename) or self._guess()

    @property
    def bytes_read(self) -> int:
        return self._meter.count

    def _guess(self) -> str:
        first = skip_bom_and_space(self._stream)
        if first == b"[":
            return "json"
        if first == b"{":
            return "jsonl" if first_line_is_object(self._stream, self.importer.json_key) \
                else "json"
        return "csv"

    def records(self) -> Iterator[tuple[int, Any]]:
        imp = self.importer
        if self.file_format == "json":
            return json_records(self._stream, self._meter, imp.json_key, imp.label)
        if self.file_format == "jsonl":
            return jsonl_records(self._stream, self._meter)
        return csv_records(self._stream, self._meter, imp.csv_columns, imp.label)

    def __iter__(self) -> Iterator[tuple[int, Row | RowRejected]]:
        row_of = self.importer.row_of
        for number, record in self.records():
            if isinstance(record, RowRejected):
                yield number, record
                continue
            found = first_unstorable(record)  # before any importer reads, hashes or keeps it
            if found is not None:
                yield number, RowRejected(f"the field '{found[0]}' contains {found[1]}, which "
                                          "cannot be stored")
                continue
            try:
                yield number, row_of(record)
            except RowRejected as rejected:
                yield number, rejected

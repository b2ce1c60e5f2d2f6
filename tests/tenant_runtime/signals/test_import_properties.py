"""The importers on any file (hypothesis): whatever the bytes, a file is either read, each row
becoming a signal or a rejected row with a reason, or refused as a whole with FileUnreadable.
No other exception reaches the import (which would end as "an unexpected error"), and a row or
a rejection never holds what the file did not say. Three shapes of input: arbitrary bytes;
JSON documents of each kind with arbitrary values where the exports put theirs; CSV with each
kind's header and arbitrary cells."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenant_runtime.signals.importers import (
    FORMATS,
    IMPORTERS,
    FileUnreadable,
    Row,
    RowRejected,
    SignalFile,
)

KINDS = sorted(IMPORTERS)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.sampled_from(["2024-05-01T10:20:30Z", "2024-05-01", "",
                                               "not a date", "1714558830000"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)


def read_all(data: bytes, kind: str, file_format: str | None) -> list[tuple[int, Any]]:
    """Every (row number, Row | RowRejected) of the file, or FileUnreadable."""
    found = list(SignalFile(io.BytesIO(data), kind=kind, file_format=file_format,
                            filename="upload", max_bytes=1_000_000))
    for number, item in found:
        assert isinstance(number, int) and number >= 1
        assert isinstance(item, Row | RowRejected), item
        if isinstance(item, Row):
            assert item.external_id and isinstance(item.title, str)
            assert isinstance(item.occurred_at, datetime)
        else:
            assert item.reason.strip(), "a rejected row says why"
    return found


@SETTINGS
@given(data=st.binary(max_size=1500), kind=st.sampled_from(KINDS),
       file_format=st.sampled_from([None, *FORMATS]))
def test_any_bytes_are_read_or_refused_as_a_whole(data, kind, file_format):
    try:
        read_all(data, kind, file_format)
    except FileUnreadable as exc:
        assert exc.message.strip()


def _fields(kind: str) -> list[str]:
    importer = IMPORTERS[kind]
    names = [name for group in importer.csv_columns for name in group]
    return names + ["fields", "summary", "created", "key", "id", "name", "created_at",
                    "AlarmName", "Timestamp", "HistorySummary", "HistoryData", "message",
                    "timestamp", "actor", "assignee", "status", "conclusion", "Team"]


@st.composite
def json_documents(draw) -> tuple[str, bytes, str]:
    kind = draw(st.sampled_from(KINDS))
    names = st.sampled_from(_fields(kind)) | st.text(max_size=8)
    record = st.dictionaries(names, json_values, max_size=8)
    records = draw(st.lists(record | json_values, max_size=6))
    shape = draw(st.sampled_from(["wrapped", "list", "lines"]))
    if shape == "lines":
        text = "\n".join(json.dumps(r) for r in records)
        return kind, text.encode(), "jsonl"
    body: Any = {IMPORTERS[kind].json_key: records} if shape == "wrapped" else records
    return kind, json.dumps(body).encode(), "json"


@SETTINGS
@given(document=json_documents())
def test_json_of_each_kind_with_any_values_is_read_or_refused(document):
    kind, data, file_format = document
    try:
        found = read_all(data, kind, file_format)
    except FileUnreadable as exc:
        assert exc.message.strip()
        return
    assert [n for n, _ in found] == sorted({n for n, _ in found})  # each row once, in order


@st.composite
def csv_files(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    header = [group[0] for group in IMPORTERS[kind].csv_columns]
    header += draw(st.lists(st.sampled_from(_fields(kind)), max_size=3, unique=True))
    cell = st.text(max_size=30) | st.sampled_from(["2024-05-01T10:20:30Z", "", "x"])
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=len(header) + 2), max_size=6))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return kind, out.getvalue().encode("utf-8", "surrogatepass")


@SETTINGS
@given(file=csv_files())
def test_csv_of_each_kind_with_any_cells_is_read_or_refused(file):
    kind, data = file
    try:
        read_all(data, kind, "csv")
    except FileUnreadable as exc:
        assert exc.message.strip()

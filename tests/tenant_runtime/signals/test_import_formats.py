"""The importers on their own, without a database: each kind's JSON and CSV fixture gives known
rows; rejected rows carry their row number and a reason that quotes nothing of the file;
whole-file problems raise FileUnreadable with a sentence; templates and pseudonyms are stable."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tenant_runtime.minimization.pseudonyms import Pseudonymizer
from tenant_runtime.signals.fingerprint import template_of
from tenant_runtime.signals.importers import (
    FileTooLarge,
    FileUnreadable,
    Row,
    RowRejected,
    SignalFile,
)

FIXTURES = Path(__file__).parent / "fixtures"


def read(name: str, kind: str, **kw) -> tuple[list[tuple[int, Row]], list[tuple[int, str]]]:
    with (FIXTURES / name).open("rb") as f:
        found = list(SignalFile(f, kind=kind, filename=name, **kw))
    rows = [(n, r) for n, r in found if isinstance(r, Row)]
    rejects = [(n, r.reason) for n, r in found if isinstance(r, RowRejected)]
    return rows, rejects


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_cloudwatch_json_and_csv():
    rows, rejects = read("cloudwatch.json", "cloudwatch")
    assert [n for n, _ in rows] == [1, 2, 3]
    first = rows[0][1]
    assert first.external_id == "HighCPU-web-1|StateUpdate|2024-05-01T10:20:30.123000+00:00"
    assert first.title == "HighCPU-web-1: Alarm updated from OK to ALARM"
    assert first.occurred_at == at("2024-05-01T10:20:30.123+00:00")
    assert [r.outcome for _, r in rows] == ["ALARM", "OK", "Action"]
    assert first.person is None and first.team is None
    assert rejects == [(4, "the field 'Timestamp' is not a date and time (ISO 8601, or seconds "
                           "or milliseconds since 1970)")]

    rows, rejects = read("cloudwatch.csv", "cloudwatch")
    assert [(n, r.outcome) for n, r in rows] == [(2, "ALARM"), (3, "OK")]
    assert rejects == [(4, "the item has no AlarmName")]


def test_jira_json_and_csv():
    rows, rejects = read("jira.json", "jira")
    assert [(r.external_id, r.outcome, r.team) for _, r in rows] == [
        ("OPS-101", "Done", "Platform"), ("OPS-102", "In Progress", None)]
    ops101 = rows[0][1]
    assert ops101.person == "5b10ac8d82e05b22cc7d4ef5"  # the account id, not the name
    assert ops101.resolved_at == at("2024-03-01T11:00:00+00:00")
    assert rows[1][1].person == "grace.hopper@example.com"  # no account id: the e-mail
    assert rejects == [(3, "the field 'summary' is not text")]

    rows, rejects = read("jira.csv", "jira")
    assert [(n, r.external_id, r.team, r.outcome) for n, r in rows] == [
        (2, "SUP-7", "Support", "Done"), (3, "SUP-8", "Support", "Open")]
    assert rows[0][1].occurred_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert rows[0][1].resolved_at == datetime(2024, 1, 15, 11, 5, tzinfo=UTC)
    assert rows[1][1].person == "61f0aa0000000000000000aa"
    assert rejects == [(4, "the issue has no creation date")]


def test_github_actions_json_and_csv():
    rows, rejects = read("github_actions.json", "github_actions")
    assert [(r.external_id, r.title, r.outcome, r.team, r.person) for _, r in rows] == [
        ("9001", "Deploy", "failure", "acme/shop", "octo-grace"),
        ("9002", "Deploy", "in_progress", "acme/shop", "octo-ada")]
    assert rows[0][1].occurred_at == at("2024-06-01T12:00:05+00:00")  # run_started_at
    assert rows[0][1].resolved_at == at("2024-06-01T12:04:00+00:00")
    assert rows[1][1].resolved_at is None  # still running
    assert rejects == [(3, "the run has no workflow name")]

    rows, rejects = read("github_actions.csv", "github_actions")
    assert [(n, r.external_id, r.outcome) for n, r in rows] == [(2, "9101", "success"),
                                                              (3, "9102", "failure")]
    assert rows[1][1].occurred_at == at("2024-06-05T11:00:00+00:00")  # created_at
    assert rejects == []


def test_gh_paginate_output_is_several_documents():
    page = {"workflow_runs": [{"id": 1, "name": "CI", "created_at": "2024-01-01T00:00:00Z"}]}
    second = {"workflow_runs": [{"id": 2, "name": "CI", "created_at": "2024-01-02T00:00:00Z"}]}
    data = (json.dumps(page) + "\n" + json.dumps(second)).encode()
    found = list(SignalFile(io.BytesIO(data), kind="github_actions", file_format="json"))
    assert [(n, r.external_id) for n, r in found] == [(1, "1"), (2, "2")]


def test_logs_jsonl_and_csv():
    rows, rejects = read("logs.jsonl", "logs")
    assert [n for n, _ in rows] == [1, 2, 4]  # line 3 is blank
    assert [(r.outcome, r.team) for _, r in rows] == [("ERROR", "payments"),
                                                      ("ERROR", "payments"), ("WARN", "search")]
    assert rows[1][1].occurred_at == datetime(2024, 7, 1, 0, 0, 2, tzinfo=UTC)  # epoch ms
    assert rows[2][1].occurred_at == at("2024-06-30T22:00:03+00:00")
    assert rows[0][1].external_id.startswith("sha256:") and len(rows[0][1].external_id) == 71
    assert rejects == [(5, "the line has no message"), (6, "the line is not valid JSON"),
                       (7, "the field 'timestamp' is not a date and time (ISO 8601, or "
                           "seconds or milliseconds since 1970)")]
    for _, reason in rejects:
        assert "When?" not in reason and "yesterday" not in reason

    rows, rejects = read("logs.csv", "logs")
    assert [(n, r.person) for n, r in rows] == [(2, "grace.hopper@example.com"),
                                                (3, "ada.lovelace@example.com")]
    assert rejects == [(4, "the row has 7 fields where the header has 5")]


def test_the_format_is_guessed_from_the_first_bytes():
    line = b'{"timestamp": "2024-01-01T00:00:00Z", "message": "hello"}\n'
    assert SignalFile(io.BytesIO(line * 2), kind="logs").file_format == "jsonl"
    assert SignalFile(io.BytesIO(b"\xef\xbb\xbf[" + line[:-1] + b"]"),
                      kind="logs").file_format == "json"
    events = b'{"events": [{"timestamp": 1700000000000, "message": "x"}]}\n'
    found = SignalFile(io.BytesIO(events), kind="logs")
    assert found.file_format == "json" and len(list(found)) == 1
    assert SignalFile(io.BytesIO(b"timestamp,message\n"), kind="logs").file_format == "csv"


@pytest.mark.parametrize(("name", "kind", "message"), [
    ("truncated.json", "cloudwatch", "The JSON ends before it is complete"),
    ("not_json.json", "jira", "The file is not JSON"),
    ("wrong_header.csv", "cloudwatch",
     "The CSV header lacks the columns 'AlarmName', 'Timestamp', 'HistorySummary'"),
    ("jira.json", "cloudwatch", 'The JSON has no "AlarmHistoryItems" list'),
])
def test_whole_file_problems_raise_a_sentence(name, kind, message):
    with pytest.raises(FileUnreadable) as raised:
        read(name, kind)
    assert raised.value.status_code == 422
    assert message in raised.value.message
    assert "nothing was imported" in raised.value.message.lower()


def test_not_utf8_invalid_json_and_the_size_limit():
    latin = "timestamp,message\n2024-01-01T00:00:00Z,caf\xe9\n".encode("latin-1")
    with pytest.raises(FileUnreadable, match="not UTF-8"):
        list(SignalFile(io.BytesIO(latin), kind="logs", file_format="csv"))
    with pytest.raises(FileUnreadable, match="not valid JSON"):
        list(SignalFile(io.BytesIO(b'{"issues": [{"key": nope}]}'), kind="jira"))
    with pytest.raises(FileUnreadable, match="The first line is not JSON"):
        list(SignalFile(io.BytesIO(b"hello\n"), kind="logs", file_format="jsonl"))
    big = b'{"timestamp": 1700000000, "message": "x"}\n' * 1000
    with pytest.raises(FileTooLarge) as raised:
        list(SignalFile(io.BytesIO(big), kind="logs", max_bytes=10_000))
    assert raised.value.status_code == 413


def test_over_long_and_wrongly_typed_fields_reject_the_row():
    lines = [{"timestamp": "2024-01-01T00:00:00Z", "message": "m" * 2001},
             {"timestamp": "2024-01-01T00:00:00Z", "message": "ok", "service": "s" * 101},
             {"timestamp": True, "message": "ok"},
             {"timestamp": "2024-01-01T00:00:00Z", "message": ["a"]},
             [1, 2],
             {"timestamp": "2024-01-01T00:00:00Z", "message": "fine"}]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    found = list(SignalFile(io.BytesIO(data), kind="logs"))
    assert [(n, r.reason if isinstance(r, RowRejected) else "row") for n, r in found] == [
        (1, "the field 'message' is longer than 2,000 characters"),
        (2, "the field 'service' is longer than 100 characters"),
        (3, "the field 'timestamp' is not a date and time (ISO 8601, or seconds or "
            "milliseconds since 1970)"),
        (4, "the field 'message' is not text"),
        (5, "the line is not a JSON object"),
        (6, "row")]


def test_templates_mask_what_varies_and_redact_people():
    assert template_of("Disk 91% full on db-7 (10.0.3.12)") == \
        template_of("Disk 97.5% full on db-2 (10.0.3.40:5432)") == "disk <n>% full on db-<n> (<ip>)"
    assert template_of("2024-01-02T03:04:05Z  ERROR request 17 failed for "
                       "john.smith@example.com,\nAlice Johnson notified") == \
        "<time> error request <n> failed for <email>, <person> notified"
    assert template_of("req 550e8400-e29b-41d4-a716-446655440000 deadbeef12 0x1F fe80::1") \
        == "req <uuid> <hex> <hex> <ip>"
    assert template_of("x" * 400) == "x" * 300


def test_pseudonyms_are_keyed_normalized_and_short():
    one, other = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert one("Ada@Example.com ") == one("ada@example.com")
    assert len(one("ada@example.com")) == 32
    assert one("ada@example.com") != other("ada@example.com")
    assert one("ada@example.com") != one("grace@example.com")
    assert one(None) is None and one("  ") is None
    secret = Pseudonymizer(b"\x07" * 32)
    assert "\\x07" not in repr(secret) and "07070707" not in repr(secret)


def test_a_nul_or_a_lone_surrogate_in_a_field_rejects_the_row():
    """A JSON escape decodes to what Postgres cannot store; a CSV holds the byte itself."""
    lines = [{"timestamp": "2024-01-01T00:00:00Z", "message": "disk\u0000full"},
             {"timestamp": "2024-01-01T00:00:00Z", "message": "ok", "service": "s\ud800"},
             {"timestamp": "2024-01-01T00:00:00Z", "message": "fine \ud83d\ude00"}]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    found = list(SignalFile(io.BytesIO(data), kind="logs"))
    assert [(n, r.reason if isinstance(r, RowRejected) else "row") for n, r in found] == [
        (1, "the field 'message' contains a NUL character, which cannot be stored"),
        (2, "the field 'service' contains an unpaired surrogate (a broken UTF-16 escape "
            "such as \\ud800), which cannot be stored"),
        (3, "row")]
    csv_data = b"timestamp,message\n2024-01-01T00:00:00Z,bad\x00byte\n2024-01-01T00:00:00Z,ok\n"
    found = list(SignalFile(io.BytesIO(csv_data), kind="logs", filename="x.csv"))
    assert [(n, r.reason if isinstance(r, RowRejected) else "row") for n, r in found] == [
        (2, "the field 'message' contains a NUL character, which cannot be stored"),
        (3, "row")]

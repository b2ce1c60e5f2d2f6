"""CloudWatch alarm history, as ``aws cloudwatch describe-alarm-history`` prints it::

    {"AlarmHistoryItems": [{"AlarmName": "HighCPU-web", "AlarmType": "MetricAlarm",
      "Timestamp": "2024-05-01T10:20:30.123Z", "HistoryItemType": "StateUpdate",
      "HistorySummary": "Alarm updated from OK to ALARM",
      "HistoryData": "{\\"oldState\\": {...}, \\"newState\\": {\\"stateValue\\": \\"ALARM\\"}}"}]}

or a CSV with the columns AlarmName, Timestamp, HistoryItemType, HistorySummary and, optionally,
HistoryData (the same JSON text), NewState (instead of HistoryData), Team.

A signal: external id ``AlarmName|HistoryItemType|Timestamp`` (a hash when longer than 200
characters); title ``AlarmName: HistorySummary``; outcome the new state (``ALARM``, ``OK``,
``INSUFFICIENT_DATA``) for a state update, else the item type; no person; the team is the
import's default team unless the row has a Team column."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tenant_runtime.signals.importers.base import (
    EXTERNAL_ID_MAX_CHARS,
    OUTCOME_MAX_CHARS,
    TEAM_MAX_CHARS,
    TITLE_MAX_CHARS,
    Fields,
    Row,
    RowRejected,
)

KIND = "cloudwatch"
LABEL = "a CloudWatch alarm history export (aws cloudwatch describe-alarm-history)"
JSON_KEY = "AlarmHistoryItems"
CSV_COLUMNS = (("AlarmName",), ("Timestamp",), ("HistorySummary",))


def external_id(*parts: str) -> str:
    joined = "|".join(parts)
    if len(joined) <= EXTERNAL_ID_MAX_CHARS:
        return joined
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()


def _new_state(data: Any) -> str | None:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            raise RowRejected("the field 'HistoryData' is not JSON") from None
    if not isinstance(data, dict):
        return None
    state = data.get("newState")
    if isinstance(state, dict):
        value = state.get("stateValue")
        return value if isinstance(value, str) else None
    return None


def row_of(record: Any) -> Row:
    if not isinstance(record, dict):
        raise RowRejected("the item is not an object")
    f = Fields(record)
    name = f.must_text("AlarmName", max_chars=255, missing="the item has no AlarmName")
    summary = f.text("HistorySummary", "Summary", max_chars=TITLE_MAX_CHARS,
                     numbers=False) or ""
    occurred = f.must_time("Timestamp", missing="the item has no Timestamp")
    kind = f.text("HistoryItemType", "Type", max_chars=OUTCOME_MAX_CHARS) or "StateUpdate"
    outcome = f.text("NewState", max_chars=OUTCOME_MAX_CHARS)
    if outcome is None:
        outcome = _new_state(f.raw("HistoryData")) if kind == "StateUpdate" else kind
    if outcome is not None and len(outcome) > OUTCOME_MAX_CHARS:
        raise RowRejected(f"the new state is longer than {OUTCOME_MAX_CHARS} characters")
    title = f"{name}: {summary}" if summary else name
    if len(title) > TITLE_MAX_CHARS:
        raise RowRejected(f"the alarm name and summary are longer than {TITLE_MAX_CHARS:,} "
                          "characters")
    return Row(external_id=external_id(name, kind, occurred.isoformat()), title=title,
               occurred_at=occurred, outcome=outcome,
               team=f.text("Team", max_chars=TEAM_MAX_CHARS))

"""Log lines: JSON Lines (one object per line), a JSON list of them, CloudWatch Logs'
``filter-log-events`` output (``{"events": [{"timestamp", "message", "logStreamName"}]}``),
or a CSV with a header. Each record needs a timestamp and a message; the names looked for:

    timestamp   timestamp, time, @timestamp, ts, datetime, date
    message     message, msg, @message, log, text
    level       level, severity, loglevel, levelname (the outcome)
    team        service, team, app, application, logStreamName
    person      user, username, user_id, userid, actor

A signal: external id ``sha256:`` and the SHA-256 of the record's canonical JSON (of the CSV row's
values), so the same line imported twice is one signal; title the message; occurred at the
timestamp; team the service (else the import's default team); person the user, pseudonymized
when stored."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tenant_runtime.signals.importers.base import (
    OUTCOME_MAX_CHARS,
    PERSON_MAX_CHARS,
    TEAM_MAX_CHARS,
    TITLE_MAX_CHARS,
    Fields,
    Row,
    RowRejected,
)

KIND = "logs"
LABEL = "a log export (JSON Lines or CSV with a timestamp and a message)"
JSON_KEY = "events"
TIME_NAMES = ("timestamp", "time", "@timestamp", "ts", "datetime", "date")
MESSAGE_NAMES = ("message", "msg", "@message", "log", "text")
CSV_COLUMNS = (TIME_NAMES, MESSAGE_NAMES)


def row_of(record: Any) -> Row:
    if not isinstance(record, dict):
        raise RowRejected("the line is not a JSON object")
    f = Fields(record)
    message = f.must_text(*MESSAGE_NAMES, max_chars=TITLE_MAX_CHARS, numbers=False,
                          missing="the line has no message")
    occurred = f.must_time(*TIME_NAMES, missing="the line has no timestamp")
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return Row(external_id="sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
               title=message, occurred_at=occurred,
               outcome=f.text("level", "severity", "loglevel", "levelname",
                              max_chars=OUTCOME_MAX_CHARS),
               team=f.text("service", "team", "app", "application", "logStreamName",
                           max_chars=TEAM_MAX_CHARS),
               person=f.text("user", "username", "user_id", "userid", "actor",
                             max_chars=PERSON_MAX_CHARS))

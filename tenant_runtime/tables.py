"""What the console's tables share (recent calls, approvals history, audit timeline, jobs):
reading a filter, a sort and a page number from the address, each refused with a sentence that
says what to send instead, and CSV that a spreadsheet will not run as formulas."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from urllib.parse import urlencode

from tenant_runtime.exceptions import TenantInvalidInput

MAX_PAGE = 200
CSV_MAX_ROWS = 10_000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class TableFilter:
    """A table's filter (a frozen dataclass) as a query string, with ``changes`` (for the
    pager, sort and CSV links); empty values are left out."""

    def query(self, **changes: object) -> str:
        return query_string({**asdict(self), **changes})  # type: ignore[call-overload]


def choice(query: Mapping[str, str], name: str, allowed: Sequence[str], *, default: str = "",
           what: str | None = None) -> str:
    """``query[name]`` when it is one of ``allowed`` (empty: ``default``); else a 422 that
    lists the choices."""
    value = query.get(name, "").strip() or default
    if value and value not in allowed:
        raise TenantInvalidInput(f"{what or f'The {name} filter'} must be one of "
                                 f"{', '.join(allowed)}.")
    return value


def page_number(query: Mapping[str, str]) -> int:
    raw = query.get("page", "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise TenantInvalidInput(f"The page must be a number from 1 to {MAX_PAGE}.")
    return int(raw)


def text_filter(query: Mapping[str, str], name: str, *, max_length: int = 100) -> str:
    value = query.get(name, "").strip()
    if len(value) > max_length:
        raise TenantInvalidInput(f"The {name} filter is at most {max_length} characters.")
    return value


def query_string(values: Mapping[str, object]) -> str:
    """A filter's query string without its empty values (for pager, sort and CSV links)."""
    return urlencode({k: v for k, v in values.items() if v not in ("", None)})


def like_pattern(text: str) -> str:
    """``text`` as an ILIKE "contains" pattern, its own % and _ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return out.getvalue()


def csv_headers(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}

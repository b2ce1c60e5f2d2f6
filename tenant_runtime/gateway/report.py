"""What the gateway page shows: spend this month against the cap, per model and per day (a
server-rendered SVG bar chart), and the recent calls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenant_runtime.gateway import spend
from tenant_runtime.models import GatewayCall

CHART_WIDTH, CHART_HEIGHT = 620, 160


@dataclass(frozen=True)
class ModelSpend:
    model: str
    calls: int
    cost_micros: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class SpendReport:
    month: date
    cap_micros: int
    spent_micros: int
    reserved_micros: int
    by_model: list[ModelSpend]
    by_day: list[tuple[date, int]]

    @property
    def share(self) -> float:
        return min(1.0, self.spent_micros / self.cap_micros) if self.cap_micros else 1.0

    def chart_svg(self) -> str:
        """Bars of the daily spend; only numbers and dates go into it."""
        top = max((cost for _, cost in self.by_day), default=0) or 1
        width = CHART_WIDTH / max(len(self.by_day), 1)
        bars = []
        for i, (day, cost) in enumerate(self.by_day):
            height = round((CHART_HEIGHT - 20) * cost / top)
            x, y = round(i * width + 1, 1), CHART_HEIGHT - 16 - height
            bars.append(f'<rect x="{x}" y="{y}" width="{round(width - 2, 1)}" '
                        f'height="{height}"><title>{day.isoformat()}: '
                        f'{spend.dollars(cost)}</title></rect>')
            if day.day in (1, 8, 15, 22, 29):
                bars.append(f'<text x="{x}" y="{CHART_HEIGHT - 2}">{day.day}</text>')
        return (f'<svg class="chart" role="img" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
                f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" aria-label="Spend per day this '
                f'month, highest {spend.dollars(top if self.by_day else 0)}">'
                + "".join(bars) + "</svg>")


def spend_report(s: Session, *, cap_micros: int, now: datetime | None = None) -> SpendReport:
    moment = now or datetime.now(UTC)
    month = spend.month_of(moment)
    spent, reserved = spend.month_totals(s, month)
    in_month = GatewayCall.month == month
    by_model = [ModelSpend(model, int(calls), int(cost or 0), int(tin or 0), int(tout or 0))
                for model, calls, cost, tin, tout in s.execute(
                    select(GatewayCall.model_name, func.count(), func.sum(GatewayCall.cost_micros),
                           func.sum(GatewayCall.tokens_in), func.sum(GatewayCall.tokens_out))
                    .where(in_month).group_by(GatewayCall.model_name)
                    .order_by(func.sum(GatewayCall.cost_micros).desc()))]
    day = func.date_trunc("day", func.timezone("UTC", GatewayCall.created_at))
    daily = {row[0].date(): int(row[1] or 0) for row in s.execute(
        select(day, func.sum(GatewayCall.cost_micros)).where(in_month).group_by(day))}
    days = [month + timedelta(days=i) for i in range((spend.next_month(month) - month).days)]
    return SpendReport(month, cap_micros, spent, reserved, by_model,
                       [(d, daily.get(d, 0)) for d in days if d <= moment.date()])


def recent_calls(s: Session, limit: int = 50) -> list[GatewayCall]:
    return list(s.scalars(select(GatewayCall).order_by(GatewayCall.id.desc()).limit(limit)))

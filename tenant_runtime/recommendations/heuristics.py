"""The heuristic analysis: what the task's own signals say when no panel could be formed (no
model reachable, every model refused, the spend cap reached). It is deliberately cautious: its
best outcome is ``pilot``, and the gate never turns it into ``do_now``.

    a signal missing                → it cannot vouch for the task
    uniformity or handler           → human_only: the cases, or the way people settle them,
    consistency below 0.4             vary too much to write down
    under 2 occurrences a month     → not_recommended: too rare to be worth automating
    at least 20 a month, uniformity → pilot: a good candidate, to be tried under watch
    and consistency at least 0.7
    anything else                   → human_only
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tenant_runtime.recommendations.schemas import TaskSignals

FREQUENT_PER_MONTH = 20.0
RARE_PER_MONTH = 2.0
STRONG = 0.7
WEAK = 0.4


@dataclass(frozen=True)
class HeuristicAnalysis:
    suggestion: str  # pilot, human_only or not_recommended; never do_now
    findings: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "findings": list(self.findings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeuristicAnalysis:
        return cls(str(data["suggestion"]), tuple(str(f) for f in data["findings"]))


def _pct(value: float) -> str:
    return f"{round(value * 100)}%"


def analyse(signals: TaskSignals) -> HeuristicAnalysis:
    findings: list[str] = []
    rec, uni, cons = signals.recurrence, signals.uniformity, signals.handler_consistency
    if rec is None and uni is None and cons is None:
        return HeuristicAnalysis("human_only", (
            "The task has no signals (recurrence, uniformity, handler consistency) to judge "
            "from, so it stays with people.",))
    per_month = rec.per_month() if rec is not None else None
    if rec is not None and per_month is not None:
        findings.append(f"It recurs {rec.occurrences} times a {rec.period} "
                        f"(about {per_month:.1f} a month).")
    else:
        findings.append("How often it recurs is not known.")
    if uni is not None:
        findings.append(f"Its cases are {_pct(uni)} alike (uniformity).")
    else:
        findings.append("How alike its cases are is not known.")
    if cons is not None:
        findings.append(f"People handle it the same way {_pct(cons)} of the time "
                        "(handler consistency).")
    else:
        findings.append("How consistently people handle it is not known.")

    if (uni is not None and uni < WEAK) or (cons is not None and cons < WEAK):
        findings.append(f"Cases or handling vary too much (below {_pct(WEAK)}) to write the "
                        "work down: keep it with people.")
        return HeuristicAnalysis("human_only", tuple(findings))
    if per_month is not None and per_month < RARE_PER_MONTH:
        findings.append(f"Under {RARE_PER_MONTH:g} occurrences a month, automating it is not "
                        "worth its cost.")
        return HeuristicAnalysis("not_recommended", tuple(findings))
    if (per_month is not None and per_month >= FREQUENT_PER_MONTH and uni is not None
            and uni >= STRONG and cons is not None and cons >= STRONG):
        findings.append(f"Frequent (at least {FREQUENT_PER_MONTH:g} a month), uniform and "
                        f"consistently handled (each at least {_pct(STRONG)}): a candidate "
                        "for a pilot under watch.")
        return HeuristicAnalysis("pilot", tuple(findings))
    findings.append("The signals do not make a strong case for automation: keep it with "
                    "people until a panel can judge it.")
    return HeuristicAnalysis("human_only", tuple(findings))

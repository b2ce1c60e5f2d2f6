"""The gate: from the panel's valid votes (or the heuristic analysis) to a verdict, with its
reasons as sentences. A pure function: no database, no model, and the deliberator's text is not
an input, so nothing a model writes can override it.

Verdicts, checked in this order:

1. **Compliance veto.** A task tagged ``PHI`` or ``regulated`` (any case) is ``human_only``,
   whatever the scores or signals.
2. **No valid vote** (no model reachable, every model refused, spend cap reached, or no usable
   answer): the heuristic analysis of the task's signals decides, marked "heuristic — panel
   unavailable", and it is never ``do_now``.
3. **Medians of the valid votes.** Cost/benefit below 4 → ``not_recommended``; human
   sensitivity or customer risk at 7 or more, or compliance at 3 or less → ``human_only``.
4. **do_now** only when the panel *formed* (at least two thirds of the panel gave a valid
   vote: 2 of 3, 3 of 4, 4 of 6) and *agreed* (every valid vote clears every threshold).
   Otherwise ``pilot``, with the reason: which model missed which threshold, or how many votes
   were missing.

Thresholds are per tenant (``Thresholds``; defaults: cost/benefit ≥ 7, customer risk ≤ 3,
human sensitivity ≤ 4, compliance ≥ 7; a score equal to its threshold clears it). The cut-offs
of step 3 are fixed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from statistics import median

from tenant_runtime.recommendations.heuristics import HeuristicAnalysis

VERDICTS = ("do_now", "pilot", "human_only", "not_recommended")
VERDICT_LABELS = {"do_now": "Do now", "pilot": "Pilot", "human_only": "Human only",
                  "not_recommended": "Not recommended"}
VETO_TAGS = ("phi", "regulated")
HEURISTIC_MARK = "heuristic — panel unavailable"

NOT_RECOMMENDED_BELOW = 4  # median cost/benefit
HUMAN_ONLY_FROM = 7  # median human sensitivity or customer risk
COMPLIANCE_HUMAN_ONLY_UPTO = 3  # median compliance


@dataclass(frozen=True)
class Scores:
    cost_benefit: int
    human_sensitivity: int
    customer_risk: int
    compliance: int


@dataclass(frozen=True)
class Thresholds:
    min_cost_benefit: int = 7
    max_customer_risk: int = 3
    max_human_sensitivity: int = 4
    min_compliance: int = 7

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> Thresholds:
        return cls(**{f.name: int(data[f.name]) for f in fields(cls) if f.name in data})

    def misses(self, scores: Scores) -> list[str]:
        """The thresholds ``scores`` does not clear, as phrases."""
        out = []
        if scores.cost_benefit < self.min_cost_benefit:
            out.append(f"cost/benefit {scores.cost_benefit} is below {self.min_cost_benefit}")
        if scores.customer_risk > self.max_customer_risk:
            out.append(f"customer risk {scores.customer_risk} is above "
                       f"{self.max_customer_risk}")
        if scores.human_sensitivity > self.max_human_sensitivity:
            out.append(f"human sensitivity {scores.human_sensitivity} is above "
                       f"{self.max_human_sensitivity}")
        if scores.compliance < self.min_compliance:
            out.append(f"compliance {scores.compliance} is below {self.min_compliance}")
        return out


@dataclass(frozen=True)
class Decision:
    verdict: str
    reasons: tuple[str, ...]
    mode: str  # "panel" or "heuristic"
    formed: bool
    agreed: bool
    vetoed: bool


def required_votes(panel_size: int) -> int:
    """Valid votes the panel needs to form: at least two thirds of it."""
    return math.ceil(2 * panel_size / 3)


def panel_formed(valid: int, panel_size: int) -> bool:
    return panel_size > 0 and 3 * valid >= 2 * panel_size


def vetoing_tags(tags: Iterable[str]) -> list[str]:
    return [t for t in tags if t.strip().casefold() in VETO_TAGS]


def _num(value: float) -> str:
    return f"{value:g}"


def decide(*, tags: Iterable[str], panel_size: int, votes: Mapping[str, Scores],
           thresholds: Thresholds, heuristic: HeuristicAnalysis | None) -> Decision:
    """The verdict for a task. ``votes`` holds the valid votes by model name; ``heuristic`` is
    used only when there is none."""
    valid = len(votes)
    formed = panel_formed(valid, panel_size)
    mode = "panel" if valid else "heuristic"
    veto = vetoing_tags(tags)
    if veto:
        return Decision("human_only", (
            f"Compliance veto: the task is tagged {', '.join(veto)}, so it is human_only "
            "whatever the scores.",), mode, formed, False, True)

    if not valid:
        reasons = [f"{HEURISTIC_MARK}: no panel model gave a valid vote (0 of {panel_size})."]
        if heuristic is None:
            return Decision("human_only", (*reasons, "Without votes or signals it stays with "
                                           "people."), mode, False, False, False)
        verdict = "pilot" if heuristic.suggestion == "do_now" else heuristic.suggestion
        reasons.append(f"The task's signals suggest {verdict}; a heuristic is never do_now.")
        return Decision(verdict, tuple(reasons), mode, False, False, False)

    medians = {name: median(getattr(s, name) for s in votes.values())
               for name in ("cost_benefit", "human_sensitivity", "customer_risk",
                            "compliance")}
    count = f"{valid} of {panel_size}"
    if medians["cost_benefit"] < NOT_RECOMMENDED_BELOW:
        return Decision("not_recommended", (
            f"The panel's median cost/benefit is {_num(medians['cost_benefit'])} ({count} "
            f"valid votes), below {NOT_RECOMMENDED_BELOW}: automating it is not worth it.",),
            mode, formed, False, False)
    human = [f"median {label} is {_num(medians[name])}, at least {HUMAN_ONLY_FROM}"
             for name, label in (("human_sensitivity", "human sensitivity"),
                                 ("customer_risk", "customer risk"))
             if medians[name] >= HUMAN_ONLY_FROM]
    if medians["compliance"] <= COMPLIANCE_HUMAN_ONLY_UPTO:
        human.append(f"median compliance is {_num(medians['compliance'])}, at most "
                     f"{COMPLIANCE_HUMAN_ONLY_UPTO}")
    if human:
        return Decision("human_only", (
            f"The panel ({count} valid votes) keeps it with people: {'; '.join(human)}.",),
            mode, formed, False, False)

    misses = {model: thresholds.misses(scores) for model, scores in sorted(votes.items())}
    misses = {model: m for model, m in misses.items() if m}
    agreed = not misses
    need = required_votes(panel_size)
    if agreed and formed:
        return Decision("do_now", (
            f"The panel formed ({count} valid votes; at least {need} needed) and agreed: "
            "every valid vote clears every threshold.",), mode, True, True, False)
    reasons = []
    if misses:
        reasons.append("The panel disagrees, so do_now is downgraded to pilot: " + "; ".join(
            f"{model}: {', '.join(m)}" for model, m in misses.items()) + ".")
    if not formed:
        reasons.append(f"The panel did not form: only {count} panel models gave a valid vote, "
                       f"and do_now needs at least {need}. "
                       + ("Every valid vote clears the thresholds, but do_now is downgraded "
                          "to pilot." if agreed else ""))
    return Decision("pilot", tuple(r.strip() for r in reasons), mode, formed, agreed, False)

"""The recommendation gate's shapes: a task as operators give it (form or JSON import), its
signals, and what models must answer: a panel vote and the deliberator's synthesis, each a
strict JSON schema (``extra="forbid"``, integers that are integers). An answer that does not
fit is an abstention, never a crash."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError

PERIODS = ("day", "week", "month", "quarter", "year")
PER_MONTH = {"day": 30.0, "week": 52 / 12, "month": 1.0, "quarter": 1 / 3, "year": 1 / 12}
DIMENSIONS = ("cost_benefit", "human_sensitivity", "customer_risk", "compliance")
DIMENSION_LABELS = {"cost_benefit": "cost/benefit", "human_sensitivity": "human sensitivity",
                    "customer_risk": "customer risk", "compliance": "compliance"}
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")

Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, pattern=TAG.pattern)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- tasks ---------------------------------------------------------------------------------


class Recurrence(Strict):
    occurrences: StrictInt = Field(ge=0, le=10_000_000)
    period: Literal["day", "week", "month", "quarter", "year"]

    def per_month(self) -> float:
        return self.occurrences * PER_MONTH[self.period]


class TaskSignals(Strict):
    """Counts and ratios about how a task is done today; each may be unknown. Importers (a
    later issue) fill them from ticketing systems; operators may type them."""

    recurrence: Recurrence | None = None
    uniformity: Ratio | None = None  # how alike the cases are, 0..1
    handler_consistency: Ratio | None = None  # how alike people handle them, 0..1


class TaskInput(Strict):
    """One task, from the form or one item of a JSON import."""

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=200)]
    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                  max_length=20_000)]
    team: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] = ""
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    signals: TaskSignals = Field(default_factory=TaskSignals)


class TaskImport(Strict):
    """The JSON document an import takes: ``{"tasks": [...]}`` or a bare list."""

    tasks: list[object] = Field(max_length=1000)


# -- what models answer --------------------------------------------------------------------


class DimensionVote(Strict):
    score: StrictInt = Field(ge=0, le=10)
    rationale: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                max_length=300)]


class PanelVoteAnswer(Strict):
    """A panel model's vote. Scores: cost_benefit (10 = clearly worth automating),
    human_sensitivity (10 = people must handle it), customer_risk (10 = a mistake hurts
    customers badly), compliance (10 = no regulatory concern)."""

    cost_benefit: DimensionVote
    human_sensitivity: DimensionVote
    customer_risk: DimensionVote
    compliance: DimensionVote


class Deliberation(Strict):
    synthesis: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                max_length=2000)]
    agreements: list[Annotated[str, StringConstraints(max_length=300)]] = Field(max_length=8)
    disagreements: list[Annotated[str, StringConstraints(max_length=300)]] = Field(
        max_length=8)


class AnswerRefused(ValueError):
    """A model's answer does not fit the schema; the sentence says how, never what it said."""


_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def _json_of(text: str) -> object:
    body = text.strip()
    fenced = _FENCE.match(body)  # one fenced block is tolerated; nothing else around it
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body)
    except ValueError:
        raise AnswerRefused("the answer is not a JSON object") from None


def _where(exc: ValidationError) -> str:
    """Where the answer went wrong, in our field names only: an unknown key is the model's
    text, so it is not repeated."""
    first = exc.errors()[0]
    if first["type"] == "extra_forbidden":
        return "it has a field that is not part of the schema"
    field = ".".join(str(p) for p in first["loc"]) or "the answer"
    return f"{field} {'is missing' if first['type'] == 'missing' else 'is not valid'}"


def parse_vote(text: str) -> PanelVoteAnswer:
    try:
        return PanelVoteAnswer.model_validate(_json_of(text))
    except ValidationError as exc:
        raise AnswerRefused(f"the vote does not fit the schema: {_where(exc)}") from None


def parse_deliberation(text: str) -> Deliberation:
    try:
        return Deliberation.model_validate(_json_of(text))
    except ValidationError as exc:
        raise AnswerRefused(f"the synthesis does not fit the schema: {_where(exc)}") from None

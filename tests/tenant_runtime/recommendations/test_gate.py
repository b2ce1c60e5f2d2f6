"""The gate as a pure function, at its boundaries; the heuristic; the vote schema."""

from __future__ import annotations

import json

import pytest

from tenant_runtime.recommendations import gate, heuristics
from tenant_runtime.recommendations.consensus import compare
from tenant_runtime.recommendations.schemas import AnswerRefused, TaskSignals, parse_vote

T = gate.Thresholds()
AT_THRESHOLDS = gate.Scores(cost_benefit=7, human_sensitivity=4, customer_risk=3, compliance=7)
GOOD = gate.Scores(9, 1, 1, 9)
PILOT_SIGNALS = heuristics.analyse(TaskSignals.model_validate(
    {"recurrence": {"occurrences": 30, "period": "month"}, "uniformity": 0.7,
     "handler_consistency": 0.7}))


def decide(votes, *, panel_size=3, tags=(), heuristic=None, thresholds=T):
    return gate.decide(tags=tags, panel_size=panel_size, votes=votes, thresholds=thresholds,
                       heuristic=heuristic)


def test_scores_equal_to_the_thresholds_clear_them():
    d = decide({"a": AT_THRESHOLDS, "b": AT_THRESHOLDS, "c": AT_THRESHOLDS})
    assert (d.verdict, d.formed, d.agreed) == ("do_now", True, True)


@pytest.mark.parametrize("field,value,phrase", [
    ("cost_benefit", 6, "cost/benefit 6 is below 7"),
    ("human_sensitivity", 5, "human sensitivity 5 is above 4"),
    ("customer_risk", 4, "customer risk 4 is above 3"),
    ("compliance", 6, "compliance 6 is below 7"),
])
def test_one_point_past_a_threshold_is_a_pilot_naming_it(field, value, phrase):
    off = gate.Scores(**{**AT_THRESHOLDS.__dict__, field: value})
    d = decide({"a": AT_THRESHOLDS, "b": off, "c": AT_THRESHOLDS})
    assert d.verdict == "pilot" and not d.agreed
    assert f"b: {phrase}" in d.reasons[0]


@pytest.mark.parametrize("valid,size,formed", [
    (2, 3, True), (1, 3, False), (3, 3, True), (4, 6, True), (3, 6, False), (3, 4, True),
    (2, 4, False), (1, 1, True), (0, 3, False), (5, 7, True), (4, 7, False)])
def test_the_panel_forms_at_exactly_two_thirds(valid, size, formed):
    assert gate.panel_formed(valid, size) is formed
    votes = {f"m{i}": GOOD for i in range(valid)}
    d = decide(votes, panel_size=size, heuristic=PILOT_SIGNALS)
    if valid == 0:
        assert d.mode == "heuristic" and d.verdict != "do_now"
    else:
        assert d.verdict == ("do_now" if formed else "pilot")
        if not formed:
            assert f"only {valid} of {size}" in " ".join(d.reasons)


def test_the_compliance_veto_is_case_insensitive_and_beats_perfect_scores():
    perfect = gate.Scores(10, 0, 0, 10)
    for tags in (("PHI",), ("phi",), ("Regulated",), ("billing", "REGULATED")):
        d = decide({"a": perfect, "b": perfect, "c": perfect}, tags=tags)
        assert (d.verdict, d.vetoed) == ("human_only", True)
        assert "Compliance veto" in d.reasons[0]
    assert decide({}, tags=("phi",), heuristic=PILOT_SIGNALS).verdict == "human_only"
    assert decide({"a": perfect, "b": perfect}, tags=("phi-adjacent",)).verdict == "do_now"


def test_medians_decide_not_recommended_and_human_only():
    low = gate.Scores(3, 1, 1, 9)
    assert decide({"a": low, "b": low, "c": GOOD}).verdict == "not_recommended"
    assert decide({"a": gate.Scores(4, 1, 1, 9), "b": gate.Scores(4, 1, 1, 9),
                   "c": GOOD}).verdict == "pilot"  # 4 is not below 4
    sensitive = gate.Scores(9, 7, 1, 9)
    d = decide({"a": sensitive, "b": sensitive, "c": GOOD})
    assert d.verdict == "human_only" and "human sensitivity is 7" in d.reasons[0]
    assert decide({"a": gate.Scores(9, 1, 1, 3), "b": gate.Scores(9, 1, 1, 3),
                   "c": GOOD}).verdict == "human_only"


def test_a_heuristic_is_never_do_now():
    suggests_do_now = heuristics.HeuristicAnalysis("do_now", ("forged",))
    d = decide({}, heuristic=suggests_do_now)
    assert d.verdict == "pilot" and d.mode == "heuristic"
    assert d.reasons[0].startswith("heuristic — panel unavailable")
    assert decide({}, heuristic=None).verdict == "human_only"


def test_thresholds_are_per_tenant():
    strict = gate.Thresholds(min_cost_benefit=10)
    assert decide({"a": GOOD, "b": GOOD, "c": GOOD}, thresholds=strict).verdict == "pilot"
    assert gate.Thresholds.from_dict(strict.as_dict()) == strict


@pytest.mark.parametrize("signals,expected", [
    ({}, "human_only"),
    ({"recurrence": {"occurrences": 20, "period": "month"}, "uniformity": 0.7,
      "handler_consistency": 0.7}, "pilot"),
    ({"recurrence": {"occurrences": 19, "period": "month"}, "uniformity": 0.9,
      "handler_consistency": 0.9}, "human_only"),
    ({"recurrence": {"occurrences": 5, "period": "day"}, "uniformity": 0.39,
      "handler_consistency": 0.9}, "human_only"),
    ({"recurrence": {"occurrences": 1, "period": "month"}, "uniformity": 0.9}, "not_recommended"),
    ({"recurrence": {"occurrences": 10, "period": "week"}, "uniformity": 0.9}, "human_only"),
])
def test_the_heuristic_at_its_boundaries(signals, expected):
    analysis = heuristics.analyse(TaskSignals.model_validate(signals))
    assert analysis.suggestion == expected
    assert analysis.findings


def test_votes_must_fit_the_schema_exactly():
    good = {d: {"score": 5, "rationale": "ok"} for d in
            ("cost_benefit", "human_sensitivity", "customer_risk", "compliance")}
    assert parse_vote(json.dumps(good)).cost_benefit.score == 5
    assert parse_vote("```json\n" + json.dumps(good) + "\n```").compliance.score == 5
    for bad in ("", "nope", "[]", json.dumps({**good, "verdict": "do_now"}),
                json.dumps({**good, "compliance": {"score": 11, "rationale": "x"}}),
                json.dumps({**good, "compliance": {"score": "7", "rationale": "x"}}),
                json.dumps({**good, "compliance": {"score": True, "rationale": "x"}}),
                json.dumps({**good, "compliance": {"score": 7, "rationale": "x" * 301}}),
                json.dumps({**good, "compliance": {"score": 7, "rationale": "x", "y": 1}}),
                "Sure! " + json.dumps(good)):
        with pytest.raises(AnswerRefused):
            parse_vote(bad)


def test_agreements_and_disagreements_are_named():
    found = compare({"a": gate.Scores(8, 2, 1, 9), "b": gate.Scores(8, 3, 8, 9)})
    assert "All 2 valid votes put cost/benefit at 8." in found.agreements
    assert "Customer risk ranges from 1 (a) to 8 (b)." in found.disagreements
    assert compare({"a": GOOD}).agreements == ()

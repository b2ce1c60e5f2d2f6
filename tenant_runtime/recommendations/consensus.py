"""Where the panel agrees and where it does not, computed from the valid votes' scores: the
page shows these next to the deliberator's words, and the deliberator is given them, so the
agreements and disagreements are named even when its answer is unusable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tenant_runtime.recommendations.gate import Scores
from tenant_runtime.recommendations.schemas import DIMENSION_LABELS, DIMENSIONS

AGREEMENT_SPREAD = 2  # scores at most this far apart agree


@dataclass(frozen=True)
class Consensus:
    agreements: tuple[str, ...]
    disagreements: tuple[str, ...]


def compare(votes: Mapping[str, Scores]) -> Consensus:
    if len(votes) < 2:
        return Consensus((), ())
    agreements, disagreements = [], []
    for dimension in DIMENSIONS:
        label = DIMENSION_LABELS[dimension]
        scores = {model: getattr(s, dimension) for model, s in sorted(votes.items())}
        low_model = min(scores, key=lambda m: scores[m])
        high_model = max(scores, key=lambda m: scores[m])
        low, high = scores[low_model], scores[high_model]
        if high - low <= AGREEMENT_SPREAD:
            where = f"at {low}" if low == high else f"between {low} and {high}"
            agreements.append(f"All {len(scores)} valid votes put {label} {where}.")
        else:
            disagreements.append(f"{label.capitalize()} ranges from {low} ({low_model}) to "
                                 f"{high} ({high_model}).")
    return Consensus(tuple(agreements), tuple(disagreements))

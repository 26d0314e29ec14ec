"""The promotion gate: a new model version goes to production only when it is better."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from llm_lora.config import AUTO_PROMOTION_METRICS


_ROUNDING = 1e-9


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict and the numbers behind it.

    Attributes:
        promote: Whether the candidate goes to production.
        stage: The stage the candidate gets: "production", "staging" or None.
        reason: One sentence with the numbers, for logs and metadata.
        metric: The metric compared.
        candidate: The candidate's score.
        base: The base model's (or the best baseline's) score on the same rows.
        production: The production version's score on the same rows, if any.
        baseline: The best baseline's name when the gate compared with it, not the base model.
    """

    promote: bool
    stage: str | None
    reason: str
    metric: str
    candidate: float
    base: float
    production: float | None
    baseline: str | None = None

    def as_metadata(self) -> dict:
        """A flat dict for ZenML metadata (None left out)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def decide_promotion(
    metric: str,
    candidate: float,
    base: float,
    production: float | None,
    min_gain_over_base: float,
    min_gain_over_production: float,
    staging: bool = True,
    force: bool = False,
    baseline: str | None = None,
    unmeasured: str | None = None,
) -> PromotionDecision:
    """Decide which stage a new model version gets.

    The candidate must beat the base model (or, with `baseline`, the best
    baseline) by at least `min_gain_over_base`;
    to replace production it must also beat the production version by more
    than `min_gain_over_production` (a tie never replaces production: the
    version already serving wins). A candidate that beats the base model but
    not production goes to staging when `staging` is on.

    Args:
        metric: Name of the compared metric (higher is better).
        candidate: The new version's score.
        base: The base model's score on the same rows (or the best baseline's, see `baseline`).
        production: The production version's score on the same rows, or None.
        min_gain_over_base: Required margin over the base model (or the best baseline).
        min_gain_over_production: Required margin over production.
        staging: Put base-beating versions that do not beat production into staging.
        force: Put the candidate into production whatever the numbers (recorded as such).
        baseline: When the gate compares with the best baseline instead of the base
            model (promotion.must_beat), its name ("base model, 3-shot").
        unmeasured: Why the scores measure nothing (answers cut short by the generation cap,
            see `answer_length.cut_short_problem`): then the decision is inconclusive, no stage.

    Returns:
        The decision with a reason that quotes the numbers.
    """
    numbers = dict(metric=metric, candidate=candidate, base=base, production=production, baseline=baseline)
    gain_base = candidate - base
    against = f"the base model ({base:.4f})" if baseline is None else f"the best baseline ({baseline}: {base:.4f})"
    if force:
        reference = f"base {base:.4f}" if baseline is None else f"best baseline {base:.4f}"
        reason = f"forced into production (--force-promote): {metric} {candidate:.4f}, {reference}" + (
            f", production {production:.4f}" if production is not None else ""
        )
        return PromotionDecision(True, "production", reason, **numbers)
    if unmeasured:
        return PromotionDecision(False, None, f"inconclusive: {unmeasured}", **numbers)
    if not math.isfinite(candidate) or not math.isfinite(base):
        reason = f"{metric} is not a number (candidate {candidate}, {against}): nothing to compare, nothing promoted"
        return PromotionDecision(False, None, reason, **numbers)
    # Scores are shares of rows: a gain equal to the margin but for float rounding (0.30 - 0.25) meets it.
    if gain_base < min_gain_over_base - _ROUNDING:
        reason = (
            f"{metric} {candidate:.4f} is {gain_base:+.4f} over {against}; "
            f"the gate needs at least {min_gain_over_base:+.4f}"
        )
        return PromotionDecision(False, None, reason, **numbers)
    if production is None:
        reason = (
            f"{metric} {candidate:.4f} beats {against} by {gain_base:+.4f} "
            "and there is no production version yet"
        )
        return PromotionDecision(True, "production", reason, **numbers)
    gain_production = candidate - production
    if not math.isfinite(production) or gain_production <= min_gain_over_production + _ROUNDING:
        reason = (
            f"{metric} {candidate:.4f} is {gain_production:+.4f} against production ({production:.4f}); "
            f"the gate needs more than {min_gain_over_production:+.4f}"
        )
        return PromotionDecision(False, "staging" if staging else None, reason, **numbers)
    reason = (
        f"{metric} {candidate:.4f} beats production ({production:.4f}) by {gain_production:+.4f} "
        f"and {against} by {gain_base:+.4f}"
    )
    return PromotionDecision(True, "production", reason, **numbers)


def resolve_metric(metric: str, metrics: dict) -> str:
    """The metric the gate compares: the configured one, or for "auto" the task's natural one.

    Raises:
        ValueError: "auto" with none of the known primary metrics computed.
    """
    if metric != "auto":
        return metric
    for name in AUTO_PROMOTION_METRICS:
        if name in metrics:
            return name
    raise ValueError(f"promotion.metric: auto found no known metric among {sorted(metrics)}; name one")

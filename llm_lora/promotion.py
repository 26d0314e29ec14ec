"""The promotion gate: a new model version goes to production only when it is better."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict and the numbers behind it.

    Attributes:
        promote: Whether the candidate goes to the target stage.
        reason: One sentence with the numbers, for logs and metadata.
        metric: The metric compared.
        candidate: The candidate's score.
        base: The base model's score on the same rows.
        production: The production version's score on the same rows, if any.
    """

    promote: bool
    reason: str
    metric: str
    candidate: float
    base: float
    production: float | None

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
) -> PromotionDecision:
    """Decide whether a candidate replaces production.

    The candidate must beat the base model by at least `min_gain_over_base`
    and, when a production version exists, beat it by more than
    `min_gain_over_production` (a tie never replaces production: the version
    that is already serving wins).

    Args:
        metric: Name of the compared metric (higher is better).
        candidate: The new version's score.
        base: The base model's score on the same rows.
        production: The production version's score on the same rows, or None.
        min_gain_over_base: Required margin over the base model.
        min_gain_over_production: Required margin over production.

    Returns:
        The decision with a reason that quotes the numbers.
    """
    numbers = dict(metric=metric, candidate=candidate, base=base, production=production)
    gain_base = candidate - base
    if gain_base < min_gain_over_base:
        reason = (
            f"{metric} {candidate:.4f} is {gain_base:+.4f} over the base model ({base:.4f}); "
            f"the gate needs at least {min_gain_over_base:+.4f}"
        )
        return PromotionDecision(False, reason, **numbers)
    if production is None:
        reason = (
            f"{metric} {candidate:.4f} beats the base model ({base:.4f}) by {gain_base:+.4f} "
            "and there is no production version yet"
        )
        return PromotionDecision(True, reason, **numbers)
    gain_production = candidate - production
    if gain_production <= min_gain_over_production:
        reason = (
            f"{metric} {candidate:.4f} is {gain_production:+.4f} against production ({production:.4f}); "
            f"the gate needs more than {min_gain_over_production:+.4f}"
        )
        return PromotionDecision(False, reason, **numbers)
    reason = (
        f"{metric} {candidate:.4f} beats production ({production:.4f}) by {gain_production:+.4f} "
        f"and the base model ({base:.4f}) by {gain_base:+.4f}"
    )
    return PromotionDecision(True, reason, **numbers)


def resolve_metric(metric: str, metrics: dict) -> str:
    """The metric the gate compares: the configured one, or for "auto" the task's natural one."""
    if metric != "auto":
        return metric
    return "mean_field_accuracy" if "mean_field_accuracy" in metrics else "exact_match"

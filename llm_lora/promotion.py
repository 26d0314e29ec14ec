"""The promotion gate: a new model version goes to production only when it is better.

`decide_promotion` is the rule on numbers; `run_gate` applies it against a model registry (any store that
implements `Registry`: production's score, the stage change, a lock so that two runs never promote at once).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict

from llm_lora.answer_length import cut_short_problem
from llm_lora.config import ConfigPart, PromotionConfig, RunConfig
from llm_lora.metric_registry import auto_promotion_metric
from llm_lora.worth_it import WorthItReport

logger = logging.getLogger(__name__)


_ROUNDING = 1e-9


class PromotionDecision(BaseModel):
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

    model_config = ConfigDict(frozen=True, extra="forbid")

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
        return self.model_dump(exclude_none=True)


class PromotionRecord(PromotionDecision):
    """What the gate decided for a model version: the decision, where production's score came from, the new stage.

    A pydantic model so that ZenML stores it as JSON, readable in the dashboard; `as_metadata` is the
    "promotion" entry of the model version.

    Attributes:
        production_source: Where production's score came from (stored or re-evaluated), or "no production version".
        new_stage: The stage the candidate got, "none" for none.
    """

    production_source: str
    new_stage: str


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
    def decision(promote: bool, stage: str | None, reason: str) -> PromotionDecision:
        return PromotionDecision(promote=promote, stage=stage, reason=reason, metric=metric, candidate=candidate,
                                 base=base, production=production, baseline=baseline)

    gain_base = candidate - base
    against = f"the base model ({base:.4f})" if baseline is None else f"the best baseline ({baseline}: {base:.4f})"
    if force:
        reference = f"base {base:.4f}" if baseline is None else f"best baseline {base:.4f}"
        reason = f"forced into production (--force-promote): {metric} {candidate:.4f}, {reference}" + (
            f", production {production:.4f}" if production is not None else ""
        )
        return decision(True, "production", reason)
    if unmeasured:
        return decision(False, None, f"inconclusive: {unmeasured}")
    if not math.isfinite(candidate) or not math.isfinite(base):
        reason = f"{metric} is not a number (candidate {candidate}, {against}): nothing to compare, nothing promoted"
        return decision(False, None, reason)
    # Scores are shares of rows: a gain equal to the margin but for float rounding (0.30 - 0.25) meets it.
    if gain_base < min_gain_over_base - _ROUNDING:
        reason = (
            f"{metric} {candidate:.4f} is {gain_base:+.4f} over {against}; "
            f"the gate needs at least {min_gain_over_base:+.4f}"
        )
        return decision(False, None, reason)
    if production is None:
        reason = (
            f"{metric} {candidate:.4f} beats {against} by {gain_base:+.4f} "
            "and there is no production version yet"
        )
        return decision(True, "production", reason)
    gain_production = candidate - production
    if not math.isfinite(production) or gain_production <= min_gain_over_production + _ROUNDING:
        reason = (
            f"{metric} {candidate:.4f} is {gain_production:+.4f} against production ({production:.4f}); "
            f"the gate needs more than {min_gain_over_production:+.4f}"
        )
        return decision(False, "staging" if staging else None, reason)
    reason = (
        f"{metric} {candidate:.4f} beats production ({production:.4f}) by {gain_production:+.4f} "
        f"and {against} by {gain_base:+.4f}"
    )
    return decision(True, "production", reason)


def resolve_metric(metric: str, metrics: dict) -> str:
    """The metric the gate compares: the configured one, or for "auto" the task's natural one.

    Raises:
        ValueError: "auto" with none of the known primary metrics computed.
    """
    if metric != "auto":
        return metric
    found = auto_promotion_metric(metrics)
    if found is not None:
        return found
    raise ValueError(f"promotion.metric: auto found no known metric among {sorted(metrics)}; name one")


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version as the gate sees it.

    Attributes:
        id: The registry's own identifier.
        number: Its version number, for messages.
        metrics: Its recorded evaluation (with `evaluation_fingerprint`), if any.
        config_json: The run config recorded with it (how it formats prompts), if any.
    """

    id: Any
    number: int | str
    metrics: dict | None = None
    config_json: str | None = None


@dataclass(frozen=True)
class LockEntry:
    """Who holds the promotion lock of a model, and since when (timezone-aware)."""

    token: Any
    created: datetime
    holder: str


class Registry(Protocol):
    """The model registry, as far as promotion needs it: one implementation per store (ZenML in `steps/`)."""

    def production(self) -> RegisteredVersion | None:
        """The version in the production stage, if any."""

    def set_stage(self, version: RegisteredVersion, stage: str) -> None:
        """Put the version into the stage, moving the current holder of that stage out of it."""

    def try_lock(self, holder: str) -> Any | None:
        """Take the promotion lock atomically (across processes and machines); None when it is held."""

    def lock_entry(self) -> LockEntry | None:
        """The lock as held now, or None when it is free."""

    def unlock(self, token: Any) -> None:
        """Release (or break) the lock taken with `token`; a lock already gone is no error."""


@contextmanager
def promotion_lock(registry: Registry, holder: str, timeout_s: float = 1800, stale_after_s: float = 3600,
                   poll_s: float = 0.5):
    """Only one run at a time compares with production and changes stages.

    A lock older than `stale_after_s` (its holder died) is broken.

    Args:
        registry: Where the lock lives.
        holder: Who takes the lock (shown to those waiting).
        timeout_s: Give up waiting after this long.
        stale_after_s: Age after which a held lock is considered abandoned.
        poll_s: Least wait between tries (a random share of it more, so waiting runs do not retry in step).

    Raises:
        TimeoutError: Another run held the lock for longer than `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        token = registry.try_lock(holder)
        if token is not None:
            break
        held = registry.lock_entry()
        if held is None:
            continue  # released meanwhile
        age = (datetime.now(timezone.utc) - held.created).total_seconds()
        if age > stale_after_s:
            logger.warning("Breaking a promotion lock held for %.0f s: %s", age, held.holder)
            registry.unlock(held.token)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"promotion: the model is locked by another run ({held.holder})")
        time.sleep(poll_s * (1 + random.random()))
    try:
        yield
    finally:
        registry.unlock(token)


def production_score(
    registry: Registry, candidate: RegisteredVersion, metric: str, fingerprint: str,
    reevaluate: Callable[[RegisteredVersion], dict],
) -> tuple[float | None, str, dict | None]:
    """The production version's score on this run's test rows, where it came from, and its metrics.

    Args:
        registry: The model registry.
        candidate: This run's version (never compared with itself).
        metric: The compared metric.
        fingerprint: This run's evaluation fingerprint (rows, model, prompt, generation settings).
        reevaluate: Called with the production version when its stored score is not comparable;
            returns its metrics on this run's rows.
    """
    production = registry.production()
    if production is None or production.id == candidate.id:
        return None, "no production version", None
    stored = production.metrics
    if isinstance(stored, dict) and stored.get("evaluation_fingerprint") == fingerprint and metric in stored:
        # Same rows, base model, prompt and greedy settings: re-running would give these numbers.
        return float(stored[metric]), f"version {production.number}, stored score on identical test rows", stored
    logger.info("Re-evaluating production version %s on this run's test rows", production.number)
    metrics = reevaluate(production)
    return float(metrics[metric]), f"version {production.number}, re-evaluated on this run's test rows", metrics


def run_gate(
    registry: Registry,
    candidate: RegisteredVersion,
    metric: str,
    score: float,
    base: float,
    fingerprint: str,
    reevaluate: Callable[[RegisteredVersion], dict],
    promotion: PromotionConfig,
    force: bool = False,
    baseline: str | None = None,
    unmeasured: str | None = None,
    max_cut_short: float = 0.02,
    lock_timeout_s: float = 1800,
) -> PromotionRecord:
    """Under the promotion lock: compare with the current production version, decide, set the stage.

    Args:
        registry: The model registry.
        candidate: This run's version.
        metric: The compared metric.
        score: The candidate's score.
        base: The base model's score, or with `baseline` (its name) the best baseline's.
        fingerprint: This run's evaluation fingerprint: production's stored score counts only when it matches.
        reevaluate: Scores production on this run's rows when its stored score does not count.
        promotion: The gate's margins and staging.
        force: Put the candidate into production whatever the numbers.
        baseline: The best baseline's name when `base` is its score.
        unmeasured: Why this run's scores measure nothing (answers cut short): nothing is promoted.
        max_cut_short: Production re-scored on these rows is held to this share of cut-short answers too.
        lock_timeout_s: Give up waiting for another run's promotion after this long.

    Returns:
        The decision, its numbers and reason, where production's score came from, and the new stage.
    """
    with promotion_lock(registry, holder=f"version {candidate.number}", timeout_s=lock_timeout_s):
        production, source, production_metrics = production_score(registry, candidate, metric, fingerprint,
                                                                   reevaluate)
        production_cut = cut_short_problem([("production", production_metrics)], max_cut_short) \
            if production_metrics else None
        decision = decide_promotion(
            metric,
            candidate=score,
            base=base,
            production=production,
            min_gain_over_base=promotion.min_gain_over_base,
            min_gain_over_production=promotion.min_gain_over_production,
            staging=promotion.staging,
            force=force,
            baseline=baseline,
            unmeasured=unmeasured or production_cut,
        )
        if decision.stage is not None:
            registry.set_stage(candidate, decision.stage)
    return PromotionRecord(**decision.model_dump(), production_source=source, new_stage=decision.stage or "none")


def rescore(own: RunConfig, adapter_dir: Path, current: RunConfig | ConfigPart, rows: list[dict],
            prepared_data: Path) -> dict:
    """Another version's metrics on this run's test rows, the way it serves.

    Its own base model, system prompt and template (recorded with it), this run's rows and generation
    settings, the answer cap counted in its own tokens.

    Args:
        own: The run config recorded with the version (its model and data sections count).
        adapter_dir: Its LoRA adapter.
        current: This run's config (model, data, evaluation).
        rows: This run's prepared test rows.
        prepared_data: This run's prepare_data folder (for the answer cap).
    """
    from llm_lora.evaluation import evaluate_model, prepared_cap
    from llm_lora.model_loading import default_device, load_model, load_tokenizer
    from llm_lora.training import load_adapter

    base = load_model(own.model, device=default_device())
    tokenizer = load_tokenizer(own.model)
    cap = prepared_cap(current.evaluation.max_new_tokens, tokenizer, prepared_data)
    result = evaluate_model(
        load_adapter(base, adapter_dir, merge=True), tokenizer, rows,
        own.data.system_prompt, current.evaluation, cap.tokens, plain_template=own.data.plain_template,
        # The rows' prompt_text is this run's formatting: another base model or prompt formats anew.
        reformat=(own.model, own.data.system_prompt, own.data.plain_template)
        != (current.model, current.data.system_prompt, current.data.plain_template),
    )
    return result.metrics


@dataclass(frozen=True)
class GateScores:
    """What the gate compares: the metric, the candidate's score, and the score it must beat (and whose)."""

    metric: str
    candidate: float
    base: float
    baseline: str | None = None


def gate_scores(
    promotion: PromotionConfig, base_metrics: dict, finetuned_metrics: dict, worth_it: WorthItReport
) -> GateScores:
    """The candidate's score and the one it must beat: the base model's, or the best baseline's (must_beat).

    Raises:
        ValueError: promotion.metric is not among the evaluation's metrics.
    """
    metric = resolve_metric(promotion.metric, finetuned_metrics)
    for name, metrics in (("base", base_metrics), ("finetuned", finetuned_metrics)):
        if metric not in metrics:
            raise ValueError(f"promotion.metric: {metric!r} not among the {name} metrics {sorted(metrics)}")
    candidate = float(finetuned_metrics[metric])
    if promotion.must_beat == "best_baseline":
        best = worth_it.best_row()
        return GateScores(metric, candidate, best.primary_metric, best.label)
    return GateScores(metric, candidate, float(base_metrics[metric]))

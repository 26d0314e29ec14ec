"""Was finetuning worth it? The finetuned model against its cheaper alternatives, with costs and a verdict.

The alternatives are the baselines (the base model zero-shot, the base model with
a few-shot prompt, optionally a larger reference model), all scored on the same
test rows. The report states the quality gain over the best of them with a
confidence interval, what finetuning saves per request (prompt tokens, latency),
what training cost, after how many requests the saved prompt tokens pay for
it, and a verdict: worth it, not worth it, or inconclusive, with the reason.

The interval is a paired bootstrap over per-example scores: test rows are
resampled with replacement, each row keeping both models' scores, the mean
difference is recomputed for every resample, and the interval is the middle
`confidence` share of those means (percentile method, fixed seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from llm_lora.answer_length import cut_short_problem
from llm_lora.comparison import counts_for, example_score, score_meaning
from llm_lora.html_pages import bar, escape, number, page, table
from llm_lora.metric_registry import is_quality, ordered_scores

# Below this many test rows the verdict is inconclusive whatever the interval says: a
# bootstrap only sees the variation the sample happens to contain.
MIN_ROWS = 10


@dataclass(frozen=True)
class Interval:
    """A mean difference and its confidence interval."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Evaluated:
    """One model's evaluation on the test rows.

    Attributes:
        name: "base", "few_shot", "reference" or "finetuned".
        label: How reports name it ("base model, 3-shot").
        metrics: The evaluation's aggregate metrics.
        records: Its per-example records (see EvaluationResult.examples).
    """

    name: str
    label: str
    metrics: dict
    records: list[dict]


def paired_bootstrap(
    candidate: Sequence[float], baseline: Sequence[float], samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Confidence interval of the mean per-example difference candidate − baseline.

    Both models answered the same rows, so rows are resampled as pairs: the
    interval reflects how much the mean difference depends on which rows
    happened to be in the test set.

    Args:
        candidate: Per-example scores of the candidate.
        baseline: Per-example scores of the baseline on the same rows, same order.
        samples: Bootstrap resamples.
        confidence: Share of resampled means inside the interval (0.95: 2.5th to 97.5th percentile).
        seed: Seed of the resampling, so the same scores always give the same interval.

    Returns:
        The observed mean difference and the interval's ends.

    Raises:
        ValueError: No rows, or the two lists differ in length.
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"paired scores differ in length: {len(candidate)} vs {len(baseline)}")
    if not candidate:
        raise ValueError("no per-example scores to compare")
    differences = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(differences), size=(samples, len(differences)))
    means = differences[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    # Rounded so that identical differences give an interval of width exactly zero.
    return Interval(mean=round(float(differences.mean()), 6), low=round(float(low), 6), high=round(float(high), 6))


def training_cost(training_metrics: dict, price_per_gpu_hour: float | None) -> float | None:
    """What training cost: runtime × processes (one GPU each) × price per GPU hour; None without a price."""
    if price_per_gpu_hour is None:
        return None
    hours = training_metrics["train_runtime_s"] / 3600
    return hours * training_metrics.get("num_processes", 1) * price_per_gpu_hour


def payback_requests(
    training_cost: float, prompt_tokens_saved: float, price_per_million_prompt_tokens: float
) -> int | None:
    """How many requests it takes for the prompt tokens saved to pay for training.

    Args:
        training_cost: What training cost.
        prompt_tokens_saved: Prompt tokens saved per request (baseline's minus finetuned's).
        price_per_million_prompt_tokens: Serving price of a million prompt tokens.

    Returns:
        The number of requests (rounded up); 0 when training cost nothing and no
        request costs more. None when the finetuned prompt is longer, or when
        training cost something and nothing is saved per request (no savings, or a
        price of zero): it never pays back.
    """
    if prompt_tokens_saved < 0:
        return None
    if training_cost <= 0:
        return 0
    saving = prompt_tokens_saved * price_per_million_prompt_tokens
    if saving <= 0:
        return None
    # Rounded before the ceiling so that an exact quotient (1000.0000000001) is not a request more.
    return math.ceil(round(training_cost * 1_000_000 / saving, 6))


def valid_output_rate(metrics: dict, records: list[dict]) -> float:
    """Share of answers of the expected form: valid JSON, an in-set label, or else any non-empty answer."""
    if "valid_json_rate" in metrics:
        return float(metrics["valid_json_rate"])
    if "classification_out_of_set_rate" in metrics:
        return 1.0 - float(metrics["classification_out_of_set_rate"])
    return sum(bool(str(record.get("output", "")).strip()) for record in records) / max(len(records), 1)


def quality_metrics(metrics: dict, primary: str) -> dict[str, float]:
    """The primary metric first, then the other quality scores (headline, then per field).

    The form of the answers (valid JSON, labels from the set) is the report's valid output rate instead.
    """
    names = [primary] + [name for name in ordered_scores(metrics) if is_quality(name) and name != primary]
    return {name: float(metrics[name]) for name in names if name in metrics}


class ModelSummary(BaseModel):
    """One model's row of the report.

    Attributes:
        name: "base", "few_shot", "reference" or "finetuned".
        label: How reports name it ("base model, 3-shot").
        primary_metric: Its score on the report's metric.
        quality: The primary metric first, then the other quality scores (see `quality_metrics`).
        valid_output_rate: Share of answers of the expected form (see `valid_output_rate`).
        prompt_tokens: Mean prompt tokens per request (None: a recorded baseline without usage).
        generated_tokens: Mean generated tokens per request (None: not recorded).
        latency_s: Mean latency per example (None: not recorded).
        hit_cap: Answers stopped by the generation cap.
        cut_short: Of those, answers stopped before the expected answer could fit.
        max_new_tokens: The generation cap (0: not recorded).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str
    primary_metric: float
    quality: dict[str, float]
    valid_output_rate: float
    prompt_tokens: float | None
    generated_tokens: float | None
    latency_s: float | None
    hit_cap: int
    cut_short: int
    max_new_tokens: int


Verdict = Literal["worth it", "not worth it", "inconclusive"]


class RecordedComparison(BaseModel):
    """The finetuned model against one recorded baseline (another model's recorded answers).

    Attributes:
        name: The recorded baseline's name.
        rows: Test rows behind the comparison (those the metric scores).
        gain: Mean per-example gain of the finetuned model over it.
        gain_low: Low end of the confidence interval.
        gain_high: High end.
        outcome: "beats it" (the interval above zero and the gain at least min_gain), "matches it" (the
            interval's low end no lower than -min_gain), "worse" (the interval below zero) or "inconclusive".
        cost_per_million_requests: What its answers cost per million requests at its prices (None: unpriced).
        finetuned_cost_per_million_requests: The finetuned model's serving cost per million requests at cost's
            prices (None: cost.price_per_million_prompt_tokens unset).
        saving_per_million_requests: The difference (None: either unknown).
        sentence: One line saying all of it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    rows: int
    gain: float
    gain_low: float
    gain_high: float
    outcome: Literal["beats it", "matches it", "worse", "inconclusive"]
    cost_per_million_requests: float | None
    finetuned_cost_per_million_requests: float | None
    saving_per_million_requests: float | None
    sentence: str


def request_cost(prompt_tokens: float | None, generated_tokens: float | None, prompt_price: float | None,
                 completion_price: float | None) -> float | None:
    """What one request costs at per-million-token prices; None without the prompt price or the token counts.

    An unset completion price counts generated tokens as free.
    """
    if prompt_price is None or prompt_tokens is None:
        return None
    return (prompt_tokens * prompt_price + (generated_tokens or 0.0) * (completion_price or 0.0)) / 1e6


def compare_recorded(
    name: str, finetuned: Evaluated, recorded: Evaluated, tuned_row: ModelSummary, recorded_row: ModelSummary,
    metric: str, prices: tuple[float | None, float | None], own_prices: tuple[float | None, float | None],
    *, min_gain: float, confidence: float, samples: int, seed: int,
) -> RecordedComparison:
    """Whether the finetuned model matches a recorded baseline, with the interval, and what serving it saves."""
    candidate, baseline = paired_scores(finetuned.records, recorded.records, metric)
    gain = paired_bootstrap(candidate, baseline, samples, confidence, seed)
    ci = f"{confidence:.0%} CI {gain.low:+.3f} to {gain.high:+.3f}, {len(candidate)} rows"
    if gain.low > 0 and gain.mean >= min_gain:
        outcome = "beats it"
    elif gain.low >= -min_gain:
        outcome = "matches it"
    elif gain.high < 0:
        outcome = "worse"
    else:
        outcome = "inconclusive"
    theirs = request_cost(recorded_row.prompt_tokens, recorded_row.generated_tokens, *prices)
    ours = request_cost(tuned_row.prompt_tokens, tuned_row.generated_tokens, *own_prices)
    saving = None if theirs is None or ours is None else (theirs - ours) * 1e6
    said = {"beats it": "beats it", "matches it": f"matches it (no worse than -{min_gain:g})",
            "worse": "is worse", "inconclusive": "cannot be told from it"}[outcome]
    if theirs is None:
        money = ("; its cost is unknown (set its price_per_million_prompt_tokens and record usage)"
                 if prices[0] is None or recorded_row.prompt_tokens is None else "")
    elif ours is None:
        money = (f"; it costs {theirs * 1e6:.4g} per million requests (set cost.price_per_million_prompt_tokens"
                 " to price the finetuned model)")
    else:
        money = (f"; {theirs * 1e6:.4g} vs {ours * 1e6:.4g} per million requests: saves {saving:.4g} per million"
                 " requests" if saving >= 0 else
                 f"; {theirs * 1e6:.4g} vs {ours * 1e6:.4g} per million requests: costs {-saving:.4g} more")
    sentence = f"vs {name}: finetuned {said}: {gain.mean:+.3f} on {metric} ({ci}){money}"
    return RecordedComparison(
        name=name, rows=len(candidate), gain=gain.mean, gain_low=gain.low, gain_high=gain.high, outcome=outcome,
        cost_per_million_requests=None if theirs is None else round(theirs * 1e6, 6),
        finetuned_cost_per_million_requests=None if ours is None else round(ours * 1e6, 6),
        saving_per_million_requests=None if saving is None else round(saving, 6),
        sentence=sentence,
    )


class WorthItReport(BaseModel):
    """The whole "worth it" report: every model on the same rows, the gain, the costs and the verdict.

    A pydantic model so that ZenML stores it as JSON, readable in the dashboard.

    Attributes:
        metric: The primary metric (the promotion metric).
        models: One row per model: the baselines in order, the finetuned model last.
        best_baseline: The best baseline's name ("few_shot").
        best_baseline_label: Its label ("base model, 3-shot").
        test_rows: Test rows behind the comparison.
        score: What the per-example score measures, in words (None without records).
        gain: Mean per-example gain of the finetuned model over the best baseline.
        gain_low: Low end of its confidence interval.
        gain_high: High end of its confidence interval.
        confidence: The interval's level.
        interval_method: How the interval was computed, in words.
        min_gain: Smallest gain that counts as better quality.
        prompt_tokens_saved: Per request, against the best baseline.
        latency_saved_s: Per request, against the best baseline.
        training_runtime_s: Training wall time.
        training_device: Where training ran.
        training_processes: Training processes (one GPU each).
        training_cost: What training cost; None without a price per GPU hour.
        saving_per_request: What the saved prompt tokens are worth per request; None without their price.
        payback_requests: Requests until the savings pay for training; None: never or unknown.
        payback: The same in words ("after 800 requests", "unknown: set ...").
        expected_requests: Requests the model is expected to serve, if known.
        verdict: "worth it", "not worth it" or "inconclusive".
        reason: One sentence with the numbers behind the verdict.
        unmeasured: Why no score here decides anything (answers cut short by the cap), else None.
        recorded: The finetuned model against each recorded baseline (other models' recorded answers).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    models: list[ModelSummary]
    best_baseline: str
    best_baseline_label: str
    test_rows: int
    score: str | None
    gain: float
    gain_low: float
    gain_high: float
    confidence: float
    interval_method: str
    min_gain: float
    prompt_tokens_saved: float
    latency_saved_s: float
    training_runtime_s: float
    training_device: str
    training_processes: int
    training_cost: float | None
    saving_per_request: float | None
    payback_requests: int | None
    payback: str
    expected_requests: int | None
    verdict: Verdict
    reason: str
    unmeasured: str | None
    recorded: list[RecordedComparison] = []

    def best_row(self) -> ModelSummary:
        """The best baseline's row."""
        return next(model for model in self.models if model.name == self.best_baseline)

    def as_metadata(self) -> dict:
        """The report without its per-model rows and without None values, for model-version metadata."""
        flat = self.model_dump(mode="json", exclude={"models", "recorded"}, exclude_none=True)
        for comparison in self.recorded:
            flat[f"recorded/{comparison.name}"] = comparison.model_dump(mode="json", exclude_none=True)
        return flat


def _optional(metrics: dict, name: str) -> float | None:
    return float(metrics[name]) if name in metrics else None


def summarize_model(evaluated: Evaluated, primary: str) -> ModelSummary:
    """One model's row of the report: quality, valid outputs, tokens and latency per request."""
    metrics = evaluated.metrics
    return ModelSummary(
        name=evaluated.name,
        label=evaluated.label,
        primary_metric=float(metrics[primary]),
        quality=quality_metrics(metrics, primary),
        valid_output_rate=valid_output_rate(metrics, evaluated.records),
        prompt_tokens=_optional(metrics, "mean_prompt_tokens"),
        generated_tokens=_optional(metrics, "mean_new_tokens"),
        latency_s=_optional(metrics, "mean_latency_s"),
        # How answers ended: stopped by the cap at all, and cut before the expected answer could fit.
        hit_cap=round(float(metrics.get("hit_cap_rate", 0.0)) * len(evaluated.records)),
        cut_short=round(float(metrics.get("cut_short_rate", 0.0)) * len(evaluated.records)),
        max_new_tokens=int(metrics.get("max_new_tokens", 0)),
    )


def paired_scores(
    candidate: list[dict], baseline: list[dict], metric: str | None = None
) -> tuple[list[float], list[float]]:
    """Per-example scores of two evaluations of the same rows (on `metric` where it has per-row scores).

    A call score (tool_call_accuracy, ...) pairs only the rows that expect calls, so the mean gain is
    the gain in that metric.

    Raises:
        ValueError: The evaluations are not of the same rows in the same order.
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"evaluations of different rows: {len(candidate)} vs {len(baseline)} examples")
    for index, (a, b) in enumerate(zip(candidate, baseline)):
        if a["prompt"] != b["prompt"] or a["expected"] != b["expected"]:
            raise ValueError(f"evaluations of different rows: row {index} differs")
    pairs = [(a, b) for a, b in zip(candidate, baseline) if counts_for(a, metric)]
    return [example_score(a, metric) for a, _ in pairs], [example_score(b, metric) for _, b in pairs]


def judge(
    gain: Interval,
    rows: int,
    baseline: str,
    min_gain: float,
    confidence: float,
    prompt_tokens_saved: float,
    payback: int | None,
    priced: bool,
    expected_requests: int | None,
) -> tuple[str, str]:
    """The verdict and its reason.

    In order: too few rows → inconclusive. An interval inside ±min_gain → the same
    quality, so cost decides (fewer prompt tokens that pay back within the expected
    requests, or at once when training cost nothing → worth it; no tokens saved, or payback beyond them → not worth it;
    no prices or no expected requests → inconclusive). An interval below zero →
    not worth it. An interval above zero with a gain of at least min_gain → worth
    it. Anything else: the gain is within the noise → inconclusive.

    Args:
        gain: Mean per-example gain over the best baseline and its interval.
        rows: Test rows behind it.
        baseline: The best baseline's label.
        min_gain: Smallest gain that counts as better quality.
        confidence: The interval's level.
        prompt_tokens_saved: Per request, against the best baseline.
        payback: Requests until the saved prompt tokens pay for training (None: never or unknown).
        priced: Whether training and prompt tokens both have prices.
        expected_requests: Requests the model is expected to serve, if known.

    Returns:
        ("worth it" | "not worth it" | "inconclusive", one-sentence reason).
    """
    ci = f"{confidence:.0%} CI {gain.low:+.3f} to {gain.high:+.3f}"
    if rows < MIN_ROWS:
        return "inconclusive", (
            f"only {rows} test rows: too few to tell a gain from noise (at least {MIN_ROWS}; data.max_test_rows)"
        )
    if -min_gain <= gain.low and gain.high <= min_gain:
        same = f"same quality as the best baseline ({baseline}) within ±{min_gain:g} ({ci})"
        if prompt_tokens_saved <= 0:
            return "not worth it", f"{same}, and no prompt tokens saved per request"
        saved = f"{same}; it saves {prompt_tokens_saved:.0f} prompt tokens per request"
        if not priced:
            return "inconclusive", (
                f"{saved}: set preflight.price_per_gpu_hour and cost.price_per_million_prompt_tokens to price them"
            )
        if payback is None:
            return "not worth it", f"{saved}, which at the configured price never pays for training"
        if payback == 0:
            return "worth it", f"{saved}, and training cost nothing to pay back"
        if expected_requests is None:
            return "inconclusive", f"{saved} and pays back after {payback} requests: set cost.expected_requests to decide"
        if payback <= expected_requests:
            return "worth it", f"{saved} and pays back after {payback} of the {expected_requests} expected requests"
        return "not worth it", f"{saved} but pays back only after {payback} requests, more than the {expected_requests} expected"
    if gain.high < 0:
        return "not worth it", f"worse than the best baseline ({baseline}) by {gain.mean:+.3f} ({ci}) on {rows} test rows"
    if gain.low > 0 and gain.mean >= min_gain:
        return "worth it", f"beats the best baseline ({baseline}) by {gain.mean:+.3f} ({ci}) on {rows} test rows"
    return "inconclusive", (
        f"the gain over the best baseline ({baseline}), {gain.mean:+.3f}, is within the noise of {rows} test rows"
        f" ({ci}); more test rows (data.max_test_rows) narrow the interval"
    )


def assess(
    metric: str,
    baselines: list[Evaluated],
    finetuned: Evaluated,
    training_metrics: dict,
    *,
    price_per_gpu_hour: float | None = None,
    price_per_million_prompt_tokens: float | None = None,
    expected_requests: int | None = None,
    min_gain: float = 0.02,
    confidence: float = 0.95,
    bootstrap_samples: int = 2000,
    bootstrap_seed: int = 0,
    max_cut_short: float = 0.02,
    recorded: Sequence[Evaluated] = (),
    recorded_prices: dict[str, tuple[float | None, float | None]] | None = None,
    price_per_million_completion_tokens: float | None = None,
) -> WorthItReport:
    """The whole "worth it" report.

    Args:
        metric: The primary metric (the promotion metric); the best baseline is the one scoring highest on it.
        baselines: The evaluated baselines (the base model zero-shot first).
        finetuned: The finetuned model's evaluation on the same rows.
        training_metrics: train_lora's metrics (runtime, processes, device).
        price_per_gpu_hour: Training price; None: the cost in time only.
        price_per_million_prompt_tokens: Serving price of prompt tokens; None: no payback figure.
        expected_requests: Requests the model is expected to serve.
        min_gain: Smallest per-example gain that counts as better quality.
        confidence: Level of the interval.
        bootstrap_samples: Resamples of the paired bootstrap.
        bootstrap_seed: Its seed.
        max_cut_short: Share of a model's answers that may be cut short by the generation cap; above
            it the scores are unmeasured and the verdict is inconclusive, whatever they say.
        recorded: Other models' recorded answers on the same rows: in every table, each compared with the
            finetuned model (does it match it, what serving it saves); the verdict stays against the baselines.
        recorded_prices: Each recorded baseline's (prompt, completion) price per million tokens, by name.
        price_per_million_completion_tokens: The finetuned model's serving price of generated tokens.

    Returns:
        Per-model rows, the best baseline, gain and interval, savings, costs, payback, verdict and reason.
    """
    for evaluated in (*baselines, *recorded, finetuned):
        if metric not in evaluated.metrics:
            raise ValueError(f"promotion.metric: {metric!r} not among the {evaluated.name} metrics")
    models = [summarize_model(evaluated, metric) for evaluated in (*baselines, *recorded, finetuned)]
    # Highest score wins; on a tie the cheaper prompt, since that is what one would deploy.
    best_index = max(range(len(baselines)), key=lambda i: (models[i].primary_metric, -models[i].prompt_tokens))
    best, best_row, tuned_row = baselines[best_index], models[best_index], models[-1]
    candidate_scores, baseline_scores = paired_scores(finetuned.records, best.records, metric)
    gain = paired_bootstrap(candidate_scores, baseline_scores, bootstrap_samples, confidence, bootstrap_seed)
    comparisons = [
        compare_recorded(
            entry.label, finetuned, entry, tuned_row, models[len(baselines) + index], metric,
            (recorded_prices or {}).get(entry.name, (None, None)),
            (price_per_million_prompt_tokens, price_per_million_completion_tokens),
            min_gain=min_gain, confidence=confidence, samples=bootstrap_samples, seed=bootstrap_seed,
        )
        for index, entry in enumerate(recorded)
    ]
    tokens_saved = best_row.prompt_tokens - tuned_row.prompt_tokens
    cost = training_cost(training_metrics, price_per_gpu_hour)
    priced = cost is not None and price_per_million_prompt_tokens is not None
    payback = payback_requests(cost, tokens_saved, price_per_million_prompt_tokens) if priced else None
    if cost is None:
        payback_text = "unknown: set preflight.price_per_gpu_hour"
    elif price_per_million_prompt_tokens is None:
        payback_text = "unknown: set cost.price_per_million_prompt_tokens"
    elif payback is None:
        payback_text = ("never: the finetuned prompt is longer" if tokens_saved < 0 else
                        "never: no prompt tokens saved per request" if tokens_saved == 0 else
                        "never: prompt tokens are free")
    else:
        payback_text = f"after {payback} requests"
    verdict, reason = judge(
        gain, len(candidate_scores), best.label, min_gain, confidence, tokens_saved, payback, priced, expected_requests
    )
    unmeasured = cut_short_problem(((e.label, e.metrics) for e in (*baselines, finetuned)), max_cut_short)
    if unmeasured:
        verdict, reason = "inconclusive", unmeasured
    return WorthItReport(
        metric=metric,
        models=models,
        best_baseline=best.name,
        best_baseline_label=best.label,
        test_rows=len(candidate_scores),
        score=score_meaning(finetuned.records[0], metric) if finetuned.records else None,
        gain=gain.mean,
        gain_low=gain.low,
        gain_high=gain.high,
        confidence=confidence,
        interval_method=(
            f"paired bootstrap over per-example scores, {bootstrap_samples} resamples, seed {bootstrap_seed},"
            " percentile interval"
        ),
        min_gain=min_gain,
        prompt_tokens_saved=round(tokens_saved, 2),
        latency_saved_s=round(best_row.latency_s - tuned_row.latency_s, 4),
        training_runtime_s=float(training_metrics["train_runtime_s"]),
        training_device=str(training_metrics.get("device", "")),
        training_processes=int(training_metrics.get("num_processes", 1)),
        training_cost=None if cost is None else round(cost, 6),
        saving_per_request=(
            None if price_per_million_prompt_tokens is None else tokens_saved * price_per_million_prompt_tokens / 1e6
        ),
        payback_requests=payback,
        payback=payback_text,
        expected_requests=expected_requests,
        verdict=verdict,
        reason=reason,
        unmeasured=unmeasured,
        recorded=comparisons,
    )


def summary_lines(report: WorthItReport) -> list[str]:
    """The verdict and the savings, as the run summary prints them."""
    cost = f", cost {report.training_cost:.4g}" if report.training_cost is not None else ""
    return [
        f"verdict:  {report.verdict}: {report.reason}",
        *(f"recorded: {comparison.sentence}" for comparison in report.recorded),
        f"savings:  vs {report.best_baseline_label}: {report.prompt_tokens_saved:.0f} prompt tokens and"
        f" {report.latency_saved_s:.3f} s per request; training {report.training_runtime_s:.0f} s{cost};"
        f" payback {report.payback} (worth_it_report artifact)",
    ]


def _at_cap(model: ModelSummary) -> str:
    """One model's answers stopped by the cap, those cut short, and the cap: "12 (3 cut short), cap 68"."""
    cut = f" ({model.cut_short} cut short)" if model.cut_short else ""
    cap = f", cap {model.max_new_tokens}" if model.max_new_tokens else ""
    return escape(f"{model.hit_cap}{cut}{cap}")


def _recorded_html(report: WorthItReport) -> str:
    """The finetuned model against each recorded baseline: outcome, interval, cost per million requests."""
    if not report.recorded:
        return ""
    rows = [[c.name, c.outcome, f"{c.gain:+.3f}", f"{c.gain_low:+.3f} to {c.gain_high:+.3f}", c.rows,
             number(c.cost_per_million_requests, 2), number(c.finetuned_cost_per_million_requests, 2),
             number(c.saving_per_million_requests, 2)] for c in report.recorded]
    header = ["recorded baseline", "finetuned", f"gain ({report.metric})", f"{report.confidence:.0%} interval", "rows",
              "its cost / million requests", "finetuned cost / million requests", "saving / million requests"]
    return (f"<h3>Finetuned vs recorded answers</h3>{table(rows, header, element_id='recorded', css='figures')}"
            "<p>Matches it: the interval's low end is no lower than -min_gain. Costs are each model's tokens per"
            " request at its own prices (cost.price_per_million_*_tokens for the finetuned model).</p>")


def render_worth_it_html(report: WorthItReport) -> str:
    """A self-contained page for the dashboard: verdict, per-model table, gain, savings, costs, method.

    Args:
        report: Output of `assess`.

    Returns:
        The HTML page (no scripts; bars are plain spans).
    """
    models = report.models
    names = list(models[-1].quality)
    header = ["model", *names, "valid output rate", "prompt tokens / request", "generated tokens / request",
              "answers at the cap", "latency s / example"]
    rows = []
    for model in models:
        css = "finetuned" if model.name == "finetuned" else ("best" if model.name == report.best_baseline else "")
        primary = model.primary_metric
        quality = "".join(
            f"<td>{number(model.quality.get(name))}</td>" if name != report.metric else
            f"<td>{bar(primary * 80)}{number(primary)}</td>"
            for name in names
        )
        rows.append(
            f"<tr class='{css}'><td>{escape(model.label)}</td>{quality}"
            f"<td>{number(model.valid_output_rate)}</td><td>{number(model.prompt_tokens, 1)}</td>"
            f"<td>{number(model.generated_tokens, 1)}</td><td>{_at_cap(model)}</td>"
            f"<td>{number(model.latency_s)}</td></tr>"
        )
    css = {"worth it": "yes", "not worth it": "no"}.get(report.verdict, "unsure")
    cost = report.training_cost
    saving = report.saving_per_request
    processes = report.training_processes
    facts = [
        ("quality gain over the best baseline", f"{report.gain:+.3f} ({report.score})"),
        (f"{report.confidence:.0%} confidence interval", f"{report.gain_low:+.3f} to {report.gain_high:+.3f}"),
        ("test rows", report.test_rows),
        ("prompt tokens saved per request", f"{report.prompt_tokens_saved:.1f}"),
        ("latency saved per request", f"{report.latency_saved_s:.3f} s"),
        ("training time", f"{report.training_runtime_s:.0f} s on {report.training_device}"
                          f" ({processes} process{'es' if processes > 1 else ''})"),
        ("training cost", "– (set preflight.price_per_gpu_hour)" if cost is None else f"{cost:.4g}"),
        ("saving per request", "– (set cost.price_per_million_prompt_tokens)" if saving is None else f"{saving:.3g}"),
        ("pays back", report.payback),
    ]
    return page("Was finetuning worth it?", f"""<h2>Was finetuning worth it?</h2>
<div class="verdict {css}" id="verdict"><b>{escape(report.verdict.capitalize())}</b> &mdash;
{escape(report.reason)}</div>
<h3>Every model on the same {report.test_rows} test rows</h3>
{table(rows, header, element_id="models", css="figures")}
<h3>Finetuned vs the best baseline ({escape(report.best_baseline_label)})</h3>
{table(facts, element_id="facts", css="figures")}
{_recorded_html(report)}
<h3>How this is decided</h3>
<p>The interval: {escape(report.interval_method)}. Test rows are drawn with replacement, each keeping
both models' scores, and the mean difference is recomputed for every draw.</p>
<p>Worth it: the interval lies above zero and the gain is at least {report.min_gain:g}. Not worth it: the
interval lies below zero. Same quality (the interval within &plusmn;{report.min_gain:g}): the cost decides &mdash;
fewer prompt tokens that pay for training within the expected requests. Otherwise inconclusive: the gain is within
the noise of this many test rows. Latency is the batch's wall time per example on the evaluation machine.</p>
<p>Answers at the cap: answers stopped by evaluation.max_new_tokens instead of ending. An answer whose expected
answer would have fitted with room to spare ran on past any right answer and scores as wrong; one whose expected
answer needed that room was cut short and its score measures nothing. When more than
evaluation.max_cut_short of a model's answers were cut short, the verdict is inconclusive.</p>""")

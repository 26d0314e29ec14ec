"""Every number an evaluation reports, and what it says: score or fact, which way is better, which may promote.

An evaluation is one flat dict per model: the scores of the metric modules in `metrics/` and the
facts evaluation measures itself (sizes, latency, how the answers ended). The run report colours a
change by `better`, the worth-it report compares the `quality` scores, the config check and the
promotion gate accept only `promotable` ones and resolve `promotion.metric: auto` with
`auto_promotion_metric`. They all read the one table below, so they cannot disagree.

This module imports nothing of the project, so that `config` can read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

# json_fields also reports field_accuracy/<field> for each field of the expected answers.
FIELD_ACCURACY_PREFIX = "field_accuracy/"


@dataclass(frozen=True)
class Metric:
    """One key of an evaluation's metrics.

    Attributes:
        name: The key.
        better: "higher" or "lower": which way a change is an improvement. None for a number that is
            neither (a count, a setting, a fingerprint).
        kind: "quality" scores how right the answers are; "form" whether they have the expected shape
            (valid JSON, a label from the set); "fact" describes the evaluation itself (sizes, latency,
            how the answers ended) and is never compared as quality.
        modules: The metric modules (folders of `metrics/`) that report it; empty for evaluation's facts.
    """

    name: str
    better: Literal["higher", "lower"] | None
    kind: Literal["quality", "form", "fact"]
    modules: tuple[str, ...] = ()

    @property
    def promotable(self) -> bool:
        """Whether promotion.metric may name it: a higher-is-better score that a metric module reports.

        The gate promotes on a higher number, so a lower-is-better rate (answers outside the label
        set) or a fact (latency) would promote the wrong model.
        """
        return self.better == "higher" and self.kind != "fact" and bool(self.modules)


METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    Metric("mean_field_accuracy", "higher", "quality", ("json_fields",)),
    # On JSON answers exact match compares the parsed objects; on any other answers the stripped text.
    Metric("exact_match", "higher", "quality", ("json_fields", "exact_match")),
    Metric("valid_json_rate", "higher", "form", ("json_fields",)),
    Metric("rouge1", "higher", "quality", ("rouge",)),
    Metric("rouge2", "higher", "quality", ("rouge",)),
    Metric("rougeL", "higher", "quality", ("rouge",)),
    Metric("classification_accuracy", "higher", "quality", ("classification_accuracy",)),
    Metric("classification_macro_f1", "higher", "quality", ("classification_accuracy",)),
    # Answers that name no label of the set: a rise is a regression.
    Metric("classification_out_of_set_rate", "lower", "form", ("classification_accuracy",)),
    # Rows whose expected answer is a function call (OpenAI's tool_calls), scored by tool_calls.
    Metric("tool_call_accuracy", "higher", "quality", ("tool_calls",)),
    Metric("tool_name_accuracy", "higher", "quality", ("tool_calls",)),
    Metric("tool_argument_accuracy", "higher", "quality", ("tool_calls",)),
    Metric("tool_call_parse_rate", "higher", "form", ("tool_calls",)),
    # Every row of a set with calls: the exact calls for call rows, exact match for text rows.
    Metric("answer_accuracy", "higher", "quality", ("tool_calls",)),
    # Evaluation's own facts. Latency and answers stopped by the generation cap are costs: lower is better.
    Metric("num_examples", None, "fact"),
    Metric("mean_latency_s", "lower", "fact"),
    Metric("mean_new_tokens", None, "fact"),
    Metric("mean_prompt_tokens", None, "fact"),
    Metric("max_new_tokens", None, "fact"),
    Metric("hit_cap_rate", "lower", "fact"),
    Metric("cut_short_rate", "lower", "fact"),
    Metric("tool_call_rows", None, "fact"),
    Metric("evaluation_fingerprint", None, "fact"),
)}

# The metric modules, in the order evaluation.metrics lists them.
METRIC_MODULES = tuple(dict.fromkeys(module for metric in METRICS.values() for module in metric.modules))
# The scores each metric module reports that promotion.metric may name (field_accuracy/<field> aside).
SCORES_BY_METRIC = {
    module: tuple(name for name, metric in METRICS.items() if module in metric.modules and metric.promotable)
    for module in METRIC_MODULES
}
# What an evaluation reports beside its scores: never compared as quality, never a promotion metric.
GENERATION_FACTS = tuple(name for name, metric in METRICS.items() if metric.kind == "fact")
# promotion.metric: auto takes the first of these that the evaluation computed: call accuracy when
# answers are function calls, field accuracy for JSON answers, accuracy for labels, else exact match.
AUTO_PROMOTION_METRICS = ("tool_call_accuracy", "mean_field_accuracy", "classification_accuracy", "exact_match")


def describe(name: str) -> Metric:
    """The table's entry for a metrics key.

    A name the table does not know counts as a higher-is-better quality score that nothing may
    promote on: metric modules report scores, and tests/test_metric_modules.py keeps the table
    complete for the modules in `metrics/`.
    """
    if name in METRICS:
        return METRICS[name]
    if name.startswith(FIELD_ACCURACY_PREFIX):
        return Metric(name, "higher", "quality", ("json_fields",))
    return Metric(name, "higher", "quality")


def lower_is_better(name: str) -> bool:
    """Whether a fall in this metric is the improvement (latency, answers at the cap, out-of-set labels)."""
    return describe(name).better == "lower"


def is_quality(name: str) -> bool:
    """Whether this metric scores how right the answers are (not their form, cost or ending)."""
    return describe(name).kind == "quality"


def ordered_scores(metrics: Mapping[str, object]) -> list[str]:
    """The scores among an evaluation's metrics, in a stable order: headline scores, then per field.

    Headline scores keep the evaluation's own order; facts and non-numbers are left out.
    """
    names = [name for name, value in metrics.items()
             if isinstance(value, (int, float)) and describe(name).kind != "fact"]
    fields = [name for name in names if name.startswith(FIELD_ACCURACY_PREFIX)]
    return [name for name in names if name not in fields] + fields


def promotable_scores(modules: Iterable[str]) -> list[str]:
    """The scores promotion.metric may name when evaluation computes these metric modules (no duplicates)."""
    return list(dict.fromkeys(score for module in modules for score in SCORES_BY_METRIC[module]))


def is_promotable(name: str, modules: Iterable[str]) -> bool:
    """Whether promotion.metric may name this score when evaluation computes these metric modules."""
    modules = list(modules)
    if name.startswith(FIELD_ACCURACY_PREFIX):
        return "json_fields" in modules
    return name in promotable_scores(modules)


def auto_promotion_metric(names: Iterable[str]) -> str | None:
    """What promotion.metric: auto compares among these computed scores; None when none of them fits."""
    available = set(names)
    return next((name for name in AUTO_PROMOTION_METRICS if name in available), None)

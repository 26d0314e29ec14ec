"""Scoring of extracted JSON objects through the repo's own `evaluate` metric modules.

The metric modules live in `metrics/` and are loaded by path, so scoring never needs the
Hugging Face Hub. Per-example scoring imports the same module file's parsing and
comparison rules, so the aggregate and the per-example report cannot disagree.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent.parent / "metrics"


@lru_cache(maxsize=None)
def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load one of the repo's metric modules by folder name, once per process.

    Args:
        name: Folder under `metrics/`, e.g. "json_fields".

    Returns:
        The loaded metric, kept in memory so that computing it writes no cache files.

    Raises:
        FileNotFoundError: When `metrics/<name>/<name>.py` does not exist.
    """
    path = METRICS_DIR / name
    script = path / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"No metric module {name!r}: expected the file {script}")
    import evaluate  # here, not at the top: it imports datasets and pandas, which the command line's checks never need

    return evaluate.load(str(path), keep_in_memory=True)


@lru_cache(maxsize=None)
def _module_rules(name: str):
    """A metric module's file itself, imported directly: one copy of its scoring rules. Imported on first use:
    the file imports `evaluate` and `datasets`, as a metric module must, and importing this module must not."""
    script = METRICS_DIR / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"llm_lora_{name}_rules", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_tool_calls(text: str) -> list[dict] | None:
    """The function calls an answer makes ({"name", "arguments"} each), or None when it makes none that parse.

    The tool_calls module's own rule: `<tool_call>` blocks (the fallback rendering), a `[TOOL_CALLS]`
    list, or an answer that is wholly a JSON call (see metrics/tool_calls/README.md).
    """
    return _module_rules("tool_calls").parse_tool_calls(text)


def text_before_calls(text: str) -> str:
    """The prose an answer writes before its calls."""
    return _module_rules("tool_calls").text_before_calls(text)


def score_calls(prediction: str, expected: list[dict]) -> dict:
    """One answer's calls against the expected ones, as the tool_calls module scores each row.

    Returns:
        {"parses", "calls_match", "names_match", "arguments_right", "arguments_total"}.
    """
    return _module_rules("tool_calls").score_calls(prediction, expected)


@lru_cache(maxsize=None)
def _rouge_rules():
    # Loaded when first needed: its scorer (rouge_score, nltk) is only for runs that list rouge.
    return _module_rules("rouge")


def rouge_example(prediction: str, reference: str) -> dict[str, float]:
    """One answer's ROUGE F-measures, as the rouge module scores each row before averaging."""
    return _rouge_rules().score_pair(prediction, reference)


def same_label(prediction: str, reference: str) -> bool:
    """Whether an answer names the expected label, by classification_accuracy's own normalization."""
    return (rules := _module_rules("classification_accuracy")).normalize(prediction) == rules.normalize(reference)


def parse_json_object(text: str) -> dict | None:
    """Parse a model answer into a JSON object, or None when it is not one.

    The answer is stripped and, when it is wholly wrapped in a Markdown code fence
    (```json ... ``` or ``` ... ```), unwrapped. What remains must parse as JSON and be
    an object; prose around the object is not forgiven.

    Args:
        text: Raw model output.

    Returns:
        The parsed dict, or None.
    """
    return _module_rules("json_fields").parse_json_object(text)


def reference_fields(references: list[str]) -> list[str]:
    """The fields json_fields scores on these expected answers: every key of any of them, first seen first."""
    return (rules := _module_rules("json_fields")).reference_fields(rules.parse_references(references))


def score_example(prediction: str, reference: str, fields: list[str] | None = None) -> dict:
    """Score one answer, for per-example reports.

    Args:
        prediction: Raw model output.
        reference: The expected JSON object.
        fields: Fields to report. Defaults to the reference's keys; pass the fields of
            the whole evaluation set to line up with `compute_extraction_metrics`.

    Returns:
        {"valid_json": bool, "exact_match": bool, "fields": {field: bool}}.

    Raises:
        ValueError: When the reference is not a JSON object.
    """
    expected = parse_json_object(reference)
    if expected is None:
        raise ValueError(f"Reference is not a JSON object: {reference!r}")
    parsed = parse_json_object(prediction)
    rules = _module_rules("json_fields")
    return {
        "valid_json": parsed is not None,
        "exact_match": rules.object_matches(parsed, expected),
        "fields": {
            field: rules.field_matches(parsed, expected, field)
            for field in (list(expected) if fields is None else fields)
        },
    }


def compute_extraction_metrics(
    predictions: list[str], references: list[str], fields: list[str] | None = None
) -> dict[str, float]:
    """Aggregate extraction metrics through the `json_fields` metric module.

    Args:
        predictions: Raw model outputs.
        references: Expected JSON objects, one per prediction.
        fields: Fields to score. Defaults to the union of the references' keys.

    Returns:
        valid_json_rate, exact_match, field_accuracy/<field> for each field and
        mean_field_accuracy, all between 0.0 and 1.0.

    Raises:
        ValueError: When there is nothing to score, the lengths differ, or a reference
            is not a JSON object.
    """
    # Checked here too, so the message is ours rather than whatever evaluate's input
    # handling says about an empty batch.
    if len(predictions) == 0:
        raise ValueError("Cannot compute extraction metrics on zero examples.")
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    extra = {} if fields is None else {"fields": list(fields)}
    return load_metric("json_fields").compute(predictions=predictions, references=references, **extra)

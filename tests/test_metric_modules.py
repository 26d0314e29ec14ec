"""The rouge and classification_accuracy metric modules, and metric selection in evaluation."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from llm_lora.evaluation import score_generations  # noqa: E402
from llm_lora.generation import Generation  # noqa: E402
from llm_lora.metrics import load_metric  # noqa: E402


def test_rouge_scores_identical_text_one_and_disjoint_text_zero():
    rouge = load_metric("rouge")
    assert rouge.compute(predictions=["the parcel arrived broken"], references=["the parcel arrived broken"]) == {
        "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0,
    }
    assert rouge.compute(predictions=["refund please"], references=["ship a replacement"]) == {
        "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0,
    }


def test_rouge_partial_overlap_by_hand():
    # prediction: 6 unigrams, reference: 3, all 3 shared -> P=3/6, R=1 -> F=2/3.
    # bigrams: prediction 5, reference 2, shared 2 -> P=2/5, R=1 -> F=4/7.
    result = load_metric("rouge").compute(predictions=["the cat sat on the mat"], references=["the cat sat"])
    assert result["rouge1"] == pytest.approx(2 / 3)
    assert result["rouge2"] == pytest.approx(4 / 7)
    assert result["rougeL"] == pytest.approx(2 / 3)


def test_rouge_averages_over_pairs_and_empty_prediction_scores_zero():
    result = load_metric("rouge").compute(predictions=["", "late order"], references=["late order", "late order"])
    assert result["rouge1"] == pytest.approx(0.5)


def test_rouge_refuses_empty_input():
    with pytest.raises(ValueError, match="at least one"):
        load_metric("rouge").compute(predictions=[], references=[])


def test_classification_accuracy_normalizes_and_counts_out_of_set_answers():
    metric = load_metric("classification_accuracy")
    result = metric.compute(
        predictions=[" Spam", '"ham"', "maybe", "spam"],
        references=["spam", "ham", "ham", "ham"],
    )
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["out_of_set_rate"] == pytest.approx(0.25)
    # spam: P=1/2, R=1 -> F=2/3; ham: P=1, R=1/3 -> F=1/2; macro = 7/12.
    assert result["macro_f1"] == pytest.approx(7 / 12)


def test_classification_accuracy_uses_the_given_label_set():
    result = load_metric("classification_accuracy").compute(
        predictions=["neutral", "positive"], references=["positive", "positive"], labels=["positive", "negative", "neutral"]
    )
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["out_of_set_rate"] == 0.0


def _generations(texts):
    return [Generation(text=text, latency_s=0.1, new_tokens=3, prompt_tokens=10) for text in texts]


def test_free_text_answers_get_exact_match_and_rouge_by_default():
    rows = [{"prompt": "p1", "completion": "ship a new one"}, {"prompt": "p2", "completion": "refund"}]
    result = score_generations(rows, _generations(["ship a new one", "no"]))
    assert result.metrics["exact_match"] == 0.5
    assert result.metrics["rouge1"] == pytest.approx(0.5)
    assert "valid_json_rate" not in result.metrics
    assert [example["exact_match"] for example in result.examples] == [True, False]


def test_configured_classification_metric_is_reported_under_its_name():
    rows = [{"prompt": "p", "completion": label} for label in ("billing", "shipping", "billing")]
    result = score_generations(rows, _generations(["billing", "billing", "Billing"]), ["classification_accuracy"])
    assert result.metrics["classification_accuracy"] == pytest.approx(2 / 3)
    assert result.metrics["classification_out_of_set_rate"] == 0.0


def test_exact_match_alone_on_json_answers_is_computed():
    """json_fields reports exact match of the parsed objects; without it, exact_match computes its own."""
    rows = [{"prompt": "p", "completion": '{"a": 1}'}, {"prompt": "q", "completion": '{"a": 2}'}]
    alone = score_generations(rows, _generations(['{"a":1}', '{"a": 3}']), ["exact_match"])
    assert alone.metrics["exact_match"] == 0.5 and "mean_field_accuracy" not in alone.metrics
    # The same objects, written differently, match: as in the per-example records.
    assert [example["exact_match"] for example in alone.examples] == [True, False]
    both = score_generations(rows, _generations(['{"a": 1}', '{"a": 3}']), ["json_fields", "exact_match"])
    assert both.metrics["exact_match"] == 0.5 and both.metrics["mean_field_accuracy"] == 0.5


def test_json_fields_on_free_text_references_is_refused():
    rows = [{"prompt": "p", "completion": "not json"}]
    with pytest.raises(ValueError, match="evaluation.metrics: json_fields"):
        score_generations(rows, _generations(["{}"]), ["json_fields"])


def test_the_registry_knows_the_scores_each_metric_module_reports():
    """promotion.metric is checked against the registry's SCORES_BY_METRIC before training: it must match what
    scoring reports, or a valid metric would be refused (or a missing one let through)."""
    from llm_lora.metric_registry import SCORES_BY_METRIC

    for module, scores in SCORES_BY_METRIC.items():
        reported = _reported(module)
        assert set(scores) <= set(reported.metrics), (module, sorted(reported.metrics))


def test_the_registry_describes_every_number_an_evaluation_reports():
    """A key missing from the registry would count as a higher-is-better quality score in every report."""
    from llm_lora.metric_registry import FIELD_ACCURACY_PREFIX, METRIC_MODULES, METRICS

    for module in METRIC_MODULES:
        unknown = [name for name in _reported(module).metrics
                   if name not in METRICS and not name.startswith(FIELD_ACCURACY_PREFIX)]
        assert not unknown, (module, unknown)


def test_the_registry_lists_the_metric_modules_that_exist_and_the_config_accepts():
    from typing import get_args

    from llm_lora.config import EvaluationConfig
    from llm_lora.metric_registry import METRIC_MODULES
    from llm_lora.metrics import METRICS_DIR

    assert sorted(METRIC_MODULES) == sorted(path.name for path in METRICS_DIR.iterdir() if path.is_dir()
                                            and (path / f"{path.name}.py").is_file())
    [auto, listed] = get_args(EvaluationConfig.model_fields["metrics"].annotation)
    assert set(get_args(get_args(listed)[0])) == set(METRIC_MODULES)


def _reported(module: str):
    """The metrics an evaluation with this one metric module reports on a one-row set (tool_calls: a row
    expecting a call with an argument)."""
    structured = module == "json_fields"
    rows = [{"prompt": "p", "completion": '{"a": 1}' if structured else "spam"}]
    answer = '{"a": 1}' if structured else "spam"
    if module == "tool_calls":
        call = {"id": "call_1", "name": "f", "arguments": {"a": 1}}
        rows = [{"prompt": "p", "completion": "-", "answer_meta": {"tool_calls": [call]}}]
        answer = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    return score_generations(rows, _generations([answer]), [module], expected_tokens=[3], max_new_tokens=8)


def test_free_text_records_carry_each_rows_rouge_and_they_average_to_the_metric():
    rows = [{"prompt": f"p{i}", "completion": completion}
            for i, completion in enumerate(["ship a new kettle today", "refund the order", "late parcel"])]
    answers = ["ship a new kettle", "refund it", "the parcel is late"]
    result = score_generations(rows, _generations(answers))
    for name in ("rouge1", "rouge2", "rougeL"):
        per_row = [example[name] for example in result.examples]
        assert all(0 <= score < 1 for score in per_row) and len(set(per_row)) > 1, per_row
        assert sum(per_row) / len(per_row) == pytest.approx(result.metrics[name])
    assert result.examples[0]["rouge1"] == pytest.approx(2 * 4 / (4 + 5))  # 4 shared words of 4 and 5
    # Without the rouge module, the records do not carry it.
    assert "rougeL" not in score_generations(rows, _generations(answers), ["exact_match"]).examples[0]


def test_json_answers_carry_each_rows_rouge_when_rouge_is_listed():
    rows = [{"prompt": "p", "completion": '{"a": "ship a new kettle"}'}, {"prompt": "q", "completion": '{"a": "refund"}'}]
    result = score_generations(rows, _generations(['{"a": "ship a kettle"}', '{"a": "refund"}']), ["json_fields", "rouge"])
    per_row = [example["rougeL"] for example in result.examples]
    assert per_row[1] == 1.0 and 0 < per_row[0] < 1
    assert sum(per_row) / 2 == pytest.approx(result.metrics["rougeL"])
    assert "correct_a" in result.examples[0]

"""Per-example comparison of base and finetuned answers."""

import json

import pytest

from llm_lora.comparison import (
    compare_examples, comparison_summary, example_score, render_comparison_html, score_meaning,
)
from llm_lora.evaluation import score_generations
from llm_lora.generation import Generation

EXPECTED = json.dumps({"order_id": "ORD-1", "issue_type": "late_delivery", "priority": "high"})
ROWS = [{"prompt": f"email {i}", "completion": EXPECTED} for i in range(3)]


def _records(texts):
    generations = [Generation(text=text, latency_s=0.2, new_tokens=5, prompt_tokens=20) for text in texts]
    return score_generations(ROWS, generations).examples


def test_scores_per_example():
    base = _records([
        "Sure! The order is ORD-1.",  # not JSON
        json.dumps({"order_id": "ORD-1", "issue_type": "late_delivery", "priority": "low"}),  # 2 of 3
        EXPECTED,
    ])
    assert [example_score(record) for record in base] == [0.0, pytest.approx(2 / 3), 1.0]


def test_better_worse_and_same_rows_with_field_fixes_and_breaks():
    base = _records([
        "Sure! The order is ORD-1.",
        EXPECTED,
        json.dumps({"order_id": "ORD-9", "issue_type": "late_delivery", "priority": "high"}),
    ])
    tuned = _records([
        EXPECTED,  # fixed everything
        json.dumps({"order_id": "ORD-1", "issue_type": "late_delivery", "priority": "low"}),  # broke priority
        json.dumps({"order_id": "ORD-9", "issue_type": "late_delivery", "priority": "high"}),  # same mistake
    ])
    rows = compare_examples(base, tuned)
    assert [row["change"] for row in rows] == ["better", "worse", "same"]
    assert rows[0]["base_output"].startswith("Sure!") and rows[0]["finetuned_output"] == EXPECTED
    assert rows[1]["base_priority"] is True and rows[1]["finetuned_priority"] is False
    summary = comparison_summary(rows)
    assert (summary.better, summary.worse, summary.same) == (1, 1, 1)
    # row 0: base invalid JSON counts every field wrong, so all three are fixed there.
    assert summary.fixed["order_id"] == 1 and summary.fixed["priority"] == 1
    assert summary.broken["priority"] == 1 and summary.broken["order_id"] == 0
    # Model-version metadata keeps one flat dict: "fixed/<field>", "broken/<field>".
    assert summary.as_metadata()["fixed/order_id"] == 1 and summary.as_metadata()["broken/priority"] == 1


def test_html_lists_regressions_first_and_escapes_outputs():
    base = _records([EXPECTED, "<script>alert(1)</script>", EXPECTED])
    tuned = _records([EXPECTED, EXPECTED, "{}"])
    page = render_comparison_html(compare_examples(base, tuned))
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "1 better</b>, <b>1 worse</b>" in page
    table = page.split("Rows (regressions first)")[1]
    assert table.index("class='worse'") < table.index("class='better'") < table.index("class='same'")


def test_evaluations_of_different_rows_are_refused():
    base = _records([EXPECTED] * 3)
    with pytest.raises(ValueError, match="different rows"):
        compare_examples(base, base[:2])
    shifted = [dict(record, prompt="other") for record in base]
    with pytest.raises(ValueError, match="row 0 differs"):
        compare_examples(base, shifted)


def test_fields_a_row_does_not_have_count_neither_way_even_after_a_dataframe():
    """Rows with different keys: the steps pass records through pandas, where a missing field becomes NaN."""
    import pandas as pd

    rows = [{"prompt": "a", "completion": json.dumps({"a": "x"})},
            {"prompt": "b", "completion": json.dumps({"a": "x", "b": "y", "c": "z"})}]
    generations = lambda texts: [Generation(text=t, latency_s=0.1, new_tokens=3, prompt_tokens=9) for t in texts]
    base = score_generations(rows, generations(["{}", "{}"])).examples
    tuned = score_generations(rows, generations([json.dumps({"a": "x"}), json.dumps({"a": "x"})])).examples
    through_pandas = [pd.DataFrame(records).to_dict("records") for records in (base, tuned)]
    for base_records, tuned_records in ((base, tuned), through_pandas):
        assert [example_score(record) for record in tuned_records] == [1.0, pytest.approx(1 / 3)]
        summary = comparison_summary(compare_examples(base_records, tuned_records))
        assert summary.mean_finetuned_score == pytest.approx((1 + 1 / 3) / 2, abs=1e-4)
        assert (summary.fixed["a"], summary.fixed["b"], summary.fixed["c"]) == (2, 0, 0)
    # Records scored on each row's own fields (stored by earlier versions) hold NaN in a DataFrame's gaps.
    assert example_score({"valid_json": True, "correct_a": False, "correct_b": float("nan")}) == 0.0
    gap = compare_examples([{"prompt": "p", "expected": "e", "output": "{}", "correct_b": float("nan")}],
                           [{"prompt": "p", "expected": "e", "output": "{}", "correct_b": float("nan")}])
    assert comparison_summary(gap).fixed["b"] == 0 and gap[0]["finetuned_b"] is None


def test_classification_rows_score_as_the_aggregate_counts_them():
    rows = [{"prompt": f"p{i}", "completion": label} for i, label in enumerate(["spam", "ham", "spam", "ham"])]
    answers = ["Spam", '"ham"', "ham", "ham"]
    result = score_generations(
        rows, [Generation(text=t, latency_s=0.1, new_tokens=2, prompt_tokens=9) for t in answers],
        ["classification_accuracy"])
    scores = [example_score(record) for record in result.examples]
    assert scores == [1.0, 1.0, 0.0, 1.0]
    assert sum(scores) / len(scores) == result.metrics["classification_accuracy"] == 0.75


def test_row_scores_average_to_the_aggregate_when_rows_have_different_fields():
    """Every row is scored on all references' fields, as json_fields scores them (a field the row lacks is
    right when the answer lacks it too): the rows' scores average to mean_field_accuracy."""
    rows = [{"prompt": "a", "completion": json.dumps({"a": "x"})}, {"prompt": "b", "completion": json.dumps({"b": "y"})}]
    result = score_generations(rows, [Generation(text=t, latency_s=0.1, new_tokens=3, prompt_tokens=9)
                                      for t in ("{}", json.dumps({"a": "x"}))])
    scores = [example_score(record) for record in result.examples]
    assert scores == [0.5, 0.0]
    assert sum(scores) / 2 == pytest.approx(result.metrics["mean_field_accuracy"]) == 0.25


def test_rows_are_compared_on_a_rouge_metric_when_it_is_the_promotion_metric():
    base = [{"prompt": "p", "expected": "ship a new kettle", "output": "sorry", "exact_match": False,
             "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}]
    tuned = [{"prompt": "p", "expected": "ship a new kettle", "output": "ship a kettle", "exact_match": False,
              "rouge1": 0.857, "rouge2": 0.4, "rougeL": 0.857}]
    assert compare_examples(base, tuned)[0]["change"] == "same"  # exact match: both wrong
    row = compare_examples(base, tuned, "rougeL")[0]
    assert row["change"] == "better" and row["finetuned_score"] == 0.857
    assert example_score(tuned[0], "mean_field_accuracy") == 0.0  # other metrics keep the usual score


def test_the_page_says_what_its_scores_measure():
    base = [{"prompt": "p", "expected": "refund", "output": "no", "exact_match": False, "rougeL": 0.0}]
    tuned = [{"prompt": "p", "expected": "refund", "output": "refund", "exact_match": True, "rougeL": 1.0}]
    page = render_comparison_html(compare_examples(base, tuned, "rougeL"), score_meaning(tuned[0], "rougeL"))
    assert "per-example score: rougeL F-measure" in page
    assert "1 for an exact match" in score_meaning(tuned[0]) and "label" in score_meaning({"label_match": True})
    assert "share of fields right" in score_meaning({"correct_a": True, "exact_match": False}, "rougeL")

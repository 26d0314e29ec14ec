"""The run report page: loss curves, the metric table and the decision."""

import re

from llm_lora.promotion import PromotionRecord
from llm_lora.reports import loss_curve_svg, metric_rows, render_run_report
from llm_lora.worth_it import WorthItReport

HISTORY = [{"step": s, "loss": 2.0 / s} for s in range(1, 11)] + [
    {"step": 5, "eval_loss": 0.9}, {"step": 10, "eval_loss": 0.7}]
BASE = {"mean_field_accuracy": 0.1, "valid_json_rate": 0.5, "field_accuracy/order_id": 0.2, "mean_latency_s": 0.5,
        "num_examples": 10.0, "evaluation_fingerprint": "abc"}
TUNED = {"mean_field_accuracy": 0.9, "valid_json_rate": 1.0, "field_accuracy/order_id": 0.1, "mean_latency_s": 0.4,
         "num_examples": 10.0, "evaluation_fingerprint": "abc"}
DECISION = PromotionRecord(promote=True, stage="production", reason="0.9 beats <base> 0.1",
                           metric="mean_field_accuracy", candidate=0.9, base=0.1, production=None, baseline=None,
                           production_source="no production version", new_stage="production")
TRAINING = {"optimizer_steps": 10, "train_runtime_s": 12.3, "train_tokens_per_s": 180.0, "train_loss": 0.5,
            "validation_loss": 0.7, "resumed_from_step": 0}


def test_loss_curve_plots_every_logged_point_with_falling_training_loss():
    svg = loss_curve_svg(HISTORY)
    train_line, validation_line = re.findall(r"points='([^']+)'", svg)
    train = [tuple(map(float, p.split(","))) for p in train_line.split()]
    assert len(train) == 10 and len(validation_line.split()) == 2
    # x grows with the step; SVG y grows downward, so a falling loss climbs on the page.
    assert [x for x, _ in train] == sorted(x for x, _ in train)
    assert [y for _, y in train] == sorted(y for _, y in train)
    assert svg.count("<circle") == 2  # validation points are marked


def test_loss_curve_without_logs_says_so():
    assert "No losses were logged" in loss_curve_svg([])


def test_metric_table_orders_rows_and_marks_changes():
    names = [name for name, _, _ in metric_rows(BASE, TUNED)]
    assert names == ["mean_field_accuracy", "valid_json_rate", "field_accuracy/order_id", "mean_latency_s"]
    page = render_run_report(BASE, TUNED, DECISION, TRAINING, HISTORY, "support version 3")
    table = page.split("id=\"metrics\"")[1]
    assert "<td>mean_field_accuracy</td><td>0.100</td><td>0.900</td><td class='better'>+0.800</td>" in table
    assert "<td>field_accuracy/order_id</td><td>0.200</td><td>0.100</td><td class='worse'>-0.100</td>" in table
    # Latency: lower is better.
    assert "<td>mean_latency_s</td><td>0.500</td><td>0.400</td><td class='better'>-0.100</td>" in table


def test_report_states_the_decision_escaped():
    page = render_run_report(BASE, TUNED, DECISION, TRAINING, HISTORY, "support version 3")
    assert "Run report: support version 3" in page and "Stage: production" in page
    assert "0.9 beats &lt;base&gt; 0.1" in page and "<base>" not in page
    staged = DECISION.model_copy(update={"promote": False, "stage": "staging", "new_stage": "staging"})
    held = render_run_report(BASE, TUNED, staged, TRAINING, HISTORY, "x")
    assert "class=\"decision held\"" in held and "not promoted to production" in held


def test_report_carries_the_worth_it_verdict():
    # The page shows only the verdict and its reason: the report's other fields are left out.
    worth_it = WorthItReport.model_construct(verdict="worth it",
                                             reason="beats the best baseline (base model, 2-shot) by +0.5")
    page = render_run_report(BASE, TUNED, DECISION, TRAINING, HISTORY, "x", worth_it=worth_it)
    assert "<b>Worth it? worth it</b>" in page and "base model, 2-shot" in page
    assert "id='worth-it'" not in render_run_report(BASE, TUNED, DECISION, TRAINING, HISTORY, "x")


def test_more_answers_outside_the_label_set_is_marked_worse():
    base = {"classification_accuracy": 0.5, "classification_out_of_set_rate": 0.1}
    tuned = {"classification_accuracy": 0.6, "classification_out_of_set_rate": 0.4}
    table = render_run_report(base, tuned, DECISION, TRAINING, HISTORY, "labels version 1").split("id=\"metrics\"")[1]
    assert "<td>classification_out_of_set_rate</td><td>0.100</td><td>0.400</td><td class='worse'>+0.300</td>" in table

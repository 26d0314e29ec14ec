"""Was finetuning worth it: the interval, the payback arithmetic and the verdict, on hand-made numbers."""

import json

import pytest

from llm_lora.evaluation import score_generations
from llm_lora.generation import Generation
from llm_lora.worth_it import (
    MIN_ROWS,
    Evaluated,
    Interval,
    WorthItReport,
    assess,
    judge,
    paired_bootstrap,
    payback_requests,
    render_worth_it_html,
    summary_lines,
    training_cost,
    valid_output_rate,
)

# --- The confidence interval -------------------------------------------------------------------------------------


def test_identical_scores_give_a_zero_width_interval_at_zero():
    scores = [0.2, 1.0, 0.6, 0.0, 0.8] * 4
    assert paired_bootstrap(scores, scores) == Interval(0.0, 0.0, 0.0)


def test_a_constant_difference_is_known_exactly():
    # Every row improves by exactly one: whatever rows are drawn, the mean gain is one.
    assert paired_bootstrap([1.0] * 30, [0.0] * 30) == Interval(1.0, 1.0, 1.0)


def test_a_clear_win_lies_above_zero():
    baseline = [0.0, 0.2, 0.4, 0.2, 0.0] * 8
    candidate = [b + 0.5 + 0.1 * (i % 3) for i, b in enumerate(baseline)]
    interval = paired_bootstrap(candidate, baseline)
    assert 0 < interval.low < interval.mean < interval.high
    assert interval.mean == pytest.approx(0.6, abs=0.01)


def test_a_small_mixed_sample_straddles_zero():
    candidate = [1, 0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    baseline = [0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1]
    interval = paired_bootstrap(candidate, baseline)
    assert interval.mean == 0.0  # six rows right each, not the same six
    assert interval.low < 0 < interval.high


def test_the_interval_is_reproducible_and_narrows_with_confidence():
    candidate = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1] * 3
    baseline = [0, 0, 1, 0, 0, 1, 0, 1, 0, 0] * 3
    assert paired_bootstrap(candidate, baseline, seed=7) == paired_bootstrap(candidate, baseline, seed=7)
    wide = paired_bootstrap(candidate, baseline, confidence=0.99)
    narrow = paired_bootstrap(candidate, baseline, confidence=0.8)
    assert wide.low <= narrow.low and narrow.high <= wide.high
    assert narrow.mean == wide.mean == pytest.approx(0.4)


def test_unpaired_or_empty_scores_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="no per-example scores"):
        paired_bootstrap([], [])


# --- Payback arithmetic ------------------------------------------------------------------------------------------


def test_payback_on_round_numbers():
    # Training cost 1.00; 500 prompt tokens saved per request at 2.00 per million: 0.001 per request.
    assert payback_requests(1.0, 500, 2.0) == 1000
    # 1.00 at 300 tokens x 1.00 per million = 0.0003 per request: 3333.3 requests, so 3334.
    assert payback_requests(1.0, 300, 1.0) == 3334
    # The quickstart's sizes: 0.0106 of machine time, 250 tokens at 0.10 per million.
    assert payback_requests(0.0106, 250, 0.10) == 424


def test_no_or_negative_savings_never_pay_back():
    assert payback_requests(1.0, 0, 2.0) is None
    assert payback_requests(1.0, -120, 2.0) is None  # the finetuned prompt is longer
    assert payback_requests(1.0, 500, 0.0) is None  # free tokens save nothing
    assert payback_requests(0.0, 500, 2.0) == 0  # free training pays back at once
    assert payback_requests(0.0, 500, 0.0) == 0  # free training and free tokens: nothing to pay back
    assert payback_requests(0.0, -120, 2.0) is None  # free training, but every request costs more


def test_training_cost_is_runtime_times_processes_times_price():
    assert training_cost({"train_runtime_s": 3600, "num_processes": 2}, 1.5) == pytest.approx(3.0)
    assert training_cost({"train_runtime_s": 381}, 0.10) == pytest.approx(0.010583, abs=1e-6)
    assert training_cost({"train_runtime_s": 381}, None) is None


# --- The verdict -------------------------------------------------------------------------------------------------

JUDGE = dict(rows=100, baseline="base model, 3-shot", min_gain=0.02, confidence=0.95)


def test_clear_win_is_worth_it():
    verdict, reason = judge(Interval(0.5, 0.44, 0.56), prompt_tokens_saved=250, payback=424, priced=True,
                            expected_requests=None, **JUDGE)
    assert verdict == "worth it"
    assert reason == "beats the best baseline (base model, 3-shot) by +0.500 (95% CI +0.440 to +0.560) on 100 test rows"


def test_worse_is_not_worth_it():
    verdict, reason = judge(Interval(-0.2, -0.3, -0.1), prompt_tokens_saved=250, payback=424, priced=True,
                            expected_requests=None, **JUDGE)
    assert verdict == "not worth it" and reason.startswith("worse than the best baseline")


def test_gain_within_the_noise_is_inconclusive():
    verdict, reason = judge(Interval(0.05, -0.04, 0.14), prompt_tokens_saved=250, payback=424, priced=True,
                            expected_requests=None, **JUDGE)
    assert verdict == "inconclusive"
    assert "within the noise of 100 test rows (95% CI -0.040 to +0.140)" in reason


def test_too_few_rows_are_inconclusive_whatever_the_interval():
    verdict, reason = judge(Interval(1.0, 1.0, 1.0), prompt_tokens_saved=0, payback=None, priced=False,
                            expected_requests=None, **{**JUDGE, "rows": MIN_ROWS - 1})
    assert verdict == "inconclusive" and reason.startswith(f"only {MIN_ROWS - 1} test rows")


@pytest.mark.parametrize("saved, payback, priced, expected, verdict, says", [
    (0, None, True, None, "not worth it", "no prompt tokens saved per request"),
    (-40, None, True, 10**6, "not worth it", "no prompt tokens saved per request"),
    (250, None, False, None, "inconclusive", "set preflight.price_per_gpu_hour and cost.price_per_million"),
    (250, 424, True, None, "inconclusive", "pays back after 424 requests: set cost.expected_requests"),
    (250, 424, True, 1000, "worth it", "pays back after 424 of the 1000 expected requests"),
    (250, 424, True, 100, "not worth it", "more than the 100 expected"),
    (250, None, True, 1000, "not worth it", "never pays for training"),
    (250, 0, True, None, "worth it", "training cost nothing to pay back"),
])
def test_same_quality_lets_cost_decide(saved, payback, priced, expected, verdict, says):
    got, reason = judge(Interval(0.0, 0.0, 0.0), prompt_tokens_saved=saved, payback=payback, priced=priced,
                        expected_requests=expected, **JUDGE)
    assert got == verdict and says in reason
    assert reason.startswith("same quality as the best baseline (base model, 3-shot) within ±0.02")


# --- The whole report on hand-made evaluations ------------------------------------------------------------------

EXPECTED = {"order_id": "ORD-1", "issue_type": "late_delivery", "priority": "high"}
ROWS = [{"prompt": f"email {i}", "completion": json.dumps(EXPECTED)} for i in range(20)]


def _evaluated(name, label, texts, prompt_tokens, latency):
    generations = [Generation(text=t, new_tokens=30, prompt_tokens=prompt_tokens, latency_s=latency) for t in texts]
    result = score_generations(ROWS, generations)
    return Evaluated(name, label, result.metrics, result.examples)


def _half_right(i):
    return json.dumps({**EXPECTED, "priority": "low"}) if i % 2 else json.dumps(EXPECTED)


BASE = _evaluated("base", "base model, zero-shot", ["Sure, here you go"] * 20, 60, 0.5)
FEW = _evaluated("few_shot", "base model, 2-shot", [_half_right(i) for i in range(20)], 310, 0.6)
TUNED = _evaluated("finetuned", "finetuned", [json.dumps(EXPECTED)] * 20, 60, 0.4)
TRAINING = {"train_runtime_s": 360.0, "num_processes": 1, "device": "cpu"}


def test_report_picks_the_best_baseline_and_prices_the_difference():
    report = assess("mean_field_accuracy", [BASE, FEW], TUNED, TRAINING, price_per_gpu_hour=1.0,
                    price_per_million_prompt_tokens=0.5)
    assert [m.name for m in report.models] == ["base", "few_shot", "finetuned"]
    assert [m.primary_metric for m in report.models] == pytest.approx([0.0, 5 / 6, 1.0])
    assert report.models[0].valid_output_rate == 0.0 and report.models[1].valid_output_rate == 1.0
    assert report.models[1].quality["field_accuracy/priority"] == pytest.approx(0.5)
    assert report.best_baseline == "few_shot" and report.best_baseline_label == "base model, 2-shot"
    # Half the rows gain a third of their fields, half gain nothing: +1/6 on average. Resamples draw
    # other mixes of the two kinds of row, so the interval has width, but all of it lies above zero.
    assert report.gain == pytest.approx(1 / 6, abs=1e-6) and 0 < report.gain_low < report.gain_high
    assert report.prompt_tokens_saved == 250 and report.latency_saved_s == pytest.approx(0.2)
    # 0.1 h x 1.0 = 0.1; 250 tokens x 0.5 per million = 0.000125 per request: 800 requests.
    assert report.training_cost == pytest.approx(0.1) and report.payback_requests == 800
    assert report.payback == "after 800 requests"
    assert report.verdict == "worth it" and report.test_rows == 20
    assert "paired bootstrap over per-example scores, 2000 resamples, seed 0" in report.interval_method
    # Stored as JSON all the way down, and read back the same.
    assert WorthItReport.model_validate(json.loads(json.dumps(report.model_dump(mode="json")))) == report


def test_tie_goes_to_the_cheaper_baseline_and_unpriced_costs_say_what_to_set():
    costly_copy = Evaluated("few_shot", "base model, 2-shot", BASE.metrics | {"mean_prompt_tokens": 300.0},
                            BASE.records)
    report = assess("mean_field_accuracy", [BASE, costly_copy], TUNED, TRAINING)
    assert report.best_baseline == "base"
    assert report.prompt_tokens_saved == 0 and report.training_cost is None
    assert report.payback == "unknown: set preflight.price_per_gpu_hour"
    priced = assess("mean_field_accuracy", [BASE], TUNED, TRAINING, price_per_gpu_hour=1.0,
                    price_per_million_prompt_tokens=0.5)
    assert priced.payback == "never: no prompt tokens saved per request"


def test_evaluations_of_other_rows_are_refused():
    other = Evaluated("few_shot", "x", FEW.metrics, [{**FEW.records[0], "prompt": "another"}, *FEW.records[1:]])
    with pytest.raises(ValueError, match="row 0 differs"):
        assess("mean_field_accuracy", [other], TUNED, TRAINING)


def test_valid_output_rate_for_each_kind_of_answer():
    assert valid_output_rate({"valid_json_rate": 0.25}, []) == 0.25
    assert valid_output_rate({"classification_out_of_set_rate": 0.1}, []) == pytest.approx(0.9)
    assert valid_output_rate({}, [{"output": "yes"}, {"output": "  "}]) == 0.5


def test_page_and_printout_show_every_model_and_the_verdict():
    report = assess("mean_field_accuracy", [BASE, FEW], TUNED, TRAINING, price_per_gpu_hour=1.0,
                    price_per_million_prompt_tokens=0.5)
    page = render_worth_it_html(report)
    assert "<b>Worth it</b>" in page and "id=\"verdict\"" in page
    for label in ("base model, zero-shot", "base model, 2-shot", "finetuned"):
        assert f"<td>{label}</td>" in page
    assert "<tr class='best'><td>base model, 2-shot</td>" in page
    assert "after 800 requests" in page and "95% confidence interval" in page
    verdict, savings = summary_lines(report)
    assert verdict.startswith("verdict:  worth it: beats the best baseline (base model, 2-shot) by +0.167")
    assert savings.startswith("savings:  vs base model, 2-shot: 250 prompt tokens and 0.200 s per request;")
    assert "training 360 s, cost 0.1; payback after 800 requests" in savings


def test_a_rouge_promotion_metric_is_compared_row_by_row_on_rouge():
    """Free-text answers rarely match exactly: with promotion.metric rougeL the verdict weighs each row's ROUGE-L."""
    rows = [{"prompt": f"ticket {i}", "completion": f"apologise and ship a replacement kettle to customer {i}"}
            for i in range(20)]

    def evaluated(name, label, answers):
        result = score_generations(rows, [Generation(a, 0.5, 12, 80) for a in answers])
        return Evaluated(name, label, result.metrics, result.examples)

    base = evaluated("base", "base model, zero-shot", ["we are sorry"] * 20)
    tuned = evaluated("finetuned", "finetuned", [f"apologise and ship a kettle to customer {i}" for i in range(20)])
    assert base.metrics["exact_match"] == tuned.metrics["exact_match"] == 0.0
    report = assess("rougeL", [base], tuned, TRAINING)
    assert report.verdict == "worth it", report.reason
    assert report.gain == pytest.approx(tuned.metrics["rougeL"] - base.metrics["rougeL"])
    assert report.score == "per-example score: rougeL F-measure"
    # On exact match the same answers are the same quality: cost decides.
    assert assess("exact_match", [base], tuned, TRAINING).gain == 0.0

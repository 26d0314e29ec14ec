"""Scores for answers that are function calls: the tool_calls metric, evaluation by kind, the verdict on call rows."""

import json

import pytest

from llm_lora.comparison import compare_examples, example_score
from llm_lora.evaluation import score_generations
from llm_lora.generation import Generation
from llm_lora.metric_registry import auto_promotion_metric
from llm_lora.metrics import load_metric, parse_tool_calls, score_calls
from llm_lora.promotion import resolve_metric
from llm_lora.worth_it import Evaluated, assess, paired_scores


def answer(name, **arguments):
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


@pytest.mark.parametrize("text, calls", [
    ('<tool_call>{"name":"f","arguments":{"a":1}}</tool_call>', [{"name": "f", "arguments": {"a": 1}}]),
    # Hermes/Qwen, with text before and two blocks on their own lines
    ('Checking.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", '
     '"arguments": {}}\n</tool_call>', [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]),
    # Llama 3.1: the whole answer one JSON object with parameters
    ('{"name": "f", "parameters": {"a": "x"}}', [{"name": "f", "arguments": {"a": "x"}}]),
    # Mistral
    ('[TOOL_CALLS] [{"name": "f", "arguments": {"a": 2}}]', [{"name": "f", "arguments": {"a": 2}}]),
    # arguments as a JSON string, as APIs write them
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', [{"name": "f", "arguments": {"a": 1}}]),
    ("Sorry, I can only track packages.", None),
    ('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>', None),  # a broken call is no call
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>oops</tool_call>', None),
    ('{"order_id": "ORD-1"}', None),  # a JSON answer that is not a call
])
def test_calls_are_read_from_every_rendering(text, calls):
    assert parse_tool_calls(text) == calls


def test_arguments_compare_as_parsed_json():
    expected = [{"name": "search", "arguments": {"query": "mug", "max_price": 40}}]
    assert score_calls(answer("search", max_price=40.0, query="mug"), expected)["calls_match"]  # order, 40 == 40.0
    assert not score_calls(answer("search", query="Mug", max_price=40), expected)["calls_match"]  # strings exactly
    flag = [{"name": "search", "arguments": {"in_stock_only": True}}]
    assert not score_calls(answer("search", in_stock_only=1), flag)["calls_match"]  # true is not 1


def test_parallel_calls_in_any_order_and_per_argument_accuracy_by_hand():
    expected = [{"name": "track", "arguments": {"number": "1ZA"}}, {"name": "status", "arguments": {"order": "ORD-1"}}]
    swapped = answer("status", order="ORD-1") + answer("track", number="1ZA")
    assert score_calls(swapped, expected) == {"parses": True, "calls_match": True, "names_match": True,
                                              "arguments_right": 2, "arguments_total": 2}
    # One call with a wrong argument, one optional argument added, one expected call missing.
    expected = [{"name": "cancel", "arguments": {"order": "ORD-1"}}, {"name": "callback", "arguments": {"phone": "555"}}]
    made = answer("cancel", order="ORD-1", reason="too_slow")
    score = score_calls(made, expected)
    # cancel: order right, reason extra (wrong) -> 1 of 2; callback missing: its 1 argument wrong -> 1 of 3.
    assert (score["calls_match"], score["names_match"], score["arguments_right"], score["arguments_total"]) == (
        False, False, 1, 3)


def test_the_metric_module_aggregates_what_each_row_scores():
    references = [json.dumps([{"name": "f", "arguments": {"a": 1, "b": 2}}]), json.dumps([{"name": "g", "arguments": {}}])]
    result = load_metric("tool_calls").compute(predictions=[answer("f", a=1, b=3), "no call"], references=references)
    assert result == {"tool_call_accuracy": 0.0, "tool_name_accuracy": 0.5, "tool_argument_accuracy": 0.5,
                      "tool_call_parse_rate": 0.5}


def _call_row(index, name, **arguments):
    call = {"id": f"c{index}", "name": name, "arguments": arguments}
    return {"prompt": f"p{index}", "completion": answer(name, **arguments), "answer_meta": {"tool_calls": [call]}}


def _generations(texts):
    return [Generation(text=t, new_tokens=5, prompt_tokens=10, latency_s=0.1, hit_cap=False) for t in texts]


MIXED = [_call_row(0, "f", a=1), _call_row(1, "g", b="x"), _call_row(2, "f", a=2),
         {"prompt": "p3", "completion": "I can only track packages."}, {"prompt": "p4", "completion": "Hello."}]


def test_a_mixed_set_is_scored_by_kind_and_overall():
    outputs = [answer("f", a=1), answer("g", b="y"), "no call", "I can only track packages.", answer("f", a=1)]
    result = score_generations(MIXED, _generations(outputs))
    metrics = result.metrics
    assert metrics["tool_call_accuracy"] == pytest.approx(1 / 3) and metrics["tool_name_accuracy"] == pytest.approx(2 / 3)
    assert metrics["tool_argument_accuracy"] == pytest.approx(1 / 3) and metrics["tool_call_parse_rate"] == pytest.approx(2 / 3)
    assert metrics["exact_match"] == 0.5  # of the two text rows
    assert metrics["answer_accuracy"] == pytest.approx(2 / 5) and metrics["tool_call_rows"] == 3
    records = result.examples
    assert [r.get("tool_call_match") for r in records[:3]] == [True, False, False]
    assert records[4]["made_call"] is True and records[3]["made_call"] is False
    # promotion.metric: auto picks the call accuracy; each row scores by its kind.
    assert auto_promotion_metric(metrics) == "tool_call_accuracy" == resolve_metric("auto", metrics)
    assert [example_score(r) for r in records] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert [example_score(r, "tool_argument_accuracy") for r in records[:3]] == [1.0, 0.0, 0.0]


def test_the_verdict_on_the_call_score_pairs_only_the_rows_that_expect_calls():
    tuned = score_generations(MIXED, _generations([answer("f", a=1), answer("g", b="x"), answer("f", a=2), "x", "y"]))
    base = score_generations(MIXED, _generations(["x"] * 5))
    candidate, baseline = paired_scores(tuned.examples, base.examples, "tool_call_accuracy")
    assert candidate == [1.0, 1.0, 1.0] and baseline == [0.0, 0.0, 0.0]
    gain = sum(candidate) / 3 - sum(baseline) / 3
    assert gain == tuned.metrics["tool_call_accuracy"] - base.metrics["tool_call_accuracy"]
    assert [row["change"] for row in compare_examples(base.examples, tuned.examples, "tool_call_accuracy")] == [
        "better", "better", "better", "same", "same"]
    report = assess("tool_call_accuracy", [Evaluated("base", "base model, zero-shot", base.metrics, base.examples)],
                    Evaluated("finetuned", "finetuned", tuned.metrics, tuned.examples), {"train_runtime_s": 1.0},
                    bootstrap_samples=200)
    assert report.test_rows == 3 and report.gain == pytest.approx(1.0)
    assert report.score.startswith("per-example score: 1 when the answer makes exactly the expected calls")

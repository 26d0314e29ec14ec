"""Recorded baselines: another model's answers on the test rows, matched by input, scored and priced like the others."""

import json

import pytest
import yaml

from llm_lora.config import ConfigError, DataConfig, RunConfig, load_config
from llm_lora.data_formats import to_example
from llm_lora.data_sources import DataError
from llm_lora.evaluation import score_generations
from llm_lora.generation import Generation
from llm_lora.recorded import match_answers, read_recorded_answers, recorded_generations, usage_recorded
from llm_lora.run_checks import check_data
from llm_lora.worth_it import Evaluated, assess, render_worth_it_html, summary_lines

TOOLS = [{"type": "function", "function": {"name": "track_package", "parameters": {
    "type": "object", "properties": {"tracking_number": {"type": "string"}}, "required": ["tracking_number"]}}}]
SYSTEM = {"role": "system", "content": "You are a shop's assistant."}


def row(index: int) -> dict:
    number = f"1Z{index:08d}"
    if index % 3 == 2:  # a text answer
        return {"messages": [SYSTEM, {"role": "user", "content": f"Do you ship to country {index}?"},
                             {"role": "assistant", "content": "I can only track packages."}], "tools": TOOLS}
    arguments = json.dumps({"tracking_number": number})
    return {"messages": [SYSTEM, {"role": "user", "content": f"Where is parcel {number}?"},
                         {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                             "name": "track_package", "arguments": arguments}}]}], "tools": TOOLS}


def api_answer(test_row: dict, right: bool) -> dict:
    """The test row with its answer replaced by what an API returned, as the Python client's model_dump() gives it."""
    expected = test_row["messages"][-1]
    if right:
        message = {"role": "assistant", "content": expected.get("content"), "refusal": None, "annotations": [],
                   "tool_calls": expected.get("tool_calls"), "function_call": None}
    else:
        message = {"role": "assistant", "content": "Let me check that for you.", "refusal": None, "tool_calls": None}
    return {**test_row, "messages": [*test_row["messages"][:-1], message],
            "usage": {"prompt_tokens": 120, "completion_tokens": 20}, "latency_s": 0.8}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def files(tmp_path):
    test = [row(i) for i in range(12)]
    recorded = [api_answer(r, right=i % 4 != 3) for i, r in enumerate(test)]
    return {"test": _write(tmp_path / "test.jsonl", test), "train": _write(tmp_path / "train.jsonl", [row(i) for i in
                                                                                                       range(100, 112)]),
            "recorded": _write(tmp_path / "recorded.jsonl", list(reversed(recorded))), "rows": test}


def test_recorded_answers_are_matched_to_the_test_rows_by_input_and_scored(files):
    data = DataConfig(train_file=files["train"], test_file=files["test"])
    test_rows = [to_example(r, source=f"test.jsonl:{i + 1}").to_row() for i, r in enumerate(files["rows"])]
    answers = match_answers(read_recorded_answers(files["recorded"], data), test_rows, None, "recorded")
    assert usage_recorded(answers) and [a.latency_s for a in answers] == [0.8] * 12
    # The file is in reverse order; each answer still lands on its own row.
    assert answers[0].text == test_rows[0]["completion"] and answers[3].text == "Let me check that for you."
    result = score_generations(test_rows, recorded_generations(answers))
    # 8 call rows, of which rows 3 and 7 got the wrong answer (text); 4 text rows, row 11 wrong.
    assert result.metrics["tool_call_accuracy"] == pytest.approx(6 / 8)
    assert result.metrics["exact_match"] == pytest.approx(3 / 4)
    assert result.metrics["mean_prompt_tokens"] == 120 and result.metrics["mean_new_tokens"] == 20


def test_a_file_that_misses_test_rows_is_refused_naming_them(files, tmp_path):
    data = DataConfig(train_file=files["train"], test_file=files["test"])
    partial = _write(tmp_path / "partial.jsonl", [api_answer(r, True) for r in files["rows"][2:]])
    rows = [to_example(r, source=f"test.jsonl:{i + 1}").to_row() for i, r in enumerate(files["rows"])]
    with pytest.raises(DataError, match=r"^recorded: no recorded answer for 2 of the 12 test rows: test.jsonl:1,"
                                        r" test.jsonl:2 \(one line per test row"):
        match_answers(read_recorded_answers(partial, data), rows, None, "recorded")


@pytest.mark.parametrize("line, reason", [
    ({"messages": [SYSTEM, {"role": "user", "content": "x"}]}, "the last message must be the model's answer"),
    ({**row(0), "usage": {"prompt_tokens": "many", "completion_tokens": 1}}, "usage.prompt_tokens must be a whole number"),
    ({**row(0), "latency_s": -1}, "latency_s must be a number of seconds"),
    ({"messages": [SYSTEM, {"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "track_package", "arguments": "{nope"}}]}], "tools": TOOLS},
     "the recorded answer: the last message.tool_calls"),
])
def test_bad_recorded_lines_are_one_line_with_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path / "recorded.jsonl", [line])
    with pytest.raises(DataError, match=reason) as error:
        read_recorded_answers(path, DataConfig(train_file=path))
    assert str(error.value).startswith(f"{path}:1: ") and "\n" not in str(error.value)


def _config(tmp_path, files, recorded_file):
    config = {"model": {"name": "org/model"}, "data": {"train_file": str(files["train"]), "test_file": str(files["test"])},
              "baselines": {"few_shot_k": 0, "recorded": [{"name": "hosted-ft", "answers_file": str(recorded_file),
                                                           "price_per_million_prompt_tokens": 0.3,
                                                           "price_per_million_completion_tokens": 1.2}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_check_before_a_run_refuses_a_file_that_does_not_cover_the_test_rows(tmp_path, files):
    path = _config(tmp_path, files, files["recorded"])
    assert check_data(load_config(path)) is not None  # the full file covers every test row
    partial = _write(tmp_path / "partial.jsonl", [api_answer(r, True) for r in files["rows"][:-1]])
    with pytest.raises(DataError, match=r"baselines.recorded\[0\].answers_file \(.*partial.jsonl\): no recorded answer"
                                        r" for 1 of the 12 test rows"):
        check_data(load_config(_config(tmp_path, files, partial)))
    with pytest.raises(ConfigError, match=r"baselines.recorded\[0\].answers_file: not found: .*nowhere.jsonl"):
        load_config(_config(tmp_path, files, tmp_path / "nowhere.jsonl"))
    twice = yaml.safe_load(path.read_text())
    twice["baselines"]["recorded"] *= 2
    with pytest.raises(ValueError, match="the name 'hosted-ft' is used twice"):
        RunConfig.model_validate(twice)


def test_the_recorded_baseline_is_in_every_table_and_the_verdict_says_whether_it_is_matched(files):
    test_rows = [to_example(r).to_row() for r in files["rows"]] * 2  # 24 rows: enough for an interval
    answers = [a for a in match_answers(read_recorded_answers(files["recorded"], DataConfig(train_file=files["train"])),
                                        test_rows[:12], None, "recorded")] * 2
    recorded = score_generations(test_rows, recorded_generations(answers))
    right = [Generation(text=r["completion"], new_tokens=15, prompt_tokens=100, latency_s=0.2, hit_cap=False)
             for r in test_rows]
    tuned = score_generations(test_rows, right)
    base = score_generations(test_rows, [Generation("x", 5, 100, 0.2, False)] * 24)
    report = assess(
        "tool_call_accuracy", [Evaluated("base", "base model, zero-shot", base.metrics, base.examples)],
        Evaluated("finetuned", "finetuned", tuned.metrics, tuned.examples), {"train_runtime_s": 60.0},
        price_per_million_prompt_tokens=0.1, price_per_million_completion_tokens=0.1, bootstrap_samples=500,
        recorded=[Evaluated("recorded:hosted-ft", "hosted-ft", recorded.metrics, recorded.examples)],
        recorded_prices={"recorded:hosted-ft": (0.3, 1.2)},
    )
    assert [model.label for model in report.models] == ["base model, zero-shot", "hosted-ft", "finetuned"]
    assert report.best_baseline == "base"  # the verdict is still against prompting the base model
    (comparison,) = report.recorded
    assert comparison.rows == 16 and comparison.gain == pytest.approx(0.25) and comparison.outcome == "beats it"
    # 120 prompt x 0.3 + 20 completion x 1.2 per million = 60 per million requests; 100 x 0.1 + 15 x 0.1 = 11.5.
    assert comparison.cost_per_million_requests == pytest.approx(60.0)
    assert comparison.finetuned_cost_per_million_requests == pytest.approx(11.5)
    assert comparison.saving_per_million_requests == pytest.approx(48.5)
    lines = summary_lines(report)
    assert lines[1].startswith("recorded: vs hosted-ft: finetuned beats it: +0.250 on tool_call_accuracy (95% CI")
    assert lines[1].endswith("60 vs 11.5 per million requests: saves 48.5 per million requests")
    page = render_worth_it_html(report)
    assert "hosted-ft" in page and "Finetuned vs recorded answers" in page and "48.50" in page
    assert report.as_metadata()["recorded/hosted-ft"]["outcome"] == "beats it"


def test_answers_recorded_as_the_readme_records_them_with_openais_client_are_read(tmp_path, files):
    """README's recording loop writes message.model_dump(exclude_none=True) and usage.model_dump(include=...) of
    OpenAI's own response types; those lines are read back as the answers they are."""
    from openai.types.chat import ChatCompletionMessage
    from openai.types.completion_usage import CompletionUsage

    lines = []
    for test_row in files["rows"]:
        expected = test_row["messages"][-1]
        message = ChatCompletionMessage(role="assistant", content=expected.get("content"),
                                        tool_calls=expected.get("tool_calls"))
        usage = CompletionUsage(prompt_tokens=90, completion_tokens=12, total_tokens=102)
        lines.append({**test_row, "messages": [*test_row["messages"][:-1], message.model_dump(exclude_none=True)],
                      "usage": usage.model_dump(include={"prompt_tokens", "completion_tokens"})})
    path = _write(tmp_path / "client.jsonl", lines)
    rows = [to_example(r).to_row() for r in files["rows"]]
    answers = match_answers(read_recorded_answers(path, DataConfig(train_file=path)), rows, None, "recorded")
    assert [a.text for a in answers] == [r["completion"] for r in rows]
    assert {(a.prompt_tokens, a.completion_tokens, a.latency_s) for a in answers} == {(90, 12, None)}

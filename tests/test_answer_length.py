"""The generation cap follows the data, and answers it cut short never pass for a quality result."""

import json

import pytest

from llm_lora.answer_length import (
    MIN_MARGIN, answer_cap, answer_tokens, cut_short, cut_short_problem, margin, room_needed,
)
from llm_lora.config import RunConfig
from llm_lora.evaluation import generation_cap, score_generations
from llm_lora.generation import Generation
from llm_lora.preflight import check_settings, estimate_run, findings, render_html, render_text
from llm_lora.promotion import decide_promotion
from llm_lora.worth_it import Evaluated, assess


def test_an_answer_counts_its_tokens_with_the_end_of_turn(tokenizer):
    text = '{"order_id":"ORD-1","priority":"high"}'
    alone = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert answer_tokens(tokenizer, text) == alone + 1  # <|im_end|>, which the model must also generate


def test_auto_fits_the_longest_answer_with_a_margin():
    cap = answer_cap("auto", [10, 40, 90])
    assert cap.tokens == 90 + margin(90) == 135 and cap.longest == 90
    assert cap.longer == cap.tight == 0 and cap.problem() is None
    assert cap.describe() == (
        "evaluation.max_new_tokens: auto = 135 (longest expected answer 90 tokens with its end-of-turn, + margin 45)")
    assert answer_cap("auto", [3]).tokens == 3 + MIN_MARGIN  # labels still get room for a preamble


def test_a_set_cap_shorter_than_the_answers_names_the_key_the_count_and_the_longest():
    cap = answer_cap(52, [40, 60, 71, 30])
    assert (cap.tokens, cap.longer, cap.longest) == (52, 2, 71)
    problem = cap.problem()
    assert problem.startswith("shorter than 2 of 4 expected answers (longest 71")
    assert cap.describe().startswith("evaluation.max_new_tokens: 52 (shorter than 2 of 4")
    assert f"auto ({room_needed(71)})" in problem
    tight = answer_cap(60, [42, 44])  # every answer fits, but not with room for a less compact rendering
    assert tight.longer == 0 and tight.tight == 2 and "leaves less than the margin for 2 of 2" in tight.problem()


def test_hitting_the_cap_is_cut_short_only_when_the_expected_answer_needed_the_room():
    assert cut_short(True, expected_tokens=45, cap=52)  # the right answer may not have fitted
    assert not cut_short(True, expected_tokens=20, cap=68)  # it ran on far past any right answer
    assert not cut_short(False, expected_tokens=45, cap=20)  # it ended on its own


EXPECTED = {"invoice": "INV-2231", "vendor": "Acme Tools", "total": "1,250.00", "currency": "EUR"}
ROWS = [{"prompt": f"invoice {i}", "completion": json.dumps(EXPECTED)} for i in range(20)]


def _scored(texts, hit_cap, expected_tokens, cap):
    generations = [Generation(text=t, new_tokens=cap if hit else 20, prompt_tokens=50, latency_s=0.1, hit_cap=hit)
                   for t, hit in zip(texts, hit_cap)]
    return score_generations(ROWS, generations, expected_tokens=[expected_tokens] * len(ROWS), max_new_tokens=cap)


def test_scores_record_answers_at_the_cap_and_answers_cut_short():
    cut = _scored(['{"invoice": "INV-2231", "vendor": "Ac'] * 20, [True] * 20, expected_tokens=30, cap=24)
    assert cut.metrics["hit_cap_rate"] == cut.metrics["cut_short_rate"] == 1.0
    assert cut.metrics["max_new_tokens"] == 24.0 and cut.metrics["mean_field_accuracy"] == 0.0
    assert cut.examples[0]["hit_cap"] and cut.examples[0]["cut_short"]
    rambling = _scored(["Sure! " * 30] * 20, [True] * 20, expected_tokens=30, cap=room_needed(30))
    assert rambling.metrics["hit_cap_rate"] == 1.0 and rambling.metrics["cut_short_rate"] == 0.0


TRAINING = {"train_runtime_s": 60.0, "num_processes": 1, "device": "cpu"}


def test_a_verdict_on_answers_cut_short_is_inconclusive_with_the_counts():
    """The numbers alone say "worth it" (the base model never answers); but the finetuned model's answers were
    cut at the cap before the expected answer could fit, so its score measures the cap."""
    base = _scored(["no idea"] * 20, [False] * 20, expected_tokens=30, cap=24)
    tuned = _scored([json.dumps(EXPECTED)] * 17 + ['{"invoice": "INV'] * 3, [False] * 17 + [True] * 3,
                    expected_tokens=30, cap=24)
    models = (Evaluated("base", "base model, zero-shot", base.metrics, base.examples),
              Evaluated("finetuned", "finetuned", tuned.metrics, tuned.examples))
    measured = assess("mean_field_accuracy", [models[0]], models[1], TRAINING, max_cut_short=0.2)
    assert measured.verdict == "worth it" and measured.unmeasured is None
    report = assess("mean_field_accuracy", [models[0]], models[1], TRAINING, max_cut_short=0.02)
    assert report.verdict == "inconclusive"
    assert report.reason.startswith("evaluation cut answers short; raise evaluation.max_new_tokens")
    assert "finetuned: 3 of 20 answers stopped at the 24-token cap" in report.reason
    assert report.unmeasured == report.reason
    assert [(m.hit_cap, m.cut_short) for m in report.models] == [(0, 0), (3, 3)]


def test_a_base_model_rambling_past_a_fitting_cap_still_gets_a_verdict():
    cap = room_needed(30)
    base = _scored(["Sure! " * 40] * 20, [True] * 20, expected_tokens=30, cap=cap)
    tuned = _scored([json.dumps(EXPECTED)] * 20, [False] * 20, expected_tokens=30, cap=cap)
    report = assess("mean_field_accuracy", [Evaluated("base", "base model, zero-shot", base.metrics, base.examples)],
                    Evaluated("finetuned", "finetuned", tuned.metrics, tuned.examples), TRAINING)
    assert report.verdict == "worth it" and report.models[0].hit_cap == 20


def test_nothing_is_promoted_on_scores_the_cap_cut():
    problem = cut_short_problem([("finetuned", {"cut_short_rate": 1.0, "num_examples": 12.0, "max_new_tokens": 16.0})],
                                0.02)
    decision = decide_promotion("mean_field_accuracy", candidate=0.9, base=0.0, production=None, min_gain_over_base=0.05,
                                min_gain_over_production=0.0, unmeasured=problem)
    assert not decision.promote and decision.stage is None
    assert decision.reason.startswith("inconclusive: evaluation cut answers short; raise evaluation.max_new_tokens")
    assert "12 of 12 answers stopped at the 16-token cap" in decision.reason
    assert cut_short_problem([("finetuned", {"cut_short_rate": 0.0, "num_examples": 12.0})], 0.02) is None


def _summary(tmp_path, tokenizer, completions, context_window=8192, long_prompts=0, **data):
    """Prepared rows with these answers; the first `long_prompts` rows carry a prompt of some 300 tokens."""
    from llm_lora.config import DataConfig
    from llm_lora.data_preparation import prepare_splits

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": f"request number {i} please" + " and more" * 150 * (i < long_prompts), "completion": c})
        + "\n" for i, c in enumerate(completions)))
    return prepare_splits(DataConfig(path=path, **data), tokenizer, context_window).summary


def test_auto_settings_follow_the_prepared_data_and_the_report_says_why(tmp_path, tokenizer):
    long_answer = json.dumps({f"field_{i}": f"value number {i}" for i in range(12)})
    summary = _summary(tmp_path, tokenizer, [long_answer] * 40 + ['{"a": 1}'] * 40)
    lengths = summary["answer_length_counts"]
    assert max(map(int, lengths)) == answer_tokens(tokenizer, long_answer) and sum(lengths.values()) == 80
    assert summary["max_seq_length_setting"] == "auto" and summary["max_seq_length"] == 8192
    config = RunConfig.model_validate({"model": {"name": "org/model"}, "data": {"path": str(tmp_path / "rows.jsonl")},
                                       "training": {"batch_size": 1}})
    estimate = estimate_run(summary, config, "cpu")
    checks = {check.key: check for check in check_settings(summary, config, estimate)}
    expected_cap = room_needed(answer_tokens(tokenizer, long_answer))
    assert checks["evaluation.max_new_tokens"].value == f"auto = {expected_cap}"
    assert not any(check.warning for check in checks.values())
    assert f"evaluation.max_new_tokens: auto = {expected_cap}" in render_text(summary, estimate, list(checks.values()))


def test_auto_keeps_every_row_the_model_takes_and_names_the_ones_it_cannot(tmp_path, tokenizer):
    long_answer = json.dumps({f"field_{i}": f"value number {i}" for i in range(12)})
    summary = _summary(tmp_path, tokenizer, [long_answer] * 80, context_window=200, long_prompts=20)
    assert summary["max_seq_length"] == 200 and summary["train"]["over_length"] > 0
    config = RunConfig.model_validate({"model": {"name": "org/model"}, "data": {"path": str(tmp_path / "rows.jsonl")}})
    checks = check_settings(summary, config, estimate_run(summary, config, "cpu"))
    [check] = [check for check in checks if check.key == "data.max_seq_length"]
    assert check.warning and check.value == "auto = 200" and "the model cannot take them" in check.note
    assert _summary(tmp_path, tokenizer, ['{"a": 1}'] * 20, context_window=None)["max_seq_length"] is None


def test_values_tuned_to_another_task_are_named_before_training(tmp_path, tokenizer):
    long_answer = json.dumps({f"field_{i}": f"value number {i}" for i in range(12)})
    summary = _summary(tmp_path, tokenizer, [long_answer] * 80, context_window=512, long_prompts=20, max_seq_length=200)
    assert summary["train"]["over_length"] > 0 and summary["train"]["rows"] > 0  # the short prompts' rows stay
    config = RunConfig.model_validate({
        "model": {"name": "org/model"}, "data": {"path": str(tmp_path / "rows.jsonl"), "max_seq_length": 200},
        "evaluation": {"max_new_tokens": 52}, "baselines": {"few_shot_k": 40},
        "training": {"batch_size": 8}, "preflight": {"tokens_per_s": 10, "max_training_minutes": 0.1},
    })
    estimate = estimate_run(summary, config, "cpu")
    checks = check_settings(summary, config, estimate)
    warned = {check.key: check.note for check in checks if check.warning}
    answer = answer_tokens(tokenizer, long_answer)
    assert warned["evaluation.max_new_tokens"].startswith(
        f"shorter than {sum(summary['answer_length_counts'].values())} of")
    assert f"longest {answer} tokens" in warned["evaluation.max_new_tokens"]
    assert "rows longer than 200 tokens were dropped" in warned["data.max_seq_length"]
    assert "over the model's context window" in warned["baselines.few_shot_k"]
    assert "over preflight.max_training_minutes 0.1: about" in warned["data.max_train_rows"]
    assert "too few updates to learn a task; raise training.epochs" in warned["training.epochs"]
    lines = findings(summary, checks)
    assert any(line.startswith("evaluation.max_new_tokens: 52: shorter than") for line in lines)
    page = render_html(summary, estimate, checks)
    assert "Settings against the data" in page and "! evaluation.max_new_tokens" in page


def test_the_reference_model_counts_the_cap_in_its_own_tokens(tokenizer):
    class Spelled:
        """A tokenizer that spells every character as a token: answers take more of its tokens."""

        chat_template = None
        eos_token = "</s>"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    answers = ['{"a": "b"}', '{"label": "positive"}']
    assert generation_cap("auto", Spelled(), answers).longest == len(answers[1] + "</s>")
    assert generation_cap("auto", tokenizer, answers).longest < generation_cap("auto", Spelled(), answers).longest
    assert generation_cap(64, tokenizer, answers).tokens == 64


@pytest.mark.parametrize("value, message", [
    (0, "expected 'auto' or a whole number of at least 1, got 0"),
    ("lots", "expected 'auto' or a whole number, got 'lots'"),
])
def test_a_bad_cap_names_the_key(tmp_path, value, message):
    import yaml

    from llm_lora.config import ConfigError, load_config

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "completion": "b"}\n')
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "org/m"}, "data": {"train_file": str(rows)},
                                    "evaluation": {"max_new_tokens": value}}))
    with pytest.raises(ConfigError, match=f"evaluation.max_new_tokens: {message}"):
        load_config(path)

"""Few-shot baselines: examples drawn from the train split only, rendered through the one formatting function."""

import json

import pytest

from llm_lora.baselines import baseline_label, choose_few_shot_examples
from llm_lora.config import DataConfig, EvaluationConfig, ModelConfig
from llm_lora.data_preparation import prepare_splits
from llm_lora.evaluation import evaluate_model, evaluation_prompts
from llm_lora.model_loading import load_model
from llm_lora.prompt_formatting import format_prompt, with_examples

SYSTEM = "Extract order_id, issue_type, priority, product and action from the email as JSON."


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer, support_rows):
    """The shipped rows prepared as the pipeline prepares them: train, validation, test files."""
    folder = tmp_path_factory.mktemp("few-shot-data")
    config = DataConfig(
        train_file=_write(folder / "train.jsonl", support_rows["train"][:24]),
        validation_file=_write(folder / "validation.jsonl", support_rows["validation"][:4]),
        test_file=_write(folder / "test.jsonl", support_rows["test"][:6]),
        system_prompt=SYSTEM,
        max_seq_length=256,
    )
    return prepare_splits(config, tokenizer).splits


def test_examples_are_train_rows_drawn_with_the_seed(prepared):
    train, test = prepared["train"], prepared["test"]
    chosen = choose_few_shot_examples(train, 3, seed=0, evaluated_rows=test)
    assert len(chosen) == 3 and all(row in train for row in chosen)
    assert all("train.jsonl" in row["source"] for row in chosen)
    assert not {row["prompt"] for row in chosen} & {row["prompt"] for row in test}
    # The same seed draws the same rows in the same order; another seed draws others.
    assert choose_few_shot_examples(train, 3, seed=0, evaluated_rows=test) == chosen
    assert choose_few_shot_examples(train, 3, seed=1, evaluated_rows=test) != chosen
    assert choose_few_shot_examples(train, 0, seed=0) == []


def test_a_train_row_with_a_test_input_is_never_drawn(prepared):
    """Even when such a row reaches the train split, it cannot be an example: it would show the answer."""
    test = prepared["test"]
    leaked = {**test[0], "source": "train.jsonl:line 999"}
    train = [*prepared["train"][:5], leaked]
    for seed in range(20):
        chosen = choose_few_shot_examples(train, 5, seed=seed, evaluated_rows=test)
        assert leaked not in chosen and sorted(r["source"] for r in chosen) == sorted(r["source"] for r in train[:5])
    with pytest.raises(ValueError, match=r"^baselines\.few_shot_k: 6 examples asked for, but the train split has 5"):
        choose_few_shot_examples(train, 6, seed=0, evaluated_rows=test)


def test_few_shot_prompt_is_the_chat_template_with_earlier_turns(prepared, tokenizer):
    test = prepared["test"]
    examples = choose_few_shot_examples(prepared["train"], 2, seed=0, evaluated_rows=test)
    prompts = evaluation_prompts(tokenizer, test, SYSTEM, few_shot=examples)
    turns = [("user", examples[0]["prompt"]), ("assistant", examples[0]["completion"]),
             ("user", examples[1]["prompt"]), ("assistant", examples[1]["completion"]), ("user", test[0]["prompt"])]
    assert with_examples(test[0]["prompt"], [(e["prompt"], e["completion"]) for e in examples]) == turns
    # The one formatting function renders it, so the chat template applies: one system turn, then the examples.
    assert prompts[0] == format_prompt(tokenizer, turns, SYSTEM)
    text = prompts[0]
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{examples[0]['prompt']}<|im_end|>")
    assert f"<|im_start|>assistant\n{examples[0]['completion']}<|im_end|>" in text
    assert text.endswith(f"<|im_start|>user\n{test[0]['prompt']}<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>system") == 1 and test[0]["completion"] not in text
    # Every test row gets the same examples, then its own input; without examples the prepared prompt is used.
    assert all(p.startswith(text[: text.index(test[0]["prompt"])]) for p in prompts)
    assert evaluation_prompts(tokenizer, test, SYSTEM) == [row["prompt_text"] for row in test]


def test_reformat_uses_the_answering_models_tokenizer(prepared, tokenizer, tmp_path):
    """A reference model formats the rows with its own template, not the base model's prepared prompt."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)
    plain.chat_template = None
    [prompt] = evaluation_prompts(plain, prepared["test"][:1], SYSTEM, reformat=True)
    assert prompt == f"{plain.bos_token}{SYSTEM}\n\n### Input:\n{prepared['test'][0]['prompt']}\n\n### Response:\n"


def test_few_shot_evaluation_scores_the_same_rows_with_longer_prompts(prepared, tokenizer, tiny_model_dir):
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    settings = EvaluationConfig(batch_size=6, max_new_tokens=4)
    test = prepared["test"]
    zero = evaluate_model(model, tokenizer, test, SYSTEM, settings)
    examples = choose_few_shot_examples(prepared["train"], 2, seed=0, evaluated_rows=test)
    few = evaluate_model(model, tokenizer, test, SYSTEM, settings, few_shot=examples)
    assert [r["prompt"] for r in few.examples] == [r["prompt"] for r in zero.examples]
    assert [r["expected"] for r in few.examples] == [r["expected"] for r in zero.examples]
    example_tokens = sum(len(tokenizer(e["prompt"] + e["completion"])["input_ids"]) for e in examples)
    assert few.metrics["mean_prompt_tokens"] > zero.metrics["mean_prompt_tokens"] + example_tokens


def test_labels():
    assert baseline_label("base") == "base model, zero-shot"
    assert baseline_label("few_shot", few_shot_k=3) == "base model, 3-shot"
    assert baseline_label("reference", reference_name="org/big") == "org/big, zero-shot"

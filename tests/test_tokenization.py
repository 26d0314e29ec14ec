"""Loss masks for each format: which tokens carry loss."""

import pytest

from llm_lora.data_formats import Example, to_example
from llm_lora.prompt_formatting import TemplateError, format_completion, format_prompt, format_segments
from llm_lora.tokenization import IGNORE_INDEX, mask_problem, tokenize_example, tokenize_examples

ROW = {"prompt": "Order ORD-111222 arrived broken.", "completion": '{"order_id":"ORD-111222"}'}


def trained_text(tokenizer, row):
    ids, labels = row["input_ids"], row["labels"]
    return tokenizer.decode([token for token, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_labels_cover_completion_and_end_of_turn_only(tokenizer):
    prompt_text = format_prompt(tokenizer, ROW["prompt"], "Extract JSON.")
    example = tokenize_example(tokenizer, prompt_text, format_completion(tokenizer, ROW["completion"]))
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels) == len(example["attention_mask"])
    assert trained_text(tokenizer, example) == ROW["completion"] + "<|im_end|>"
    # The end-of-turn token is the last label and is trained (it is also the pad token).
    assert labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.pad_token_id
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in labels[:prompt_len])
    assert labels[prompt_len:] == ids[prompt_len:]


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You route tickets."},
        {"role": "user", "content": "My kettle broke."},
        {"role": "assistant", "content": "Which order?"},
        {"role": "user", "content": "ORD-123456"},
        {"role": "assistant", "content": "refund"},
    ]
}


@pytest.mark.parametrize(
    "row, expected",
    [
        (ROW, ROW["completion"] + "<|im_end|>"),
        ({"instruction": "Classify the email.", "input": "Kettle broke.", "output": "damaged"}, "damaged<|im_end|>"),
        (CONVERSATION, "refund<|im_end|>"),
    ],
    ids=["prompt_completion", "instruction", "messages"],
)
def test_each_format_trains_only_the_final_answer(tokenizer, row, expected):
    split = tokenize_examples([to_example(row)], tokenizer, "Be brief.", max_seq_length=256, loss_on="completion")
    assert trained_text(tokenizer, split.rows[0]) == expected


def test_by_default_every_assistant_turn_of_a_conversation_trains_as_openai_trains_it(tokenizer):
    """loss_on: auto (the default) is OpenAI's rule: every assistant message of weight 1, the default weight."""
    split = tokenize_examples([to_example(CONVERSATION)], tokenizer, "Be brief.", max_seq_length=256)
    assert trained_text(tokenizer, split.rows[0]) == "Which order?<|im_end|>refund<|im_end|>"
    assert (split.trained_turns, split.assistant_turns, split.weighted_rows) == (2, 2, 0)
    single = tokenize_examples([to_example(ROW)], tokenizer, "Be brief.", max_seq_length=256)
    assert trained_text(tokenizer, single.rows[0]) == ROW["completion"] + "<|im_end|>"


def test_messages_with_assistant_turns_trains_every_answer(tokenizer):
    split = tokenize_examples([to_example(CONVERSATION)], tokenizer, None, 256, loss_on="assistant_turns")
    assert trained_text(tokenizer, split.rows[0]) == "Which order?<|im_end|>refund<|im_end|>"
    # The row's own system message wins over the YAML's.
    assert "You route tickets." in split.rows[0]["prompt_text"]


def test_loss_on_all_trains_every_token(tokenizer):
    split = tokenize_examples([to_example(ROW)], tokenizer, "Be brief.", 256, loss_on="all")
    assert IGNORE_INDEX not in split.rows[0]["labels"]


def test_segments_concatenate_to_the_inference_prompt_plus_answer(tokenizer):
    example = to_example(CONVERSATION)
    segments = format_segments(tokenizer, example.context, example.completion, example.system)
    text = "".join(piece for piece, _ in segments)
    assert text == format_prompt(tokenizer, example.context, example.system) + "refund<|im_end|>"


def test_template_that_rewrites_history_is_refused(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    odd = AutoTokenizer.from_pretrained(tmp_path)
    # Shows only the last message: earlier turns vanish once later ones follow.
    odd.chat_template = (
        "{{ messages[-1]['role'] }}: {{ messages[-1]['content'] }}<|im_end|>"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(TemplateError, match="changes earlier turns"):
        format_segments(odd, to_example(CONVERSATION).context, "refund", None, loss_on="assistant_turns")


def test_over_long_rows_are_dropped_with_reason(tokenizer):
    long = Example(context=(("user", "word " * 300),), completion="{}", source="f.jsonl:2")
    split = tokenize_examples([to_example(ROW, source="f.jsonl:1"), long], tokenizer, "Extract JSON.", 128)
    assert [row["source"] for row in split.rows] == ["f.jsonl:1"]
    assert split.dropped == [("f.jsonl:2", split.dropped[0][1])] and "> max_seq_length 128" in split.dropped[0][1]
    assert split.rows[0]["prompt_text"].endswith("<|im_start|>assistant\n")


def test_truncate_cuts_the_input_never_the_answer(tokenizer):
    long = Example(context=(("user", "word " * 300),), completion='{"a":"b"}', source="f.jsonl:2")
    split = tokenize_examples([long], tokenizer, None, 128, over_length="truncate")
    assert split.truncated == ["f.jsonl:2"]
    row = split.rows[0]
    assert len(row["input_ids"]) <= 128
    assert trained_text(tokenizer, row) == '{"a":"b"}<|im_end|>'


def test_mask_problem_detects_untrained_rows(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert mask_problem(tokenizer, [IGNORE_INDEX, IGNORE_INDEX]) == "no token carries loss"
    assert mask_problem(tokenizer, [IGNORE_INDEX, 5, 7]) == "the end-of-turn token carries no loss"
    assert mask_problem(tokenizer, [IGNORE_INDEX, 5, end]) is None

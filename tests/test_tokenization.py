"""Loss masks: the completion and its end-of-turn token carry loss, the prompt does not."""

from llm_lora.prompt_formatting import format_completion, format_prompt
from llm_lora.tokenization import IGNORE_INDEX, tokenize_example, tokenize_rows

ROW = {"prompt": "Order ORD-111222 arrived broken.", "completion": '{"order_id":"ORD-111222"}'}


def test_labels_cover_completion_and_end_of_turn_only(tokenizer):
    prompt_text = format_prompt(tokenizer, ROW["prompt"], "Extract JSON.")
    example = tokenize_example(tokenizer, prompt_text, format_completion(tokenizer, ROW["completion"]))
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels) == len(example["attention_mask"])
    trained = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == ROW["completion"] + "<|im_end|>"
    # The end-of-turn token is the last label and is trained (it is also the pad token).
    assert labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.pad_token_id
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in labels[:prompt_len])
    assert labels[prompt_len:] == ids[prompt_len:]


def test_over_long_rows_are_dropped_with_reason(tokenizer):
    rows = [ROW, {"prompt": "word " * 300, "completion": "{}"}]
    split = tokenize_rows(rows, tokenizer, "Extract JSON.", max_seq_length=128)
    assert len(split.rows) == 1 and split.rows[0]["prompt"] == ROW["prompt"]
    assert split.dropped[0][0] == 1 and "> max_seq_length 128" in split.dropped[0][1]
    assert split.rows[0]["prompt_text"].endswith("<|im_start|>assistant\n")

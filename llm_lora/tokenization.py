"""Token ids and loss masks for prompt/completion rows.

The prompt and the completion are tokenized separately and concatenated, the
same split the model sees at inference (prompt tokenized alone, answer
generated after it). Labels are -100 on prompt tokens, so the loss falls on the
completion and its end-of-turn token only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from llm_lora.prompt_formatting import format_completion, format_prompt

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


@dataclass
class TokenizedSplit:
    """A tokenized split and what did not make it in.

    Attributes:
        rows: Dicts with input_ids, attention_mask, labels, plus the source fields.
        dropped: (row index, reason) for every row left out.
    """

    rows: list[dict] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, prompt_text: str, completion_text: str
) -> dict[str, list[int]]:
    """Token ids and labels for one formatted example.

    Args:
        tokenizer: The base model's tokenizer.
        prompt_text: Output of `format_prompt`.
        completion_text: Output of `format_completion` (ends with end-of-turn).

    Returns:
        input_ids, attention_mask and labels of equal length.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + completion_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


def tokenize_rows(
    rows: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None,
    max_seq_length: int,
) -> TokenizedSplit:
    """Format and tokenize prompt/completion rows, dropping the over-long ones.

    Rows longer than `max_seq_length` are dropped, not truncated: a cut
    completion would teach the model to stop mid-answer, a cut prompt to answer
    what it has not read.

    Args:
        rows: Dicts with "prompt" and "completion".
        tokenizer: The base model's tokenizer.
        system_prompt: Instructions placed before every prompt.
        max_seq_length: Longest allowed prompt + completion, in tokens.

    Returns:
        The tokenized rows (source fields kept) and the dropped ones with reasons.
    """
    split = TokenizedSplit()
    for index, row in enumerate(rows):
        prompt_text = format_prompt(tokenizer, row["prompt"], system_prompt)
        completion_text = format_completion(tokenizer, row["completion"])
        example = tokenize_example(tokenizer, prompt_text, completion_text)
        length = len(example["input_ids"])
        if length > max_seq_length:
            split.dropped.append((index, f"{length} tokens > max_seq_length {max_seq_length}"))
            continue
        split.rows.append({**row, "prompt_text": prompt_text, **example})
    return split

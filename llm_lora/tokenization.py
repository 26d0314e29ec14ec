"""Token ids and loss masks for canonical examples.

Each formatted piece (see `format_segments`) is tokenized on its own and the
ids are concatenated, the same split the model sees at inference (the prompt
tokenized alone, the answer generated after it). Pieces that carry no loss get
label -100.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_lora.data_formats import Example, make_turn, turn_meta
from llm_lora.prompt_formatting import PLAIN_TEMPLATE, end_of_turn, format_prompt, format_segments, trained_answers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


@dataclass
class TokenizedSplit:
    """A tokenized split and what did not make it in.

    Attributes:
        rows: Dicts with the example, prompt_text, input_ids, attention_mask, labels.
        dropped: (source, reason) for every row left out.
        truncated: Sources of rows whose prompt was shortened to fit.
        longest_dropped: Tokens of the longest row dropped for its length (0: none).
        trained_turns: Assistant turns of the kept rows that carry loss.
        assistant_turns: Assistant turns of the kept rows (final answers included).
        weighted_rows: Kept rows whose assistant messages carry OpenAI weights (they decide what is trained).
    """

    rows: list[dict] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    longest_dropped: int = 0
    trained_turns: int = 0
    assistant_turns: int = 0
    weighted_rows: int = 0


def tokenize_segments(tokenizer: PreTrainedTokenizerBase, segments: list[tuple[str, bool]]) -> dict[str, list[int]]:
    """Token ids and labels for formatted pieces.

    Args:
        tokenizer: The base model's tokenizer.
        segments: (text, carries_loss) pieces from `format_segments`.

    Returns:
        input_ids, attention_mask and labels of equal length.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, prompt_text: str, completion_text: str
) -> dict[str, list[int]]:
    """Token ids and labels for a single-turn example: loss on the completion only."""
    return tokenize_segments(tokenizer, [(prompt_text, False), (completion_text, True)])


def mask_problem(tokenizer: PreTrainedTokenizerBase, labels: list[int]) -> str | None:
    """Why a label sequence cannot teach the answer, or None when it can.

    An example must train at least one answer token, and its last trained answer must
    end on the trained end-of-turn token, or the model never learns to stop. (The final
    answer itself may carry no loss: an OpenAI row whose last assistant message has weight 0.)
    """
    trained = [label for label in labels if label != IGNORE_INDEX]
    if not trained:
        return "no token carries loss"
    if trained[-1] != tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer)):
        return "the end-of-turn token carries no loss"
    return None


def _shorten_last_user_turn(example: Example, tokenizer, excess: int) -> Example | None:
    turns = list(example.context)
    users = [i for i, turn in enumerate(turns) if turn[0] == "user"]
    if not users:
        return None
    index = users[-1]
    ids = tokenizer(turns[index][1], add_special_tokens=False)["input_ids"]
    if len(ids) <= excess:
        return None
    turns[index] = make_turn("user", tokenizer.decode(ids[: len(ids) - excess]), **turn_meta(turns[index]))
    return dataclasses.replace(example, context=tuple(turns))


def trained_turn_count(example: Example, loss_on: str) -> tuple[int, int]:
    """(assistant turns that carry loss, assistant turns) of an example, by `trained_answers`' rule."""
    trained = trained_answers([*example.context, example.answer], loss_on)
    return sum(trained), len(trained)


def tokenize_examples(
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None,
    max_seq_length: int | None,
    loss_on: str = "auto",
    over_length: str = "drop",
    plain_template: str = PLAIN_TEMPLATE,
) -> TokenizedSplit:
    """Format and tokenize examples, dropping or shortening the over-long ones.

    Over-long rows are dropped by default. With `over_length="truncate"` the
    end of the last user turn is cut instead; the answer is never cut (a cut
    answer would teach the model to stop mid-answer).

    Args:
        examples: Canonical examples.
        tokenizer: The base model's tokenizer.
        system_prompt: The YAML's system prompt (a row's own system message wins).
        max_seq_length: Longest allowed sequence, in tokens (None: no limit).
        loss_on: Which tokens carry loss (see `format_segments`; rows with weights follow them).
        over_length: "drop" or "truncate".
        plain_template: Layout for tokenizers without a chat template.

    Returns:
        Tokenized rows, and the dropped and truncated ones.
    """
    split = TokenizedSplit()
    for example in examples:
        system = example.system if example.system is not None else system_prompt
        current = example
        for _ in range(3):  # decoding can re-tokenize a little longer; retry a few times
            segments = format_segments(
                tokenizer, current.context, current.answer, system, plain_template, loss_on, current.tools
            )
            tokens = tokenize_segments(tokenizer, segments)
            excess = len(tokens["input_ids"]) - (max_seq_length or len(tokens["input_ids"]))
            if excess <= 0 or over_length != "truncate":
                break
            current = _shorten_last_user_turn(current, tokenizer, excess + 2)
            if current is None:
                break
        length = len(tokens["input_ids"])
        if current is None or (max_seq_length is not None and length > max_seq_length):
            split.dropped.append((example.source, f"{length} tokens > max_seq_length {max_seq_length}"))
            split.longest_dropped = max(split.longest_dropped, length)
            continue
        problem = mask_problem(tokenizer, tokens["labels"])
        if problem:
            split.dropped.append((example.source, problem))
            continue
        if current is not example:
            split.truncated.append(example.source)
        prompt_text = format_prompt(tokenizer, current.context, system, plain_template, current.tools)
        trained, answers = trained_turn_count(current, loss_on)
        split.trained_turns += trained
        split.assistant_turns += answers
        split.weighted_rows += any("weight" in turn_meta(t) for t in (*current.context, current.answer))
        split.rows.append({**current.to_row(), "prompt_text": prompt_text, **tokens})
    return split

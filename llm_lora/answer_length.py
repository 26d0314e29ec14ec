"""How many tokens an answer may take: the generation cap, set from the data, and what hitting it means.

Every evaluation generates with a cap on new tokens. A cap tuned to one task
cuts the answers of the next one short, and a cut answer scores like a wrong
one. So the cap follows the data (`evaluation.max_new_tokens: auto`): the
longest expected answer of the prepared splits, in the answering model's
tokens with its end-of-turn, plus a margin for the same answer written less
compactly (spaces, a code fence, a short preamble).

Each generated answer records whether it stopped at its end-of-turn or hit the
cap. Hitting the cap is a fact about the model when its expected answer would
have fitted with a margin to spare (it ran on past any correct answer); it is a
failure of the measurement when the expected answer itself needed that room:
such an answer is *cut short*, and its score says nothing about the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_lora.prompt_formatting import format_completion

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The margin is at least this many tokens: short answers (labels) still get room for a
# preamble or a code fence.
MIN_MARGIN = 16
# ... and at least this share of the answer's length: long answers written with spaces
# or line breaks grow with their length.
MARGIN_SHARE = 0.5


def answer_tokens(tokenizer: PreTrainedTokenizerBase, completion: str) -> int:
    """Tokens a model generates to give this answer: the completion and its end-of-turn, as trained."""
    return len(tokenizer(format_completion(tokenizer, completion), add_special_tokens=False)["input_ids"])


def margin(tokens: int) -> int:
    """Room beyond an answer's own length before a cap cuts a less compact rendering of it."""
    return max(MIN_MARGIN, math.ceil(tokens * MARGIN_SHARE))


def room_needed(tokens: int) -> int:
    """The cap at which an answer of `tokens` tokens is measured fairly: its length plus the margin."""
    return tokens + margin(tokens)


@dataclass(frozen=True)
class AnswerCap:
    """The generation cap of a run and why it is what it is.

    Attributes:
        tokens: Cap on new tokens per answer.
        setting: The configured value: "auto" or the number the YAML gave.
        longest: The longest expected answer in the prepared splits (tokens with end-of-turn).
        longer: How many expected answers are longer than the cap (certainly cut).
        tight: How many need more room than the cap leaves (answer plus margin over the cap).
        answers: How many expected answers were measured.
    """

    tokens: int
    setting: str
    longest: int
    longer: int
    tight: int
    answers: int

    @property
    def auto(self) -> int:
        """What `auto` gives for these answers."""
        return room_needed(self.longest)

    @property
    def value(self) -> str:
        """The value as reports show it: "auto = 68", or the number set."""
        return f"auto = {self.tokens}" if self.setting == "auto" else str(self.tokens)

    def why(self) -> str:
        """Where the value comes from (for the preflight report and the logs)."""
        if self.setting == "auto":
            return f"longest expected answer {self.longest} tokens with its end-of-turn, + margin {margin(self.longest)}"
        return f"set in the config; the longest expected answer is {self.longest} tokens, auto would give {self.auto}"

    def problem(self) -> str | None:
        """What is wrong with a configured cap for these answers, or None."""
        if self.setting == "auto":
            return None
        if self.longer:
            return (
                f"shorter than {self.longer} of {self.answers} expected answers (longest {self.longest} tokens with"
                f" its end-of-turn): those answers will be cut short and score as wrong; use auto ({self.auto})"
            )
        if self.tight:
            return (
                f"leaves less than the margin for {self.tight} of {self.answers} expected answers (longest"
                f" {self.longest} tokens): an answer written less compactly is cut; auto gives {self.auto}"
            )
        return None

    def describe(self) -> str:
        """One line: the key, its value and why (or what is wrong with it)."""
        return f"evaluation.max_new_tokens: {self.value} ({self.problem() or self.why()})"


def answer_cap(setting: int | str, lengths: Iterable[int]) -> AnswerCap:
    """The generation cap for answers of these lengths.

    Args:
        setting: `evaluation.max_new_tokens`: "auto" or a number of tokens.
        lengths: `answer_tokens` of every expected answer the run has (all prepared splits).

    Returns:
        The cap, with the counts the preflight report and the verdict quote.
    """
    lengths = list(lengths)
    longest = max(lengths, default=1)
    tokens = room_needed(longest) if setting == "auto" else int(setting)
    return AnswerCap(
        tokens=tokens,
        setting=str(setting),
        longest=longest,
        longer=sum(length > tokens for length in lengths),
        tight=sum(room_needed(length) > tokens for length in lengths),
        answers=len(lengths),
    )


def cut_short(hit_cap: bool, expected_tokens: int, cap: int) -> bool:
    """Whether an answer's score is unmeasured: it hit the cap, and its expected answer needed that room."""
    return hit_cap and room_needed(expected_tokens) > cap


def cut_short_problem(evaluations: Iterable[tuple[str, dict]], tolerance: float) -> str | None:
    """Why scores cannot decide anything when a model's answers were cut short; None when they can.

    Args:
        evaluations: (how reports name the model, its evaluation metrics) for every model compared.
        tolerance: `evaluation.max_cut_short`: the share of cut answers a model may have.

    Returns:
        "evaluation cut answers short; raise evaluation.max_new_tokens (...)" with the counts of
        every model over the tolerance, or None.
    """
    over = []
    for label, metrics in evaluations:
        rate = float(metrics.get("cut_short_rate", 0.0))
        if rate > tolerance:
            count, total = round(rate * metrics["num_examples"]), int(metrics["num_examples"])
            cap = int(metrics.get("max_new_tokens", 0))
            over.append(f"{label}: {count} of {total} answers stopped at the {cap}-token cap before the expected"
                        " answer could fit")
    if not over:
        return None
    return (f"evaluation cut answers short; raise evaluation.max_new_tokens (auto fits the longest expected answer)"
            f" [{'; '.join(over)}; evaluation.max_cut_short {tolerance:g}]")

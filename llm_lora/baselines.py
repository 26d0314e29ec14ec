"""Baselines the finetuned model must beat: the base model prompted zero-shot, few-shot, or a larger model.

A few-shot prompt shows the base model solved examples before each test input.
The examples come from the train split only, the same ones for every input,
drawn with a fixed seed, so the baseline is reproducible and never sees a test
row or its answer.
"""

from __future__ import annotations

import random


def choose_few_shot_examples(
    train_rows: list[dict], k: int, seed: int, evaluated_rows: list[dict] = ()
) -> list[dict]:
    """Draw the solved examples a few-shot prompt shows.

    Args:
        train_rows: Prepared rows of the train split (the only source of examples).
        k: How many examples; 0 gives none.
        seed: Which rows are drawn (the same seed draws the same rows).
        evaluated_rows: The rows the baseline will answer. A train row with the
            same input as one of them is never drawn: it would show the model the
            answer. (Data preparation already drops such test rows as leakage;
            this holds for any rows passed in.)

    Returns:
        k train rows, in the order they are shown.

    Raises:
        ValueError: Fewer usable train rows than k.
    """
    if k == 0:
        return []
    held_out = {row["prompt"] for row in evaluated_rows}
    candidates = [row for row in train_rows if row["prompt"] not in held_out]
    if len(candidates) < k:
        raise ValueError(
            f"baselines.few_shot_k: {k} examples asked for, but the train split has {len(candidates)} usable rows"
        )
    return [candidates[i] for i in random.Random(seed).sample(range(len(candidates)), k)]


def baseline_label(kind: str, few_shot_k: int = 0, reference_name: str | None = None) -> str:
    """How reports name a baseline: "base model, zero-shot", "base model, 3-shot", "<model>, zero-shot"."""
    if kind == "base":
        return "base model, zero-shot"
    if kind == "few_shot":
        return f"base model, {few_shot_k}-shot"
    if kind == "reference":
        return f"{reference_name}, zero-shot"
    raise ValueError(f"unknown baseline {kind!r}")

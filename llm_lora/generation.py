"""Batched greedy generation, the same for base, finetuned and production models."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_lora.prompt_formatting import end_of_turn


@dataclass
class Generation:
    """One model answer.

    Attributes:
        text: The decoded answer, special tokens removed.
        new_tokens: Tokens generated, the end-of-turn token included.
        prompt_tokens: Tokens of the prompt.
        latency_s: The batch's wall time divided by its size.
    """

    text: str
    new_tokens: int
    prompt_tokens: int
    latency_s: float


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    batch_size: int = 16,
    max_new_tokens: int = 128,
) -> list[Generation]:
    """Greedy answers for formatted prompts, in input order.

    Prompts are sorted by length before batching so that a batch pads little,
    and padded on the left so every row's answer starts at the same position.

    Args:
        model: Base or adapter-wrapped model.
        tokenizer: Its tokenizer.
        prompt_texts: Outputs of `format_prompt`.
        batch_size: Prompts per forward pass.
        max_new_tokens: Cap on each answer's length.

    Returns:
        One Generation per prompt.
    """
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer)), tokenizer.eos_token_id} - {None})
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompt_texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    try:
        for start in range(0, len(order), batch_size):
            batch_ids = [encoded[i] for i in order[start : start + batch_size]]
            batch = tokenizer.pad({"input_ids": batch_ids}, return_tensors="pt").to(device)
            started = time.perf_counter()
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            latency = (time.perf_counter() - started) / len(batch_ids)
            answers = output[:, batch["input_ids"].shape[1] :].tolist()
            for slot, answer, prompt_ids in zip(order[start : start + batch_size], answers, batch_ids):
                # Cut at the first stop token: rows that finished early are padded after it.
                cut = next((k + 1 for k, token in enumerate(answer) if token in stop_ids), len(answer))
                results[slot] = Generation(
                    text=tokenizer.decode(answer[:cut], skip_special_tokens=True).strip(),
                    new_tokens=cut,
                    prompt_tokens=len(prompt_ids),
                    latency_s=latency,
                )
    finally:
        tokenizer.padding_side = padding_side
    return results  # type: ignore[return-value]

"""Batched greedy generation, the same for base, finetuned and production models."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from llm_lora.prompt_formatting import end_of_turn


@dataclass
class Generation:
    """One model answer.

    Attributes:
        text: The decoded answer, special tokens removed.
        new_tokens: Tokens generated, the end-of-turn token included.
        prompt_tokens: Tokens of the prompt.
        latency_s: The batch's wall time divided by its size (plus an even share
            of the shared prefix's one-off time, when it was computed once).
        hit_cap: The answer reached max_new_tokens without its end-of-turn: it was
            stopped, not finished.
    """

    text: str
    new_tokens: int
    prompt_tokens: int
    latency_s: float
    hit_cap: bool = False


# A shared prefix shorter than this is recomputed with every batch: not worth a cache copy.
MIN_SHARED_PREFIX = 16


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    batch_size: int = 16,
    max_new_tokens: int = 128,
    reuse_prefix: bool = True,
) -> list[Generation]:
    """Greedy answers for formatted prompts, in input order.

    Prompts are sorted by length before batching so that a batch pads little,
    and padded on the left so every row's answer starts at the same position.
    The tokens every prompt starts with (the system prompt and chat markup, and
    few-shot examples) are run through the model once; each batch starts from a
    copy of that key/value cache and pads between the prefix and each row's own
    tokens, so the answers are those of the full prompts (tests check it).

    Args:
        model: Base or adapter-wrapped model.
        tokenizer: Its tokenizer.
        prompt_texts: Outputs of `format_prompt`.
        batch_size: Prompts per forward pass.
        max_new_tokens: Cap on each answer's length.
        reuse_prefix: Compute the shared prefix once (when it is at least
            MIN_SHARED_PREFIX tokens and the model's cache allows it).

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
    prefix_ids: list[int] = []
    prefix_cache, prefix_share = None, 0.0
    shared = encoded[0][: shared_prefix_length(encoded)] if reuse_prefix and len(encoded) > 1 else []
    if len(shared) >= MIN_SHARED_PREFIX:
        started = time.perf_counter()
        prefix_cache = _prefix_cache(model, torch.tensor([shared], device=device))
        prefix_share = (time.perf_counter() - started) / len(encoded)
        prefix_ids = shared if prefix_cache is not None else []
    try:
        for start in range(0, len(order), batch_size):
            batch_ids = [encoded[i] for i in order[start : start + batch_size]]
            started = time.perf_counter()
            inputs = _batch_inputs(tokenizer, batch_ids, prefix_ids, prefix_cache, device)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            latency = (time.perf_counter() - started) / len(batch_ids) + prefix_share
            answers = output[:, inputs["input_ids"].shape[1] :].tolist()
            for slot, answer, prompt_ids in zip(order[start : start + batch_size], answers, batch_ids):
                # Cut at the first stop token: rows that finished early are padded after it.
                stop = next((k + 1 for k, token in enumerate(answer) if token in stop_ids), None)
                cut = len(answer) if stop is None else stop
                results[slot] = Generation(
                    text=tokenizer.decode(answer[:cut], skip_special_tokens=True).strip(),
                    new_tokens=cut,
                    prompt_tokens=len(prompt_ids),
                    latency_s=latency,
                    # No stop token: generation ended because the batch reached the cap.
                    hit_cap=stop is None,
                )
    finally:
        tokenizer.padding_side = padding_side
    return results  # type: ignore[return-value]


def shared_prefix_length(encoded: list[list[int]]) -> int:
    """Tokens all prompts start with, leaving every prompt at least one token of its own."""
    shortest = min(len(ids) for ids in encoded)
    first = encoded[0]
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in encoded):
        length += 1
    return length


def _prefix_cache(model: PreTrainedModel, prefix: torch.Tensor) -> DynamicCache | None:
    """The shared prefix's key/value cache, or None for caches that cannot be copied per batch."""
    cache = model(input_ids=prefix, use_cache=True).past_key_values
    # Sliding-window, static, quantized or recurrent layers: keep the plain path.
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return cache


def _batch_inputs(tokenizer, batch_ids, prefix_ids, prefix_cache, device) -> dict:
    """generate() inputs: [prefix][left padding][row's own tokens], with a copy of the prefix's cache."""
    suffixes = [ids[len(prefix_ids) :] for ids in batch_ids]
    batch = tokenizer.pad({"input_ids": suffixes}, return_tensors="pt")
    if not prefix_ids:
        return dict(batch.to(device))
    rows = len(batch_ids)
    prefix = torch.tensor([prefix_ids]).expand(rows, -1)
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(rows)
    return {
        "input_ids": torch.cat([prefix, batch["input_ids"]], dim=1).to(device),
        # Padding in the middle is masked out; positions come from the mask, so each row's tokens
        # sit right after the prefix as in its own prompt.
        "attention_mask": torch.cat([torch.ones_like(prefix), batch["attention_mask"]], dim=1).to(device),
        "past_key_values": cache,
    }

"""Cross-entropy over the vocabulary a chunk of positions at a time (`training.chunked_loss`).

The completion loss needs vocabulary logits only where a token is labelled, but there it needs all of
them: for Llama-3.1-8B's 128,256-token vocabulary, every labelled position costs half a megabyte in
float32, kept until the backward pass, with its bfloat16 copy and its gradient beside it (about 1.5 GiB
for 1,600 labelled positions, the largest single activation of a QLoRA step). Here the model stops at
its last hidden states; the output projection and the cross-entropy run a chunk of positions at a time,
and the gradient with respect to the hidden states is computed right there, chunk by chunk, in the
forward pass. What waits for the backward pass is that gradient, one hidden vector per labelled
position (8 KB in bfloat16 for an 8B model, 64x less than its logits), and no chunk's logits outlive
the chunk. The arithmetic is the same as the plain path's (same products in the same precision, one
pass over the vocabulary per position forward, one backward), so loss and gradients match it.

This is the job Liger's and cut-cross-entropy's fused kernels do on CUDA; this one is plain torch, so it
runs and is tested on every device. It applies where the output projection is a frozen plain Linear
whose output the model returns unchanged (the model types in PLAIN_HEAD_MODEL_TYPES); anywhere else,
and in evaluation, the Trainer computes logits as before.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from peft import PeftModel

# Causal LMs whose forward returns lm_head(last hidden state) as is: no logit soft-capping (Gemma 2/3),
# scaling (Cohere, Granite) or other change after the projection that the chunked loss would skip.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3", "gemma",
                                    "olmo", "olmo2", "starcoder2", "stablelm"})
# Logits computed at once, per chunk: 2**25 float32 values are 128 MiB (261 positions of a 128k vocabulary).
LOGITS_PER_CHUNK = 2**25


def plain_output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output projection when the chunked loss can take it over, else None.

    It must be a frozen torch Linear (no adapter on it, not quantized) of a model type whose forward
    returns its output unchanged.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    return head


class _HiddenStates(torch.nn.Module):
    """Stands in for the output projection during a training forward: the model returns what it was given.

    It also keeps that tensor as it arrived and the number format the projection would have run in:
    Accelerate's mixed precision casts a model's outputs to float32 and runs autocast only around the
    forward, so neither is visible from what the model returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None
        self.compute_dtype: torch.dtype | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # noqa: D102
        device = hidden_states.device.type
        self.compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        self.hidden = hidden_states
        return hidden_states


@contextmanager
def hidden_states_out(model: torch.nn.Module, head: torch.nn.Linear) -> Iterator[_HiddenStates]:
    """Within the block, the model's forward stops at its last hidden states at the kept positions.

    Yields the stand-in that holds them after the forward call (`hidden`, and `compute_dtype`, the
    autocast format the head would have run in, None without autocast). The swap lasts only for the
    forward call; generation, evaluation and saving see the real head.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = next(name for name, module in base.named_children() if module is head)
    stand_in = _HiddenStates()
    setattr(base, name, stand_in)
    try:
        yield stand_in
    finally:
        setattr(base, name, head)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets`, one chunk of rows at a time."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, rows_per_chunk: int, compute_dtype: torch.dtype) -> torch.Tensor:
        # The projection runs in the format the model's own head would have used (autocast's, or the weight's).
        weight = weight.to(compute_dtype)
        bias = bias.to(compute_dtype) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        hidden_grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], rows_per_chunk):
            chunk = slice(start, start + rows_per_chunk)
            logits = F.linear(hidden[chunk].to(compute_dtype), weight, bias).float()
            target = targets[chunk]
            log_normalizer = torch.logsumexp(logits, dim=-1)
            total += (log_normalizer - logits.gather(1, target[:, None]).squeeze(1)).sum()
            # d(loss)/d(logits) = softmax - one-hot, computed in the logits' own memory.
            probabilities = logits.sub_(log_normalizer[:, None]).exp_()
            probabilities[torch.arange(target.shape[0], device=target.device), target] -= 1
            hidden_grad[chunk] = (probabilities.to(compute_dtype) @ weight).to(hidden.dtype)
            del logits, probabilities
        ctx.save_for_backward(hidden_grad)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (hidden_grad,) = ctx.saved_tensors
        return hidden_grad * grad_output.to(hidden_grad.dtype), None, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                          compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Summed cross-entropy of the head's logits at `hidden` (positions x hidden size) against `targets`.

    The head is frozen: only the hidden states get a gradient. `compute_dtype`: the format of the
    projection (autocast's); None: the head weight's.
    """
    rows_per_chunk = max(1, LOGITS_PER_CHUNK // head.out_features)
    return _ChunkedCrossEntropy.apply(hidden, head.weight, head.bias, targets, rows_per_chunk,
                                      compute_dtype or head.weight.dtype)

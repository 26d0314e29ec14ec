"""Variable-length attention for packed rows: PyTorch's own FlashAttention kernel, no extra package.

With packing, a batch is one long sequence of several rows. SDPA attends over
it with a block-diagonal mask and computes every (query, key) pair of the
whole sequence, masked or not: 16 packed rows of 300 tokens pay for
4,800 x 4,800 pairs where 16 x 300 x 300 count. `torch.nn.attention.varlen.varlen_attn`
(CUDA) takes the rows' boundaries instead and computes each row's causal attention alone.

`model.attn_implementation: varlen` selects it for training on a CUDA GPU
(llm_lora.model_loading.attention_for); the packing collator then passes the
boundaries (`cu_seq_lens_q`, `max_length_q`) through the model's forward to
this function. Generation has no packed rows and uses sdpa. Measured on an
H100 (bench/results/gpu-training-h100-before.json): bf16 LoRA on the Llama-3.1-8B
shape, 8 packed rows a step, 3,919 tokens/s with SDPA, 5,781 with varlen.
"""

from __future__ import annotations

import inspect

import torch

NAME = "varlen"


@torch.compiler.disable  # under training.compile: each layer's graph stops around it, the kernel runs as is
def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: query (1, heads, tokens, dim) -> output (1, tokens, heads, dim)."""
    from torch.nn.attention.varlen import varlen_attn

    if query.shape[0] != 1 or "cu_seq_lens_q" not in kwargs:
        raise ValueError("model.attn_implementation: varlen needs packed batches (data.packing: true)")
    if dropout:
        raise ValueError("model.attn_implementation: varlen has no attention dropout")
    boundaries, longest = kwargs["cu_seq_lens_q"].to(torch.int32), int(kwargs["max_length_q"])
    window = kwargs.get("sliding_window")
    if window is not None and longest > window:  # a row within the window attends the same either way
        raise ValueError(f"model.attn_implementation: varlen has no sliding window; rows of {longest} tokens"
                         f" exceed this model's {window}: use sdpa or a smaller data.max_seq_length")
    if kwargs.get("softcap") is not None:
        raise ValueError("model.attn_implementation: varlen has no logit soft-capping, which this model uses; use eager")
    q, k, v = (tensor.transpose(1, 2).squeeze(0) for tensor in (query, key, value))  # (tokens, heads, dim)
    autocast = torch.is_autocast_enabled("cuda")
    if q.dtype not in (torch.float16, torch.bfloat16):
        # The kernel takes 16 bits only. A LayerNorm under autocast (Phi) hands float32 to 4-bit
        # layers, which return their input's dtype: QLoRA's projections arrive here in float32.
        q, k, v = (tensor.to(torch.get_autocast_dtype("cuda") if autocast else torch.bfloat16) for tensor in (q, k, v))
    parameters = inspect.signature(varlen_attn).parameters
    options = {"scale": scaling}
    # PyTorch 2.11 spells causality is_causal; later versions, a (left, right) window.
    options.update({"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)})
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            k, v = (tensor.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for tensor in (k, v))
    output = varlen_attn(q, k, v, boundaries, boundaries, longest, longest, **options)
    if not autocast:  # a float32 model without autocast gets float32 back for its output projection
        output = output.to(query.dtype)
    return output.unsqueeze(0), None


def available() -> bool:
    """Whether this machine can run it: a CUDA GPU and a PyTorch with torch.nn.attention.varlen."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def in_use(model) -> bool:
    """Whether a (possibly PEFT-wrapped) model attends with varlen."""
    return getattr(model.config, "_attn_implementation", None) == NAME


def register() -> None:
    """Make `attn_implementation="varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention)
    # The row boundaries replace the mask, as with FlashAttention.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)

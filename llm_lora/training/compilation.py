"""torch.compile for training (`training.compile`), applied layer by layer."""

from __future__ import annotations

import torch
from peft import PeftModel


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place (regional compilation); returns how many.

    The layers share their code, so the same compiled graphs (dynamic in the sequence length, which
    packing changes every step; varlen attention runs between them, uncompiled) serve them all:
    the compile is paid once, not once per layer.
    Compiled layers still take part in gradient checkpointing. Layers are the model's
    `_no_split_modules` classes (LlamaDecoderLayer, PhiDecoderLayer, ...).
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in base.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"training.compile: no decoder layers found in {type(base).__name__}; set it to false")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)

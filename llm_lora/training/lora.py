"""LoRA adapters on a loaded base model: the YAML's `lora` section as PEFT objects."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from llm_lora.config import ConfigPart, LoraSettings, RunConfig
from llm_lora.training.precision import resolve_precision


def build_lora_config(lora: LoraSettings) -> LoraConfig:
    """PEFT's LoraConfig from the YAML's `lora` section."""
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model: PreTrainedModel, config: RunConfig | ConfigPart) -> PeftModel:
    """Wrap the base model with fresh LoRA adapters; the base weights stay frozen and as loaded.

    PEFT's prepare_model_for_kbit_training is not used for QLoRA: besides freezing,
    it copies every weight bitsandbytes left in 16 bits (embeddings, lm_head, norms)
    to float32 (4 GB more for Llama-3.1-8B), which also makes the residual stream
    float32 between layers, for weights that training never changes. PEFT creates
    the adapters themselves in float32 either way.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.training.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    try:
        peft_model = get_peft_model(model, build_lora_config(config.lora))
    except ValueError as exc:
        if "not found in the base model" not in str(exc) and "Target modules" not in str(exc):
            raise
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ValueError(
            f"lora.target_modules: {config.lora.target_modules} not found in {config.model.name};"
            f" its linear layers are {', '.join(linear)} (or use all-linear)"
        ) from None
    if resolve_precision(config.training) in ("bf16", "fp16"):
        # Under autocast the adapter's products run in 16 bits anyway; PEFT would first copy
        # every adapted layer's input to float32 (the adapter's dtype), only for autocast to
        # copy it back to 16 bits: two passes over each input, per adapted layer and step.
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                module.cast_input_dtype_enabled = False
    return peft_model

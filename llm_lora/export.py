"""Fold a LoRA adapter into its base model and save one ordinary model."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from llm_lora.config import ModelConfig
from llm_lora.model_loading import load_model, load_tokenizer


def merge_adapter(model: ModelConfig, adapter_dir: Path, output_dir: Path, dtype: str = "bfloat16") -> Path:
    """Merge adapter weights into the base weights and save model and tokenizer.

    The base is loaded unquantized even when training used QLoRA: merging into
    4-bit weights would round the update away.

    Args:
        model: The base model's section of the run config.
        adapter_dir: A saved adapter (`save_pretrained` output).
        output_dir: Where the merged model goes (safetensors + config + tokenizer).
        dtype: Dtype of the merged weights.

    Returns:
        `output_dir`.
    """
    base = load_model(model.model_copy(update={"dtype": dtype}))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)
    load_tokenizer(model).save_pretrained(output_dir)
    return output_dir

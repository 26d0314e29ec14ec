"""Fold a LoRA adapter into its base model and save one ordinary model."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from llm_lora.config import ConfigPart, ModelConfig, RunConfig
from llm_lora.generation import generate
from llm_lora.model_loading import default_device, load_model, load_tokenizer


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


def compare_merged_with_adapter(
    config: RunConfig | ConfigPart, adapter_dir: Path, merged_dir: Path, rows: list[dict], max_new_tokens: int
) -> dict:
    """Greedy answers of the merged model and of base + adapter, in the merged dtype, on the same rows.

    Args:
        config: The run configuration (model, export dtype, generation settings).
        adapter_dir: The saved adapter.
        merged_dir: Output of merge_adapter.
        rows: Prepared rows (with `prompt_text`).
        max_new_tokens: Cap on each answer, as the evaluation resolved it.

    Returns:
        Counts of checked and matching rows, and the indexes of rows that differ.
    """
    dtype = config.export.dtype
    tokenizer = load_tokenizer(config.model)
    prompts = [row["prompt_text"] for row in rows]
    settings = dict(batch_size=config.evaluation.batch_size, max_new_tokens=max_new_tokens)
    device = default_device()
    adapted = PeftModel.from_pretrained(
        load_model(config.model.model_copy(update={"dtype": dtype}), device=device), str(adapter_dir)
    ).eval()
    with_adapter = [g.text for g in generate(adapted, tokenizer, prompts, **settings)]
    del adapted
    merged_config = ModelConfig(name=str(merged_dir), dtype=dtype)
    with_merged = [g.text for g in generate(load_model(merged_config, device=device), tokenizer, prompts, **settings)]
    differing = [index for index, (a, b) in enumerate(zip(with_adapter, with_merged)) if a != b]
    return {"checked_rows": len(rows), "matching_rows": len(rows) - len(differing), "differing_rows": differing}

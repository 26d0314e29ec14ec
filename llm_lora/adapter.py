"""A saved LoRA adapter: a small directory that plain PEFT can load, and loading it onto a base model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

FACTS_FILE = "adapter_facts.json"


@dataclass
class LoraAdapter:
    """A directory with adapter weights (safetensors), adapter config and tokenizer.

    Attributes:
        directory: Where the files are; `peft.PeftModel.from_pretrained(base, directory)` loads it.
    """

    directory: Path

    @property
    def config(self) -> dict:
        """PEFT's adapter_config.json."""
        return json.loads((self.directory / "adapter_config.json").read_text())

    def facts(self) -> dict:
        """Key facts for people: base model, rank, targets, trainable parameters, size."""
        config = self.config
        facts_path = self.directory / FACTS_FILE
        stored = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
        targets = config.get("target_modules")
        size = sum(path.stat().st_size for path in self.directory.iterdir() if path.is_file())
        return {
            "base_model": stored.get("base_model", config.get("base_model_name_or_path")),
            "rank": config.get("r"),
            "alpha": config.get("lora_alpha"),
            "dropout": config.get("lora_dropout"),
            "use_dora": config.get("use_dora", False),
            # PEFT may record full module paths; people want the layer kinds.
            "target_modules": sorted({name.rsplit(".", 1)[-1] for name in targets})
            if isinstance(targets, list)
            else targets,
            "trainable_parameters": stored.get("trainable_parameters"),
            "size_bytes": size,
        }

    def write_facts(self, base_model: str, trainable_parameters: int) -> None:
        """Record what PEFT's own config does not say (the YAML's model name, parameter count)."""
        facts = {"base_model": base_model, "trainable_parameters": trainable_parameters}
        (self.directory / FACTS_FILE).write_text(json.dumps(facts, indent=2))


def load_adapter(model: PreTrainedModel, adapter_dir: Path, merge: bool = False) -> PeftModel | PreTrainedModel:
    """Put saved LoRA adapters on a loaded base model, for generation.

    Args:
        model: The base model.
        adapter_dir: A saved adapter.
        merge: Fold the adapter into the weights when they are float32 (the
            result equals the adapter's to rounding, and generation skips the
            extra low-rank products: the quickstart's finetuned evaluation took
            46 s instead of 59 s on a CPU). 16-bit weights keep the adapter separate: rounding
            the merged weights to 16 bits would change the model.
    """
    # Imported here: the materializer imports this module for LoraAdapter alone, and
    # torch and PEFT take seconds to import.
    import torch
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    peft_model.eval()
    if merge and all(parameter.dtype == torch.float32 for parameter in peft_model.parameters()):
        return peft_model.merge_and_unload().eval()
    return peft_model

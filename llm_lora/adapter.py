"""A saved LoRA adapter: a small directory that plain PEFT can load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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

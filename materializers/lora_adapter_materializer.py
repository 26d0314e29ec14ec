"""Stores LoRA adapters as their plain files, not as a pickle.

The artifact folder holds exactly what `save_pretrained` wrote (adapter
safetensors, adapter_config.json, tokenizer files), so
`peft.PeftModel.from_pretrained(base, <artifact uri>)` works outside ZenML too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from llm_lora.adapter import LoraAdapter
from materializers.model_folder_materializer import entry_name


class LoraAdapterMaterializer(BaseMaterializer):
    """Materializer for `llm_lora.adapter.LoraAdapter`."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (LoraAdapter,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: LoraAdapter) -> None:
        """Copy the adapter's files into the artifact store."""
        for path in sorted(Path(data.directory).iterdir()):
            if path.is_file():
                fileio.copy(str(path), os.path.join(self.uri, path.name), overwrite=True)

    def load(self, data_type: type[Any]) -> LoraAdapter:
        """Copy the files to a local folder (the store may be remote) and wrap them."""
        with self.get_temporary_directory(delete_at_exit=False) as local:
            for name in map(entry_name, fileio.listdir(self.uri)):
                fileio.copy(os.path.join(self.uri, name), os.path.join(local, name), overwrite=True)
        return LoraAdapter(directory=Path(local))

    def save_visualizations(self, data: LoraAdapter) -> dict[str, VisualizationType]:
        """A Markdown table of the adapter's facts for the dashboard."""
        rows = "\n".join(f"| {key} | {value} |" for key, value in data.facts().items())
        path = os.path.join(self.uri, "facts.md")
        with fileio.open(path, "w") as handle:
            handle.write(f"### LoRA adapter\n\n| fact | value |\n|---|---|\n{rows}\n")
        return {path: VisualizationType.MARKDOWN}

    def extract_metadata(self, data: LoraAdapter) -> dict[str, Any]:
        """Facts as artifact metadata (lists shown as text)."""
        return {key: value if not isinstance(value, list) else ", ".join(value)
                for key, value in data.facts().items() if value is not None}

"""Step: save base + adapter as one merged model (optional, `export.merge`)."""

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, step

from llm_lora.adapter import LoraAdapter
from llm_lora.config import RunConfig
from llm_lora.export import merge_adapter


@step
def export_merged(adapter: LoraAdapter, config_json: str) -> Annotated[Path, ArtifactConfig(name="merged_model")]:
    """Merge the adapter into the unquantized base model.

    Args:
        adapter: train_lora's adapter.
        config_json: The run configuration (RunConfig as JSON).

    Returns:
        A folder with the merged model's safetensors, config and tokenizer.
    """
    config = RunConfig.from_json(config_json)
    target = Path(tempfile.mkdtemp(prefix="merged-model-"))
    return merge_adapter(config.model, adapter.directory, target, config.export.dtype)

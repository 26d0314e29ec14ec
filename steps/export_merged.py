"""Step: save base + adapter as one merged model (optional, `export.merge`)."""

from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger

from llm_lora.adapter import LoraAdapter
from llm_lora.config import ConfigPart
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import prepared_cap
from llm_lora.export import compare_merged_with_adapter, merge_adapter
from llm_lora.model_loading import load_tokenizer
from steps.support.hub_token import apply_hub_token
from steps.support.scratch import scratch_folder

logger = get_logger(__name__)


@step
def export_merged(
    adapter: LoraAdapter, prepared_data: Path, settings: str
) -> Annotated[Path, ArtifactConfig(name="merged_model")]:
    """Merge the adapter into the unquantized base model and check it answers the same.

    Args:
        adapter: train_lora's adapter.
        prepared_data: Output of prepare_data (test rows for the check).
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).

    Returns:
        A folder with the merged model's safetensors, config and tokenizer.
    """
    config = ConfigPart.from_json(settings)
    apply_hub_token(config.model)
    target = merge_adapter(
        config.model, adapter.directory, scratch_folder("merged-model-"), config.export.dtype
    )
    metadata = {"dtype": config.export.dtype}
    if config.export.verify_rows:
        rows = load_prepared_split(prepared_data, "test")[: config.export.verify_rows]
        cap = prepared_cap(config.evaluation.max_new_tokens, load_tokenizer(config.model), prepared_data)
        check = compare_merged_with_adapter(config, adapter.directory, target, rows, cap.tokens)
        metadata.update(check)
        logger.info(
            "Merged model: %d of %d test rows answered exactly as base + adapter",
            check["matching_rows"], check["checked_rows"],
        )
    log_metadata(metadata={"merged_export": metadata}, infer_model=True)
    return target

"""Step: read, validate, format and tokenize the splits."""

from pathlib import Path
from typing import Annotated, Tuple

from zenml import ArtifactConfig, log_metadata, step

from llm_lora.config import ConfigPart
from llm_lora.data_preparation import prepare_splits, save_prepared, training_digest
from llm_lora.model_loading import context_window, load_tokenizer
from steps.support.hub_token import apply_hub_token
from steps.support.scratch import scratch_folder


@step
def prepare_data(
    settings: str,
) -> Tuple[
    Annotated[Path, ArtifactConfig(name="prepared_data")],
    Annotated[dict, ArtifactConfig(name="data_summary")],
    Annotated[str, ArtifactConfig(name="training_rows_digest")],
]:
    """Turn the configured JSONL files into tokenized train/validation/test splits.

    Args:
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).

    Returns:
        A folder with one JSONL file per split (prompt, completion, formatted
        prompt, input ids, labels), a summary of counts and drops, and the
        content hash of the train and validation splits (training's cache key).
    """
    config = ConfigPart.from_json(settings)
    token_source = apply_hub_token(config.model)
    prepared = prepare_splits(config.data, load_tokenizer(config.model), context_window(config.model))
    directory = save_prepared(prepared, scratch_folder("prepared-data-"))
    log_metadata(
        metadata={
            **{f"{name}_rows": prepared.summary[name]["rows"] for name in ("train", "validation", "test")},
            "hub_token_source": token_source,
        },
        infer_model=True,
    )
    return directory, prepared.summary, training_digest(directory)

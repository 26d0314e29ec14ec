"""Step: answer a file of new rows with a registered model version."""

from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.client import Client

from llm_lora.config import InferenceConfig, RunConfig
from llm_lora.inference import predict, read_inference_rows, write_predictions
from llm_lora.model_loading import default_device, load_model, load_tokenizer
from llm_lora.training import load_adapter
from steps.hub_token import apply_hub_token


@step
def batch_predict(
    inference_json: str,
) -> Tuple[
    Annotated[pd.DataFrame, ArtifactConfig(name="batch_predictions")],
    Annotated[str, ArtifactConfig(name="predictions_file")],
]:
    """Load the adapter of the chosen model version and answer every input row.

    Args:
        inference_json: The inference configuration (InferenceConfig as JSON).

    Returns:
        The predictions, and the path of the JSONL file they were written to.
    """
    settings = InferenceConfig.from_json(inference_json).inference
    version_id = int(settings.version) if settings.version.isdigit() else settings.version
    try:
        version = Client().get_model_version(settings.model_name, version_id)
    except KeyError:
        raise ValueError(
            f"inference.version: model {settings.model_name!r} has no version {settings.version!r}; "
            "run the finetune pipeline first (python run.py --config configs/quickstart.yaml)"
        ) from None
    config = RunConfig.from_json(version.run_metadata["run_config_json"])
    apply_hub_token(config.model)
    adapter = version.get_artifact("lora_adapter").load()
    tokenizer = load_tokenizer(config.model)
    model = load_adapter(load_model(config.model, device=default_device()), adapter.directory)
    rows = read_inference_rows(settings.input_file, config)
    results = predict(
        model, tokenizer, rows, config, settings.batch_size,
        settings.max_new_tokens or config.evaluation.max_new_tokens,
    )
    path = write_predictions(results, settings.output_file)
    log_metadata(
        metadata={
            "model_version": f"{settings.model_name} {version.name} ({version.stage or 'no stage'})",
            "rows": len(results),
            "valid_json_rate": sum(r["valid_json"] for r in results) / len(results),
        }
    )
    return pd.DataFrame(results).astype({"json": str}), str(path)

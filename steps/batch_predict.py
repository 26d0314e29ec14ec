"""Step: answer a file of new rows with a registered model version."""

from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step

from llm_lora.config import InferenceConfig
from llm_lora.inference import predict, read_inference_rows, write_predictions
from steps.support.model_version import load_model_version


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
    loaded = load_model_version(settings.model_name, settings.version, "inference.version")
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    rows = read_inference_rows(settings.input_file, config)
    results = predict(
        model, tokenizer, rows, config, settings.batch_size,
        settings.max_new_tokens or loaded.max_new_tokens,
    )
    path = write_predictions(results, settings.output_file)
    log_metadata(
        metadata={
            "model_version": loaded.label,
            "rows": len(results),
            "valid_json_rate": sum(r["valid_json"] for r in results) / len(results),
        }
    )
    return pd.DataFrame(results).astype({"json": str}), str(path)

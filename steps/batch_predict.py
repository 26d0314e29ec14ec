"""Step: answer a file of new rows with a registered model version."""

import json
from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step

from llm_lora.config import InferenceConfig, InferenceSettings
from llm_lora.inference import predict, predict_with_gguf, read_inference_rows, write_predictions
from llm_lora.model_loading import load_tokenizer
from steps.support.model_version import find_model_version, gguf_file, load_model_version, recorded_cap


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
    if settings.engine == "llama.cpp":
        label, rows, results = _predict_with_gguf(settings)
    else:
        loaded = load_model_version(settings.model_name, settings.version, "inference.version")
        model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
        rows = read_inference_rows(settings.input_file, config)
        results = predict(
            model, tokenizer, rows, config, settings.batch_size,
            settings.max_new_tokens or loaded.max_new_tokens,
        )
        label = loaded.label
    path = write_predictions(results, settings.output_file)
    log_metadata(
        metadata={
            "model_version": label,
            "engine": settings.engine,
            "rows": len(results),
            "valid_json_rate": sum(r["valid_json"] for r in results) / len(results),
        }
    )
    frame = pd.DataFrame(results).astype({"json": str})
    if "tool_calls" in frame:  # calls differ in shape from row to row: the artifact keeps them as JSON text
        frame["tool_calls"] = frame["tool_calls"].map(lambda calls: json.dumps(calls, ensure_ascii=False))
    return frame, str(path)


def _predict_with_gguf(settings: InferenceSettings) -> tuple[str, list, list[dict]]:
    """Answer with llama.cpp from the version's GGUF export; the prompts formatted by its own tokenizer."""
    version, config = find_model_version(settings.model_name, settings.version, "inference.version")
    path = gguf_file(version, settings.gguf_type, "inference")
    rows = read_inference_rows(settings.input_file, config)
    cap = settings.max_new_tokens or recorded_cap(version, config)
    results = predict_with_gguf(path, load_tokenizer(config.model), rows, config, cap)
    return f"{settings.model_name} {version.name} ({version.stage or 'no stage'}, {path.name})", rows, results

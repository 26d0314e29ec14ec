"""Step: generate on the test rows and score, for the base or the finetuned model."""

from pathlib import Path
from typing import Annotated, Optional, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step

from llm_lora.adapter import LoraAdapter
from llm_lora.config import RunConfig
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import evaluate_model as run_evaluation
from llm_lora.evaluation import evaluation_fingerprint
from llm_lora.model_loading import default_device, load_model, load_tokenizer
from llm_lora.training import load_adapter
from steps.hub_token import apply_hub_token


@step
def evaluate_model(
    prepared_data: Path,
    config_json: str,
    label: str,
    adapter: Optional[LoraAdapter] = None,
) -> Tuple[
    Annotated[dict, ArtifactConfig(name="metrics")],
    Annotated[pd.DataFrame, ArtifactConfig(name="predictions")],
]:
    """Score a model on the test split with greedy generation.

    Used twice in a pipeline: as `evaluate_base` (no adapter) and as
    `evaluate_finetuned` (with the trained adapter), on the same rows.

    Args:
        prepared_data: Output of prepare_data.
        config_json: The run configuration (RunConfig as JSON).
        label: "base" or "finetuned": the metadata key the metrics go under.
        adapter: LoRA adapter to put on the base model; None scores the base model.

    Returns:
        The metrics and one row per test example (output, correctness, latency).
    """
    config = RunConfig.from_json(config_json)
    apply_hub_token(config.model)
    rows = load_prepared_split(prepared_data, "test")
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, device=default_device())
    if adapter is not None:
        model = load_adapter(model, adapter.directory)
    result = run_evaluation(model, tokenizer, rows, config.data.system_prompt, config.evaluation)
    metrics = {**result.metrics, "evaluation_fingerprint": evaluation_fingerprint(config, rows)}
    log_metadata(metadata={label: metrics}, infer_model=True)
    return metrics, pd.DataFrame(result.examples)

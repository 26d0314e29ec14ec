"""Step: generate on the test rows and score, for the base model, a baseline or the finetuned model."""

from pathlib import Path
from typing import Annotated, Optional, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger

from llm_lora.adapter import LoraAdapter
from llm_lora.baselines import choose_few_shot_examples
from llm_lora.config import ConfigPart
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import evaluate_model as run_evaluation
from llm_lora.evaluation import evaluation_fingerprint, prepared_cap
from llm_lora.model_loading import default_device, load_model, load_tokenizer
from llm_lora.training import load_adapter
from steps.support.hub_token import apply_hub_token

logger = get_logger(__name__)


@step
def evaluate_model(
    prepared_data: Path,
    settings: str,
    label: str,
    adapter: Optional[LoraAdapter] = None,
    few_shot: bool = False,
    reference: bool = False,
) -> Tuple[
    Annotated[dict, ArtifactConfig(name="metrics")],
    Annotated[pd.DataFrame, ArtifactConfig(name="predictions")],
]:
    """Score a model on the test split with greedy generation.

    Used under several ids in a pipeline, all on the same test rows:
    `evaluate_base` (the base model), `evaluate_finetuned` (with the trained
    adapter), and the baselines `evaluate_few_shot` (the base model shown
    `baselines.few_shot_k` solved train rows before each input) and
    `evaluate_reference` (`baselines.reference_model`, zero-shot).

    Args:
        prepared_data: Output of prepare_data.
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).
        label: "base", "finetuned", "few_shot" or "reference": the metadata key the metrics go under.
        adapter: LoRA adapter to put on the base model; None scores the base model.
        few_shot: Put solved examples from the train split before every test input.
        reference: Score the reference model instead of the base model.

    Returns:
        The metrics and one row per test example (output, correctness, latency).
    """
    config = ConfigPart.from_json(settings)
    apply_hub_token(config.model)
    rows = load_prepared_split(prepared_data, "test")
    examples = []
    if few_shot:  # from the train split only, never a row with a test input
        examples = choose_few_shot_examples(
            load_prepared_split(prepared_data, "train"),
            config.baselines.few_shot_k,
            config.baselines.few_shot_seed,
            evaluated_rows=rows,
        )
    model_config = config.baselines.reference_model if reference else config.model
    if reference:
        apply_hub_token(model_config)
    tokenizer = load_tokenizer(model_config)
    cap = prepared_cap(config.evaluation.max_new_tokens, tokenizer, prepared_data)
    logger.info("%s", cap.describe())
    model = load_model(model_config, device=default_device())
    if adapter is not None:
        model = load_adapter(model, adapter.directory, merge=True)
    result = run_evaluation(
        model, tokenizer, rows, config.data.system_prompt, config.evaluation, cap.tokens,
        few_shot=examples, plain_template=config.data.plain_template, reformat=reference,
    )
    metrics = dict(result.metrics)
    if not (few_shot or reference):
        # What makes the score comparable across runs (the promotion gate compares with production).
        metrics["evaluation_fingerprint"] = evaluation_fingerprint(config, rows, cap.tokens)
    extra = {"few_shot_examples": [example["source"] for example in examples]} if few_shot else {}
    log_metadata(metadata={label: {**metrics, **extra}}, infer_model=True)
    return metrics, pd.DataFrame(result.examples)

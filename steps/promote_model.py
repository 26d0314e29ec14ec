"""Step: compare the new model version with the base model and production, promote if better."""

from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.client import Client
from zenml.logger import get_logger

from llm_lora.config import RunConfig
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import evaluate_model, evaluation_fingerprint
from llm_lora.model_loading import default_device, load_model, load_tokenizer
from llm_lora.promotion import decide_promotion, resolve_metric
from llm_lora.training import PRIMARY_METRIC_KEY, load_adapter

logger = get_logger(__name__)


def _production_score(
    config: RunConfig, metric: str, prepared_data: Path, current_version_id
) -> tuple[float | None, str]:
    """The production version's score on this run's test rows, and where it came from."""
    client = Client()
    try:
        production = client.get_model_version(config.registry.model_name, "production")
    except KeyError:
        return None, "no production version"
    if production.id == current_version_id:
        return None, "no production version"
    rows = load_prepared_split(prepared_data, "test")
    stored = production.run_metadata.get("finetuned")
    if isinstance(stored, dict) and stored.get("evaluation_fingerprint") == evaluation_fingerprint(config, rows):
        # Same rows, base model, prompt and greedy settings: re-running would give these numbers.
        return float(stored[metric]), f"version {production.number}, stored score on identical test rows"
    logger.info("Re-evaluating production version %s on this run's test rows", production.number)
    adapter = production.get_artifact("lora_adapter").load()
    model = load_adapter(load_model(config.model, device=default_device()), adapter.directory)
    result = evaluate_model(model, load_tokenizer(config.model), rows, config.data.system_prompt, config.evaluation)
    return float(result.metrics[metric]), f"version {production.number}, re-evaluated on this run's test rows"


@step
def promote_model(
    prepared_data: Path,
    config_json: str,
    base_metrics: dict,
    finetuned_metrics: dict,
    training_metrics: dict,
    loss_history: list,
    force_promote: bool = False,
) -> Annotated[dict, ArtifactConfig(name="promotion_decision")]:
    """Move this run's model version to production when it beats the base model and production.

    Args:
        prepared_data: Output of prepare_data (test rows, for re-evaluating production).
        config_json: The run configuration (RunConfig as JSON).
        base_metrics: evaluate_base's metrics.
        finetuned_metrics: evaluate_finetuned's metrics.
        training_metrics: train_lora's metrics, recorded on the model version.
        loss_history: train_lora's logged losses; the validation curve goes into metadata.
        force_promote: Put this version into production whatever the numbers.

    Returns:
        The decision with its numbers and reason.
    """
    config = RunConfig.from_json(config_json)
    metric = resolve_metric(config.promotion.metric, finetuned_metrics)
    for name, metrics in (("base", base_metrics), ("finetuned", finetuned_metrics)):
        if metric not in metrics:
            raise ValueError(f"promotion.metric: {metric!r} not among the {name} metrics {sorted(metrics)}")
    model = get_step_context().model
    production, source = _production_score(config, metric, prepared_data, model.id)
    decision = decide_promotion(
        metric,
        candidate=float(finetuned_metrics[metric]),
        base=float(base_metrics[metric]),
        production=production,
        min_gain_over_base=config.promotion.min_gain_over_base,
        min_gain_over_production=config.promotion.min_gain_over_production,
        staging=config.promotion.staging,
        force=force_promote,
    )
    record = {**decision.as_metadata(), "production_source": source}
    if decision.stage is not None:
        # force=True moves a current holder of the stage out of it (ZenML keeps one version per stage).
        model.set_stage(decision.stage, force=True)
    record["new_stage"] = decision.stage or "none"
    logger.info("Promotion: stage %s. %s", decision.stage or "none", decision.reason)
    log_metadata(
        metadata={
            "promotion": record,
            "training": training_metrics,
            "validation_loss_by_step": {
                str(entry["step"]): entry["eval_loss"] for entry in loss_history if "eval_loss" in entry
            },
            # With training.eval_generation_rows: the promotion metric on the validation slice.
            "validation_metric_by_step": {
                str(entry["step"]): entry[PRIMARY_METRIC_KEY] for entry in loss_history if PRIMARY_METRIC_KEY in entry
            },
            # The whole config, so inference can format inputs exactly as training did.
            "run_config_json": config_json,
            "hyperparameters": {
                "model": config.model.model_dump(mode="json"),
                "lora": config.lora.model_dump(mode="json"),
                "training": config.training.model_dump(mode="json"),
            },
        },
        infer_model=True,
    )
    return record

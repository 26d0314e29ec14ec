"""Step: compare the new model version with the base model and production, promote if better."""

from pathlib import Path
from typing import Annotated, Tuple

from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.config import ConfigPart, RunConfig
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import evaluation_fingerprint, prepared_cap
from llm_lora.model_loading import load_tokenizer
from llm_lora.promotion import PromotionRecord, RegisteredVersion, gate_scores, rescore, run_gate
from llm_lora.reports import render_run_report
from llm_lora.training import PRIMARY_METRIC_KEY
from llm_lora.worth_it import WorthItReport
from steps.support.hub_token import apply_hub_token
from steps.support.registry import ZenMLRegistry

logger = get_logger(__name__)


# Never from the cache: promotion acts on the registry (a stage change), for this run's own model
# version, against the production version of now. A cached decision would be an earlier version's.
@step(enable_cache=False)
def promote_model(
    prepared_data: Path,
    settings: str,
    base_metrics: dict,
    finetuned_metrics: dict,
    training_metrics: dict,
    loss_history: list,
    worth_it: WorthItReport,
    force_promote: bool = False,
) -> Tuple[
    Annotated[PromotionRecord, ArtifactConfig(name="promotion_decision")],
    Annotated[HTMLString, ArtifactConfig(name="run_report")],
]:
    """Move this run's model version to production when it beats the base model and production.

    Args:
        prepared_data: Output of prepare_data (test rows, for re-scoring production).
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).
            Its model, data and evaluation sections are recorded on the model version, so that batch
            inference and deployment format inputs exactly as training did.
        base_metrics: evaluate_base's metrics.
        finetuned_metrics: evaluate_finetuned's metrics.
        training_metrics: train_lora's metrics, recorded on the model version.
        loss_history: train_lora's logged losses; the validation curve goes into metadata.
        worth_it: worth_it_report's report: the best baseline, for `promotion.must_beat: best_baseline`.
        force_promote: Put this version into production whatever the numbers.

    Returns:
        The decision with its numbers and reason, and the run report (loss curves,
        base vs finetuned table, the decision) for the dashboard.
    """
    config = ConfigPart.from_json(settings)
    apply_hub_token(config.model)
    scores = gate_scores(config.promotion, base_metrics, finetuned_metrics, worth_it)
    model = get_step_context().model
    rows = load_prepared_split(prepared_data, "test")
    cap = prepared_cap(config.evaluation.max_new_tokens, load_tokenizer(config.model), prepared_data)
    registry = ZenMLRegistry(config.registry.model_name)

    def reevaluate(production: RegisteredVersion) -> dict:
        own = RunConfig.from_json(production.config_json) if production.config_json else config
        apply_hub_token(own.model)
        return rescore(own, registry.adapter_folder(production), config, rows, prepared_data)

    record = run_gate(
        registry, registry.version(model.id), scores.metric, scores.candidate, scores.base,
        fingerprint=evaluation_fingerprint(config, rows, cap.tokens), reevaluate=reevaluate,
        promotion=config.promotion, force=force_promote, baseline=scores.baseline,
        unmeasured=worth_it.unmeasured, max_cut_short=config.evaluation.max_cut_short,
    )
    logger.info("Promotion: stage %s. %s", record.new_stage, record.reason)
    log_metadata(metadata={
        "promotion": record.as_metadata(),
        "training": training_metrics,
        "validation_loss_by_step": {str(row["step"]): row["eval_loss"] for row in loss_history if "eval_loss" in row},
        # With training.eval_generation_rows: the promotion metric on the validation slice.
        "validation_metric_by_step": {str(row["step"]): row[PRIMARY_METRIC_KEY]
                                      for row in loss_history if PRIMARY_METRIC_KEY in row},
        # What inference needs to format inputs exactly as training did (model, data, evaluation).
        "run_config_json": config.serving_config().to_json(),
        "hyperparameters": {name: getattr(config, name).model_dump(mode="json") for name in ("model", "lora", "training")},
    }, infer_model=True)
    report = render_run_report(base_metrics, finetuned_metrics, record, training_metrics, loss_history,
                               f"{config.registry.model_name} version {model.number}", worth_it=worth_it)
    return record, HTMLString(report)

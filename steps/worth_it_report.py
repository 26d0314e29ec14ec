"""Step: was finetuning worth it? The finetuned model against the baselines, with costs and a verdict."""

from typing import Annotated, Optional, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.baselines import baseline_label
from llm_lora.config import ConfigPart
from llm_lora.promotion import resolve_metric
from llm_lora.worth_it import Evaluated, WorthItReport, assess, render_worth_it_html

logger = get_logger(__name__)


@step
def worth_it_report(
    settings: str,
    base_metrics: dict,
    base_predictions: pd.DataFrame,
    finetuned_metrics: dict,
    finetuned_predictions: pd.DataFrame,
    training_metrics: dict,
    few_shot_metrics: Optional[dict] = None,
    few_shot_predictions: Optional[pd.DataFrame] = None,
    reference_metrics: Optional[dict] = None,
    reference_predictions: Optional[pd.DataFrame] = None,
    recorded_metrics: Optional[dict] = None,
    recorded_predictions: Optional[pd.DataFrame] = None,
) -> Tuple[
    Annotated[WorthItReport, ArtifactConfig(name="worth_it")],
    Annotated[HTMLString, ArtifactConfig(name="worth_it_report")],
]:
    """Compare the finetuned model with the best baseline on the same rows; price the difference.

    Args:
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).
        base_metrics: evaluate_base's metrics (the base model, zero-shot).
        base_predictions: Its per-example records.
        finetuned_metrics: evaluate_finetuned's metrics.
        finetuned_predictions: Its per-example records.
        training_metrics: train_lora's metrics (runtime, processes, device).
        few_shot_metrics: evaluate_few_shot's metrics, when baselines.few_shot_k > 0.
        few_shot_predictions: Its per-example records.
        reference_metrics: evaluate_reference's metrics, when baselines.reference_model is set.
        reference_predictions: Its per-example records.
        recorded_metrics: evaluate_recorded's metrics by recorded baseline, when baselines.recorded lists any.
        recorded_predictions: Their per-example records (a `baseline` column names each one's).

    Returns:
        The report (per-model numbers, gain and interval, savings, costs, payback,
        verdict) and its HTML page for the dashboard.
    """
    config = ConfigPart.from_json(settings)
    settings = config.baselines
    baselines = [Evaluated("base", baseline_label("base"), base_metrics, base_predictions.to_dict("records"))]
    if few_shot_metrics is not None:
        label = baseline_label("few_shot", few_shot_k=settings.few_shot_k)
        baselines.append(Evaluated("few_shot", label, few_shot_metrics, few_shot_predictions.to_dict("records")))
    if reference_metrics is not None:
        label = baseline_label("reference", reference_name=settings.reference_model.name)
        baselines.append(Evaluated("reference", label, reference_metrics, reference_predictions.to_dict("records")))
    finetuned = Evaluated("finetuned", "finetuned", finetuned_metrics, finetuned_predictions.to_dict("records"))
    recorded, prices = [], {}
    for entry in settings.recorded if recorded_metrics else []:
        records = recorded_predictions[recorded_predictions["baseline"] == entry.name].drop(columns="baseline")
        recorded.append(Evaluated(f"recorded:{entry.name}", entry.name, recorded_metrics[entry.name],
                                  records.to_dict("records")))
        prices[f"recorded:{entry.name}"] = (entry.price_per_million_prompt_tokens,
                                            entry.price_per_million_completion_tokens)
    report = assess(
        resolve_metric(config.promotion.metric, finetuned_metrics),
        baselines,
        finetuned,
        training_metrics,
        price_per_gpu_hour=config.preflight.price_per_gpu_hour,
        price_per_million_prompt_tokens=config.cost.price_per_million_prompt_tokens,
        expected_requests=config.cost.expected_requests,
        min_gain=settings.min_gain,
        confidence=settings.confidence,
        bootstrap_samples=settings.bootstrap_samples,
        bootstrap_seed=settings.bootstrap_seed,
        max_cut_short=config.evaluation.max_cut_short,
        recorded=recorded,
        recorded_prices=prices,
        price_per_million_completion_tokens=config.cost.price_per_million_completion_tokens,
    )
    logger.info("Worth it? %s: %s", report.verdict, report.reason)
    # Metadata takes no None values; the artifact keeps them.
    log_metadata(metadata={"worth_it": report.as_metadata()}, infer_model=True)
    return report, HTMLString(render_worth_it_html(report))

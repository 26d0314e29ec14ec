"""Step: save base + adapter as one merged model and score it in transformers (`export.formats`)."""

from pathlib import Path
from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.adapter import LoraAdapter
from llm_lora.config import ConfigPart
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import prepared_cap
from llm_lora.export import (
    ExportReport, compare_merged_with_adapter, export_check, merge_adapter, pytorch_outputs, render_export_html,
    score_answers, score_merged, tolerance_for,
)
from llm_lora.gguf_export import ExportError
from llm_lora.model_loading import load_tokenizer
from llm_lora.promotion import resolve_metric
from materializers.model_folder_materializer import ModelFolderMaterializer
from steps.support.hub_token import apply_hub_token
from steps.support.scratch import scratch_folder

logger = get_logger(__name__)


def checked_rows(config: ConfigPart, prepared_data: Path) -> list[dict]:
    """The test rows every export answers: the evaluation's, or the first export.score_rows of them."""
    rows = load_prepared_split(prepared_data, "test")
    return rows[: config.export.score_rows] if config.export.score_rows else rows


@step(output_materializers={"merged_model": ModelFolderMaterializer})
def export_merged(
    adapter: LoraAdapter, prepared_data: Path, finetuned_metrics: dict, finetuned_predictions: pd.DataFrame,
    settings: str,
) -> Tuple[
    Annotated[Path, ArtifactConfig(name="merged_model")],
    Annotated[ExportReport, ArtifactConfig(name="export_report")],
    Annotated[HTMLString, ArtifactConfig(name="export_parity")],
]:
    """Merge the adapter into the unquantized base model; with `merged` in export.formats, score it.

    The merged model is also the GGUF converter's input, so it is made whenever any format is.

    Args:
        adapter: train_lora's adapter.
        prepared_data: Output of prepare_data (the test rows).
        finetuned_metrics: evaluate_finetuned's metrics (which metric "auto" means).
        finetuned_predictions: evaluate_finetuned's answers: what the export must reproduce.
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).

    Returns:
        A folder with the merged model's safetensors, config and tokenizer; the parity report and its page.

    Raises:
        ExportError: The merged model scores further from the PyTorch evaluation than export.tolerance
            (when no GGUF export follows, which reports every format first).
    """
    config = ConfigPart.from_json(settings)
    apply_hub_token(config.model)
    export = config.export
    target = merge_adapter(config.model, adapter.directory, scratch_folder("merged-model-"), export.dtype)
    cap = prepared_cap(config.evaluation.max_new_tokens, load_tokenizer(config.model), prepared_data)
    metadata = {"dtype": export.dtype}
    if export.verify_rows:
        rows = load_prepared_split(prepared_data, "test")[: export.verify_rows]
        check = compare_merged_with_adapter(config, adapter.directory, target, rows, cap.tokens)
        metadata.update(check)
        logger.info("Merged model: %d of %d test rows answered exactly as base + adapter",
                    check["matching_rows"], check["checked_rows"])
    rows = checked_rows(config, prepared_data)
    metric = resolve_metric(config.promotion.metric, finetuned_metrics)
    reference = pytorch_outputs(finetuned_predictions.to_dict("records"), rows)
    report = ExportReport(metric=metric, pytorch_score=score_answers(rows, reference, config.evaluation.metrics, metric),
                          rows=len(rows))
    if "merged" in export.formats:
        answers, speed = score_merged(config, target, rows, cap.tokens)
        check = export_check(
            format="merged", kind=export.dtype, engine="transformers", path=target, answers=answers,
            reference=reference, rows=rows, metric_names=config.evaluation.metrics, metric=metric,
            pytorch_score=report.pytorch_score, tolerance=tolerance_for(export, export.dtype), tokens_per_second=speed,
        )
        report = report.model_copy(update={"checks": [check]})
        logger.info("Merged %s in transformers: %s %.3f (PyTorch evaluation %.3f), %d/%d answers identical",
                    export.dtype, metric, check.score, report.pytorch_score, check.same_answers, len(rows))
    log_metadata(metadata={"merged_export": metadata, "export": report.as_metadata()}, infer_model=True)
    failures = report.failures()
    if failures and not export.gguf:
        raise ExportError(failures[0])
    return target, report, HTMLString(render_export_html(report))

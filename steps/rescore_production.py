"""Step: score the monitored version on the labelled rows it has not learnt from."""

from typing import Annotated, Tuple

from zenml import ArtifactConfig, get_step_context, step
from zenml.logger import get_logger

from llm_lora.answer_length import cut_short_problem
from llm_lora.config import NewRowsSettings
from llm_lora.evaluation import evaluate_model
from llm_lora.monitoring import (
    ScoreCheck, new_examples, promoted_score, read_labelled_rows, rows_fingerprint, source_inputs,
)
from steps.support.model_version import find_model_version, load_model_version

logger = get_logger(__name__)


# Never cached: labelled rows arrive in the same folder, and the version in a stage changes.
@step(enable_cache=False)
def rescore_production(new_rows: NewRowsSettings) -> Tuple[
    Annotated[ScoreCheck, ArtifactConfig(name="score_check")],
    Annotated[list, ArtifactConfig(name="labelled_rows")],
]:
    """Read the labelled rows like training rows; score the version on those new to it; compare.

    The version answers as it serves (its base model, adapter, prompt format and answer cap) and is
    scored with its training evaluation's metrics; the score it was promoted on is in its metadata.

    Args:
        new_rows: Where the labelled rows are (the YAML's new_rows section).

    Returns:
        The re-score against the promoted score, and every labelled row read (what a retrain adds).
    """
    model = get_step_context().model
    version, config = find_model_version(model.name, str(model.number), "monitor.version")
    labelled = read_labelled_rows(new_rows, config.data)
    new = new_examples(labelled.examples, source_inputs(config.data), config.data.system_prompt)
    scored = new[: new_rows.max_score_rows] if new_rows.max_score_rows else new
    metric, promoted, promoted_source = promoted_score(version.run_metadata)
    metrics, unmeasured = {}, None
    if scored and metric is not None:
        loaded = load_model_version(model.name, str(model.number), "monitor.version")
        loaded.model.eval()
        result = evaluate_model(loaded.model, loaded.tokenizer, [example.to_row() for example in scored],
                                config.data.system_prompt, config.evaluation, loaded.max_new_tokens,
                                plain_template=config.data.plain_template)
        metrics = result.metrics
        unmeasured = cut_short_problem([("production", metrics)], config.evaluation.max_cut_short)
    check = ScoreCheck(
        source=labelled.source, labelled_rows=len(labelled.examples), new_rows=len(new), scored_rows=len(scored),
        fingerprint=rows_fingerprint(new), metric=metric, promoted=promoted, promoted_source=promoted_source,
        score=float(metrics[metric]) if metric in metrics else None, metrics=metrics, unmeasured=unmeasured,
    )
    shown = "not scored" if check.score is None else f"{check.score:.4f}"
    logger.info("%d labelled rows, %d new; %s %s on %d of them (promoted on %s)", check.labelled_rows,
                check.new_rows, metric, shown, check.scored_rows, promoted)
    return check, [example.to_row() for example in labelled.examples]

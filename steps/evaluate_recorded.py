"""Step: score answers other models gave on the test rows, recorded in files (`baselines.recorded`)."""

from pathlib import Path
from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger

from llm_lora.config import ConfigPart
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import score_generations
from llm_lora.recorded import match_answers, read_recorded_answers, recorded_generations, usage_recorded

logger = get_logger(__name__)

# Token counts and latency a recorded file does not give are not reported (rather than reported as 0).
_UNRECORDED = {"usage": ("mean_prompt_tokens", "mean_new_tokens"), "latency": ("mean_latency_s",)}


@step
def evaluate_recorded(
    prepared_data: Path, settings: str, answers_digest: str,
) -> Tuple[
    Annotated[dict, ArtifactConfig(name="recorded_metrics")],
    Annotated[pd.DataFrame, ArtifactConfig(name="recorded_predictions")],
]:
    """Score each recorded-answers file on the test rows, with the evaluation's metrics.

    Args:
        prepared_data: Output of prepare_data (the test rows).
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).
        answers_digest: A hash of the files' contents, so that a changed file is scored again.

    Returns:
        Each recorded baseline's metrics by its name, and every answer's record (its `baseline` column
        names the file's entry).
    """
    config = ConfigPart.from_json(settings)
    rows = load_prepared_split(prepared_data, "test")
    metrics_by_name, records = {}, []
    for index, entry in enumerate(config.baselines.recorded):
        where = f"baselines.recorded[{index}].answers_file ({entry.answers_file})"
        answers = match_answers(read_recorded_answers(entry.answers_file, config.data), rows,
                                config.data.system_prompt, where)
        result = score_generations(rows, recorded_generations(answers), config.evaluation.metrics)
        metrics = dict(result.metrics)
        for what, keys in _UNRECORDED.items():
            if (what == "usage" and not usage_recorded(answers)) or (
                    what == "latency" and any(a.latency_s is None for a in answers)):
                for key in keys:
                    metrics.pop(key, None)
        metrics_by_name[entry.name] = metrics
        records += [{"baseline": entry.name, **record} for record in result.examples]
        logger.info("recorded %s: %s", entry.name, {k: round(v, 4) for k, v in metrics.items()})
    log_metadata(metadata={"recorded": metrics_by_name}, infer_model=True)
    return metrics_by_name, pd.DataFrame(records)

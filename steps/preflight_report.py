"""Step: the preflight report, before any training time is spent."""

import json
from pathlib import Path
from typing import Annotated, Tuple

import torch
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.config import ConfigPart
from llm_lora.preflight import (
    MeasuredThroughput, RunEstimate, check_settings, estimate_run, findings, render_html, render_text,
)

logger = get_logger(__name__)

# Where bench/ writes its measurements; the estimate uses their training speeds.
BENCH_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def bench_throughputs(folder: Path = BENCH_RESULTS) -> list[MeasuredThroughput]:
    """The training speeds in bench/'s results files, in file-name order.

    A file counts when it records one run of a model with its training tokens/s; a list of runs
    (a sweep) and an unreadable file do not.
    """
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        training = record.get("training") if isinstance(record, dict) else None
        if isinstance(training, dict) and "model" in record and "train_tokens_per_s" in training:
            device = str(training.get("device", "")).split(":")[0]  # "cuda:0" was measured on "cuda"
            found.append(MeasuredThroughput(str(record["model"]), device, float(training["train_tokens_per_s"]), path.name))
    return found


@step
def preflight_report(
    data_summary: dict, settings: str
) -> Tuple[
    Annotated[HTMLString, ArtifactConfig(name="preflight_report")],
    Annotated[RunEstimate, ArtifactConfig(name="run_estimate")],
]:
    """Summarize the prepared data, check the data-dependent settings and estimate the training run.

    Args:
        data_summary: prepare_data's summary (counts, drops, token statistics, answer lengths).
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).

    Returns:
        The report as HTML (rendered in the dashboard), and the estimate with each checked
        setting ("key: value: note") and every warning as one line.
    """
    config = ConfigPart.from_json(settings)
    device = "cuda" if torch.cuda.is_available() and not config.training.use_cpu else "cpu"
    estimate = estimate_run(data_summary, config, device, bench_throughputs())
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if device == "cuda" else None
    checks = check_settings(data_summary, config, estimate, gpu_gib)
    logger.info("\n%s", render_text(data_summary, estimate, checks))
    page = HTMLString(render_html(data_summary, estimate, checks))
    estimate = estimate.model_copy(update={
        "settings": [f"{check.key}: {check.value}: {check.note}" for check in checks],
        "findings": findings(data_summary, checks),
    })
    log_metadata(metadata={"preflight": estimate.as_metadata()}, infer_model=True)
    return page, estimate

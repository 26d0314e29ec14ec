"""Step: the preflight report, before any training time is spent."""

from typing import Annotated, Tuple

import torch
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.config import ConfigPart
from llm_lora.preflight import check_settings, estimate_run, findings, render_html, render_text

logger = get_logger(__name__)


@step
def preflight_report(
    data_summary: dict, settings: str
) -> Tuple[
    Annotated[HTMLString, ArtifactConfig(name="preflight_report")],
    Annotated[dict, ArtifactConfig(name="run_estimate")],
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
    estimate = estimate_run(data_summary, config, device)
    checks = check_settings(data_summary, config, estimate)
    logger.info("\n%s", render_text(data_summary, estimate, checks))
    page = HTMLString(render_html(data_summary, estimate, checks))
    estimate.update(
        settings=[f"{check.key}: {check.value}: {check.note}" for check in checks],
        findings=findings(data_summary, checks),
    )
    log_metadata(metadata={"preflight": estimate}, infer_model=True)
    return page, estimate

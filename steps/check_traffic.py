"""Step: read a window of the deployment's request log and summarize it, input-length drift included."""

from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, get_step_context, step
from zenml.logger import get_logger

from llm_lora.config import MonitorThresholds
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import references_are_json
from llm_lora.model_loading import load_tokenizer
from llm_lora.monitoring import TrafficCheck, prompt_token_counts, read_request_window
from llm_lora.monitoring import check_traffic as summarize_window
from steps.support.hub_token import apply_hub_token
from steps.support.model_version import find_model_version

logger = get_logger(__name__)


# Never cached: the log grows between runs while the step's parameters stay the same.
@step(enable_cache=False)
def check_traffic(
    request_log: Path, window_hours: float, window_end: str, thresholds: MonitorThresholds
) -> Annotated[TrafficCheck, ArtifactConfig(name="traffic_check")]:
    """Volume, refusals, latency percentiles, parse rate and input-length drift of the window's requests.

    The monitored version is the pipeline's model version. Its training rows' prompts (from its
    run's prepared data) are counted in its tokenizer, as the deployment counts a served prompt.

    Args:
        request_log: The deployment's request log (monitor.request_log).
        window_hours: The window's length.
        window_end: "now" or "newest" (the newest record).
        thresholds: The drift test's thresholds.

    Returns:
        The window's figures and the drift test.
    """
    model = get_step_context().model
    version, config = find_model_version(model.name, str(model.number), "monitor.version")
    window = read_request_window(request_log, window_hours, window_end)
    prepared = version.get_artifact("prepared_data")
    lengths, json_answers = [], None
    if prepared is not None:
        apply_hub_token(config.model)
        train = load_prepared_split(prepared.load(), "train")
        lengths = prompt_token_counts(load_tokenizer(config.model), [row["prompt_text"] for row in train])
        json_answers = references_are_json([row["completion"] for row in train]) if train else None
    traffic = summarize_window(window, lengths, thresholds, json_answers)
    drift = traffic.drift
    logger.info("%d requests from %s to %s; parse rate %s; input lengths: %s", traffic.requests, traffic.start,
                traffic.end, traffic.parse_rate, f"KS D {drift.statistic}, p {drift.p_value:.3g}"
                if drift.available else drift.note)
    return traffic

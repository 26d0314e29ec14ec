"""Step: decide what the monitor's checks call for, record it on the version, and render the report."""

from typing import Annotated, Optional, Tuple

from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.client import Client
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.config import MonitorThresholds
from llm_lora.monitoring import MonitorDecision, ScoreCheck, TrafficCheck, decide, render_monitor_report

logger = get_logger(__name__)


@step(enable_cache=False)
def decide_action(
    traffic: TrafficCheck, thresholds: MonitorThresholds, can_retrain: bool, score: Optional[ScoreCheck] = None,
) -> Tuple[
    Annotated[MonitorDecision, ArtifactConfig(name="monitor_decision")],
    Annotated[HTMLString, ArtifactConfig(name="monitor_report")],
]:
    """Nothing to do, an alert or a retrain, with the reasons; the summary goes on the monitored version.

    Args:
        traffic: check_traffic's output.
        thresholds: The YAML's thresholds.
        can_retrain: Whether retrain.finetune_config is set.
        score: rescore_production's output (None without new_rows).

    Returns:
        The decision and the report page (the decision, every check, the traffic figures, the re-score).
    """
    model = get_step_context().model
    version = Client().get_model_version(model.name, model.id)
    label = f"{model.name} {version.name} ({version.stage or 'no stage'})"
    previous = version.run_metadata.get("monitor_retrain")
    decision = decide(traffic, score, thresholds, label, can_retrain=can_retrain,
                      previous_retrain=previous if isinstance(previous, dict) else None)
    summary = {
        **decision.as_metadata(),
        "window": f"{traffic.start} to {traffic.end}", "requests": traffic.requests, "refused": traffic.refused,
        "latency_p95_s": traffic.latency_p95_s, "parse_rate": traffic.parse_rate,
        "drift_p_value": traffic.drift.p_value, "drift_statistic": traffic.drift.statistic,
        **({"new_rows": score.new_rows, "score": score.score, "promoted_score": score.promoted,
            "metric": score.metric} if score is not None else {}),
    }
    log_metadata(metadata={"monitor": {key: value for key, value in summary.items() if value is not None}},
                 infer_model=True)
    (logger.warning if decision.action == "alert" else logger.info)("Monitor: %s", decision.line())
    return decision, HTMLString(render_monitor_report(decision, traffic, score))

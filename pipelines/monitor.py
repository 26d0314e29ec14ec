"""The monitor pipeline: watch a served version, decide, and retrain when it slipped or new rows arrived."""

from zenml import pipeline

from llm_lora.config import MonitorConfig
from steps.check_traffic import check_traffic
from steps.decide_action import decide_action
from steps.rescore_production import rescore_production
from steps.retrain_model import retrain_model


@pipeline(enable_cache=False)
def monitor(monitor: dict, thresholds: dict, retrain: dict, new_rows: dict | None = None) -> None:
    """Read the deployment's requests and newly labelled rows; nothing to do, alert, or retrain.

    Runs with the monitored model version as its model (run.py sets it), so every artifact and the
    summary land on that version.

    Steps:
        1. check_traffic: a window of the request log: volume, refusals, latency percentiles, parse
           rate, answers cut by the cap, and input-length drift against the training rows (KS test).
        2. rescore_production (with new_rows): the version scored on labelled rows it has not learnt
           from, with its training evaluation's metrics, against the score it was promoted on.
        3. decide_action: nothing, alert or retrain, with the reasons; the monitor report (HTML) and
           the summary as the version's metadata.
        4. retrain_model (with new_rows and retrain.finetune_config): on "retrain", the finetune
           pipeline on its config's rows plus the new ones; its promotion gate decides as always.

    Args:
        monitor, thresholds, retrain, new_rows: The monitor config's sections (MonitorConfig), one each.
    """
    config = MonitorConfig.model_validate(
        {"monitor": monitor, "thresholds": thresholds, "retrain": retrain, "new_rows": new_rows})
    settings = config.monitor
    traffic = check_traffic(request_log=settings.request_log, window_hours=settings.window_hours,
                            window_end=settings.window_end, thresholds=config.thresholds)
    if config.new_rows is None:
        decide_action(traffic=traffic, thresholds=config.thresholds, can_retrain=False)
        return
    can_retrain = config.retrain.finetune_config is not None
    score, labelled_rows = rescore_production(new_rows=config.new_rows)
    decision, _ = decide_action(traffic=traffic, score=score, thresholds=config.thresholds, can_retrain=can_retrain)
    if can_retrain:
        retrain_model(decision=decision, labelled_rows=labelled_rows, retrain=config.retrain)

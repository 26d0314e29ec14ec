"""Step: on a retrain decision, run the finetune pipeline on its config's rows plus the new labelled rows."""

from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger

from llm_lora.config import RetrainSettings, RunConfig, load_config
from llm_lora.data_formats import Example
from llm_lora.monitoring import MonitorDecision, RetrainResult
from llm_lora.retraining import write_retrain_data
from steps.support.finetune_run import run_finetune

logger = get_logger(__name__)


# Never cached: a retrain starts a training run and changes the registry.
@step(enable_cache=False)
def retrain_model(
    decision: MonitorDecision, labelled_rows: list, retrain: RetrainSettings
) -> Annotated[RetrainResult, ArtifactConfig(name="retrain_result")]:
    """Start a finetune run when the decision is "retrain"; its promotion gate decides as for any run.

    Args:
        decision: decide_action's decision (anything but "retrain": nothing is started).
        labelled_rows: Every labelled row read (rescore_production).
        retrain: The finetune config and the folder the combined rows go to.

    Returns:
        Whether a run started, its name, the version it made, and the stage the gate gave it.
    """
    if decision.action != "retrain":
        return RetrainResult(started=False)
    finetune = load_config(retrain.finetune_config)
    if not isinstance(finetune, RunConfig):
        raise ValueError(f"retrain.finetune_config: {retrain.finetune_config} is not a finetune config")
    data = write_retrain_data(finetune, [Example.from_row(row) for row in labelled_rows], retrain.data_folder)
    logger.info("Retraining with %s: %d train rows, %d of them new", data.config_file, data.train_rows, data.new_rows)
    result = run_finetune(data.config_file).model_copy(
        update={"config": str(data.config_file), "train_rows": data.train_rows, "new_rows": data.new_rows})
    # On the monitored version: a later monitor run does not retrain on these same rows again.
    log_metadata(metadata={"monitor_retrain": {"fingerprint": decision.fingerprint, "run": result.run,
                                               "promotion": result.outcome()}}, infer_model=True)
    (logger.warning if result.error else logger.info)("Retrain: %s", result.line())
    return result

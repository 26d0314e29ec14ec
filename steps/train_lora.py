"""Step: train LoRA adapters, launched through Accelerate.

`accelerate launch` starts the step's function in fresh processes
(`training.num_processes`: one per GPU, or several on a CPU), so its parameters
must be simple values and Paths: the configuration travels as JSON and the
prepared data as a folder. Only the main process saves the adapter and returns
what becomes the step's artifacts.
"""

import functools
import os
from pathlib import Path
from typing import Annotated, Tuple

from zenml import ArtifactConfig, step
from zenml.io import fileio
from zenml.steps import BaseStep

from llm_lora.adapter import LoraAdapter
from llm_lora.checkpoints import CheckpointStore, checkpoint_key
from llm_lora.config import ConfigPart, TrainingConfig
from llm_lora.cpu import cpu_threads
from llm_lora.data_preparation import fingerprint, load_prepared_split
from llm_lora.evaluation import prepared_cap
from llm_lora.errors import explain_training_failure
from llm_lora.model_loading import load_tokenizer
from llm_lora.training import computed_on_main_process, is_main_process
from llm_lora.training import train_lora as run_training
from materializers.lora_adapter_materializer import LoraAdapterMaterializer
from steps.support.hub_token import apply_hub_token
from steps.support.scratch import scratch_folder


@step(output_materializers={"lora_adapter": LoraAdapterMaterializer})
def train_lora(
    prepared_data: Path,
    training_rows: str,
    settings: str,
) -> Tuple[
    Annotated[LoraAdapter, ArtifactConfig(name="lora_adapter")],
    Annotated[dict, ArtifactConfig(name="training_metrics")],
    Annotated[list, ArtifactConfig(name="loss_history")],
]:
    """Train LoRA adapters on the prepared train split.

    Args:
        prepared_data: Output of prepare_data (a str when launched by Accelerate).
        training_rows: prepare_data's hash of the train and validation splits. ZenML keys its cache on
            this string's content, so where the pipeline leaves `prepared_data` out of the key, a run
            whose test rows alone changed reuses the adapter.
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).

    Returns:
        The adapter, the training metrics (loss, runtime, tokens/s) and the
        logged loss by step.
    """
    config = ConfigPart.from_json(settings)
    apply_hub_token(config.model)
    # One scratch folder for all processes (see train_lora's output_dir): made by the launching step
    # process (launch_with_accelerate), or here when the function runs without a launcher.
    output_dir = Path(os.environ.get(SCRATCH_ENV) or computed_on_main_process(
        lambda: str(scratch_folder("lora-training-"))))
    train_rows = load_prepared_split(Path(prepared_data), "train")
    tokenizer, max_new_tokens = None, None
    if config.training.eval_generation_rows:  # validation answers are capped as the evaluation caps test answers
        tokenizer = load_tokenizer(config.model)
        max_new_tokens = prepared_cap(config.evaluation.max_new_tokens, tokenizer, Path(prepared_data)).tokens
    try:
        result = run_training(
            config,
            train_rows,
            load_prepared_split(Path(prepared_data), "validation"),
            output_dir,
            tokenizer=tokenizer,
            checkpoints=checkpoint_store(config, train_rows),
            max_new_tokens=max_new_tokens,
        )
    except Exception as exc:
        report_training_failure(exc, config)
        raise
    adapter = LoraAdapter(directory=result.adapter_dir)
    if is_main_process():
        adapter.write_facts(config.model.name, result.metrics["trainable_parameters"])
    return adapter, result.metrics, result.loss_history


ERROR_FILE_ENV = "LLM_LORA_ERROR_FILE"
DEBUG_ENV = "LLM_LORA_DEBUG"
SCRATCH_ENV = "LLM_LORA_TRAINING_DIR"


def hand_off_training_errors(folder: Path, debug: bool) -> Path:
    """Have the Accelerate-launched training write why it failed into a file in `folder`; returns the file.

    Accelerate reports only that the launched process failed; this file carries the reason back (one line,
    see `report_training_failure`). With `debug`, the launched process also prints its traceback.
    """
    error_file = folder / "training_error.txt"
    os.environ[ERROR_FILE_ENV] = str(error_file)
    if debug:
        os.environ[DEBUG_ENV] = "1"
    return error_file


def report_training_failure(error: Exception, config: ConfigPart) -> None:
    """Tell run.py, across the Accelerate process boundary, why training failed, in one line.

    `hand_off_training_errors` names the file; the launched process writes the reason
    there and, unless debugging, exits without a traceback (Accelerate then reports
    the failure to the step). Without the file named, nothing changes.
    """
    error_file = os.environ.get(ERROR_FILE_ENV)
    if not error_file:
        return
    Path(error_file).write_text(explain_training_failure(error, config))
    if os.environ.get(DEBUG_ENV) != "1":
        raise SystemExit(1)


def checkpoint_store(config: ConfigPart, train_rows: list[dict]) -> CheckpointStore | None:
    """The durable checkpoint folder of this model, these settings and these training rows.

    Under `training.checkpoint_dir` when set, else inside the active stack's
    artifact store (so a cloud stack keeps them in its bucket). ZenML's file
    layer reads and writes any artifact-store URI.
    """
    training = config.training
    if not training.checkpoint_steps:
        return None
    root = training.checkpoint_dir
    if root is None:
        from zenml.client import Client

        root = f"{Client().active_stack.artifact_store.path.rstrip('/')}/llm_lora_checkpoints"
    key = checkpoint_key(
        [
            config.model.model_dump(mode="json"),
            config.lora.model_dump(mode="json"),
            training.model_dump(mode="json", exclude={"checkpoint_dir", "resume", "logging_steps"}),
            config.data.packing,
        ],
        fingerprint(train_rows),
    )
    return CheckpointStore(f"{root.rstrip('/')}/{config.registry.model_name}/{key}", fs=fileio)


def launch_with_accelerate(training: TrainingConfig) -> BaseStep:
    """Make `train_lora` run under `accelerate launch` with the YAML's process count.

    ZenML's decorator is applied here rather than at import because the
    process count and precision come from the run's YAML. The step object is
    changed in place so the pipeline definition stays a plain function.

    Args:
        training: The YAML's `training` section.

    Returns:
        The (same) step object, now launched by Accelerate.
    """
    from zenml.integrations.huggingface.steps import run_with_accelerate

    if hasattr(train_lora, "unwrapped_entrypoint"):  # undo an earlier launch set-up
        train_lora.entrypoint = train_lora.unwrapped_entrypoint
    launch = {
        "num_processes": training.num_processes,
        "num_machines": 1,
        # "auto" is decided on the machine that trains (llm_lora.training.resolve_precision).
        "mixed_precision": {"bf16": "bf16", "fp16": "fp16", "fp32": "no", "auto": "no"}[training.precision],
        "dynamo_backend": "no",
        # CPU training: split this process's threads between the processes (OMP_NUM_THREADS, or the CPUs it
        # may run on: see llm_lora.cpu), where Accelerate would split every core of the host.
        "num_cpu_threads_per_process": max(1, cpu_threads() // training.num_processes),
    }
    if training.num_processes > 1:
        # Several processes start through torchrun, which Accelerate calls `multi_gpu` on a CPU too.
        # Its `cpu` flag picks the single-process launcher (one process, whatever num_processes says)
        # and is refused together with `multi_gpu`; the CPU is then chosen by each process (below).
        launch["multi_gpu"] = True
    elif training.use_cpu:
        launch["cpu"] = True
    launched = run_with_accelerate(train_lora, **launch)
    on_cpu = training.use_cpu and training.num_processes > 1
    launched.entrypoint = _with_launch_environment(launched.entrypoint, cpu=on_cpu)
    return launched


def _with_launch_environment(entrypoint, cpu: bool):
    """Run the launcher in the step's process with what every launched process inherits.

    - LLM_LORA_TRAINING_DIR: one scratch folder for all processes, made here, in the step's
      own process, so that it is removed once ZenML has stored the step's outputs.
    - ACCELERATE_USE_CPU (`cpu`): ZenML's launch script builds an Accelerator before the step's
      code runs; without the variable, on a machine with a GPU, that one opens an NCCL process
      group which CPU training then cannot use ("No backend type associated with device type cpu",
      seen on an H100).
    """
    from accelerate.utils import patch_environment

    @functools.wraps(entrypoint)
    def launch(*args, **kwargs):
        variables = {SCRATCH_ENV: str(scratch_folder("lora-training-"))}
        if cpu:
            variables["ACCELERATE_USE_CPU"] = "true"
        with patch_environment(**variables):
            return entrypoint(*args, **kwargs)

    return launch

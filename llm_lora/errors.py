"""One-line explanations for failures users can fix: hub access, memory, the machine."""

from __future__ import annotations

import os
import shutil

from llm_lora.config import ConfigPart, RunConfig


class MachineError(RuntimeError):
    """The config asks for hardware this machine does not have; the message names the option."""


def check_machine(config: RunConfig | ConfigPart, cuda_devices: int | None = None) -> None:
    """Refuse settings this machine cannot run, before anything starts.

    Args:
        config: The run configuration.
        cuda_devices: CUDA devices present (None: ask torch).

    Raises:
        MachineError: QLoRA or fp16 without a GPU, more processes than GPUs, or compile without a C compiler.
    """
    training = config.training
    devices = cuda_devices
    if devices is None:
        import torch

        devices = torch.cuda.device_count()
    if training.method.startswith("qlora") and devices == 0:
        raise MachineError(
            f"training.method: {training.method} needs a CUDA GPU and this machine has none;"
            " use method: lora with use_cpu: true"
        )
    if training.precision == "fp16" and (devices == 0 or training.use_cpu):
        raise MachineError("training.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    if training.compile:
        on_cpu = devices == 0 or training.use_cpu
        # Inductor builds CPU kernels with a C++ compiler; Triton builds its GPU launchers with a C compiler.
        variable, defaults = ("CXX", ["g++", "clang++"]) if on_cpu else ("CC", ["cc", "gcc", "clang"])
        wanted = [os.environ[variable]] if os.environ.get(variable) else defaults
        if not any(shutil.which(name) for name in wanted):
            raise MachineError(
                f"training.compile: torch.compile builds its {'CPU' if on_cpu else 'GPU'} kernels with"
                f" {' or '.join(wanted)} and none is on PATH; install one or set compile: false"
            )
    if training.num_processes > 1 and not training.use_cpu and training.num_processes > devices:
        raise MachineError(
            f"training.num_processes: {training.num_processes} processes need {training.num_processes} GPUs;"
            f" this machine has {devices}"
        )


def explain_hub_error(name: str, error: BaseException) -> str | None:
    """A one-line, actionable message for a failed hub download, or None when it is something else.

    Args:
        name: The model id as the YAML gives it.
        error: What transformers or huggingface_hub raised (its causes are searched too).
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    seen = error
    while seen is not None:
        if isinstance(seen, GatedRepoError):
            return (
                f"model.name: {name!r} is a gated model: accept its licence at https://huggingface.co/{name}"
                " and export HF_TOKEN=<a token of that account> (or store it as a ZenML secret)"
            )
        if isinstance(seen, RepositoryNotFoundError):
            return f"model.name: {name!r} is not a model on the hub (a private one needs HF_TOKEN)"
        if isinstance(seen, RevisionNotFoundError):
            return f"model.revision: not a branch, tag or commit of {name!r}"
        if isinstance(seen, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return (
                f"model.name: {name!r} is not in the local Hugging Face cache and the hub cannot be reached"
                " (offline or HF_HUB_OFFLINE=1); download it once with network, or point model.name at a local copy"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def explain_training_failure(error: BaseException, config: RunConfig | ConfigPart) -> str:
    """One line for a training failure; out-of-memory gets the settings to change.

    Args:
        error: What training raised.
        config: The run configuration.
    """
    import torch

    training = config.training
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        hints = [f"lower training.batch_size ({training.batch_size}) and raise gradient_accumulation_steps"]
        if not training.gradient_checkpointing:
            hints.append("set training.gradient_checkpointing: true")
        elif training.gradient_checkpointing_every_n_layers > 1:
            hints.append(f"lower training.gradient_checkpointing_every_n_layers"
                         f" ({training.gradient_checkpointing_every_n_layers}) to 1")
        elif not training.offload_activations:
            hints.append("set training.offload_activations: true")
        if not training.chunked_loss:
            hints.append("set training.chunked_loss: true")
        if training.method == "lora":
            hints.append("use training.method: qlora-4bit")
        limit = config.data.max_seq_length
        hints.append(f"lower data.max_seq_length ({limit})" if limit != "auto" else
                     "set data.max_seq_length (auto keeps every row that fits the model) below the longest rows")
        return "out of memory while training: " + "; or ".join(hints)
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__

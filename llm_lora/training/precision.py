"""The number format training runs in on this machine, and the CPU facts that decide it."""

from __future__ import annotations

import logging

import torch

from llm_lora.config import TrainingConfig

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def cpu_threads() -> int:
    """Threads PyTorch uses on the CPU (for logging the hardware a figure came from)."""
    return torch.get_num_threads()


def resolve_precision(training: TrainingConfig) -> str:
    """The precision training runs in on this machine: `training.precision`, with "auto" decided here.

    "auto" picks bf16 on GPUs that support it and on CPUs with native bf16, fp16 on older
    GPUs, and fp32 on other CPUs. An explicit choice is kept; bf16 on a CPU without native
    support is kept too, with a warning, because it is many times slower than fp32 there.
    """
    on_gpu = torch.cuda.is_available() and not training.use_cpu
    if training.precision == "auto":
        if on_gpu:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if training.precision == "bf16" and not on_gpu and not cpu_has_native_bf16():
        logger.warning(
            "training.precision: bf16 on a CPU without AVX512-BF16/AMX is emulated and many times slower"
            " than fp32 here; use precision: auto (or fp32)"
        )
    return training.precision

"""LoRA training: the YAML translated into PEFT and transformers objects, and one run of it.

The loop itself is transformers' Trainer. Under `accelerate launch` each
process holds its own copy of the model on its own device; the Trainer only
saves from the main process.

- `loop`: `train_lora`, one run from rows to a saved adapter and its metrics.
- `lora`: LoRA adapters attached to the base model.
- `trainer`: the completion-loss Trainer, its batches and its arguments.
- `chunked_loss`: the loss projected onto the vocabulary a chunk of positions at a time.
- `callbacks`: generated validation answers, loss records, early stopping.
- `checkpointing`: checkpoints published to a durable store and resumed from.
- `precision`: the number format training runs in, and the CPU facts behind it.
- `compilation`: torch.compile, layer by layer.
- `processes`: the main process, and what all processes must agree on.

Loading a trained adapter for generation lives in `llm_lora.adapter`.
"""

from llm_lora.adapter import load_adapter
from llm_lora.training.callbacks import PRIMARY_METRIC_KEY, GenerationMetrics, early_stopping
from llm_lora.training.checkpointing import resume_point
from llm_lora.training.compilation import compile_layers
from llm_lora.training.lora import attach_lora, build_lora_config
from llm_lora.training.loop import TrainingResult, train_lora
from llm_lora.training.precision import cpu_has_native_bf16, cpu_threads, resolve_precision
from llm_lora.training.processes import computed_on_main_process, is_main_process
from llm_lora.training.trainer import (
    TRAINING_COLUMNS,
    CompletionLossTrainer,
    _as_dataset,
    accepts_logits_to_keep,
    build_collator,
    build_training_arguments,
    row_tokens,
)

__all__ = [
    "PRIMARY_METRIC_KEY",
    "TRAINING_COLUMNS",
    "CompletionLossTrainer",
    "GenerationMetrics",
    "TrainingResult",
    "_as_dataset",
    "accepts_logits_to_keep",
    "attach_lora",
    "build_collator",
    "build_lora_config",
    "build_training_arguments",
    "compile_layers",
    "computed_on_main_process",
    "cpu_has_native_bf16",
    "cpu_threads",
    "early_stopping",
    "is_main_process",
    "load_adapter",
    "resolve_precision",
    "resume_point",
    "row_tokens",
    "train_lora",
]

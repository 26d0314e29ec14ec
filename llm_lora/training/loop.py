"""One training run, start to finish: load, attach adapters, train with the Trainer, measure, save."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback, set_seed

from llm_lora import attention
from llm_lora.checkpoints import CheckpointStore
from llm_lora.config import ConfigPart, RunConfig
from llm_lora.evaluation import generation_cap
from llm_lora.memory_estimate import GIB, estimate_for_rows, fit_problem
from llm_lora.model_loading import load_model, load_tokenizer
from llm_lora.training.callbacks import PRIMARY_METRIC_KEY, GenerationMetrics, _LossHistory, early_stopping
from llm_lora.training.checkpointing import _PublishCheckpoints, _step_of, resume_point
from llm_lora.training.compilation import compile_layers
from llm_lora.training.lora import attach_lora
from llm_lora.training.processes import computed_on_main_process
from llm_lora.training.trainer import CompletionLossTrainer, _as_dataset, build_collator, build_training_arguments

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a finished training run produced.

    Attributes:
        adapter_dir: Adapter weights, adapter config and tokenizer (main process only).
        metrics: Train loss, runtime, tokens/s and friends.
        loss_history: Logged losses by step.
    """

    adapter_dir: Path
    metrics: dict
    loss_history: list[dict]


def refuse_what_cannot_fit(config: RunConfig | ConfigPart, train_rows: list[dict]) -> None:
    """Before anything loads: raise, in one line naming the keys to change, when the memory estimate says
    the run cannot fit this process's GPU (see llm_lora.memory_estimate). Nothing to check on a CPU."""
    if config.training.use_cpu or not torch.cuda.is_available():
        return
    estimate = estimate_for_rows(config, train_rows)
    if estimate is None:
        return
    capacity = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    logger.info("Memory estimate: %s; the GPU has %.1f GiB", estimate.summary(), capacity)
    problem = fit_problem(estimate, config, capacity)
    if problem:
        raise MemoryError(problem)


def train_lora(
    config: RunConfig | ConfigPart,
    train_rows: list[dict],
    validation_rows: list[dict],
    output_dir: Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    checkpoints: CheckpointStore | None = None,
    max_new_tokens: int | None = None,
) -> TrainingResult:
    """Train LoRA adapters on tokenized rows and save them.

    Args:
        config: The whole run configuration.
        train_rows: Rows with input_ids, attention_mask and labels (see tokenization).
        validation_rows: Same shape; validation loss is computed at the end.
        output_dir: The adapter and tokenizer are saved to `output_dir / "adapter"` (main process);
            the Trainer's checkpoints go to `output_dir / "trainer"`. With several processes it must
            be one folder for all of them, so that every rank's checkpoint state lands in the same
            checkpoint and keep_best and resuming restore all ranks alike.
        tokenizer: Reuse an already-loaded tokenizer.
        checkpoints: Durable store for resumable checkpoints (with training.checkpoint_steps):
            published every checkpoint_steps, resumed from when it holds one, cleared at the end.
        max_new_tokens: Cap of the answers generated on validation rows (training.eval_generation_rows),
            as the evaluation resolved it; None: evaluation.max_new_tokens, auto from these rows.

    Returns:
        The adapter directory and the training metrics.
    """
    set_seed(config.training.seed)
    refuse_what_cannot_fit(config, train_rows)
    tokenizer = tokenizer or load_tokenizer(config.model)
    model = load_model(config.model, training=config.training)
    # No KV cache in training: it is useless there, and its presence turns off the
    # block-diagonal mask that keeps packed rows from attending to each other.
    model.config.use_cache = False
    model = attach_lora(model, config)
    if config.training.compile:
        compiled = compile_layers(model)
        logger.info("Compiling %d decoder layers (once, at the first steps)", compiled)
    trainable, total = model.get_nb_trainable_parameters()

    train_dataset = _as_dataset(train_rows)
    eval_dataset = _as_dataset(validation_rows) if validation_rows else None
    history = _LossHistory()
    callbacks: list[TrainerCallback] = [history]
    generation_metrics = None
    if config.training.eval_generation_rows and validation_rows:
        if max_new_tokens is None:
            completions = [row["completion"] for row in (*train_rows, *validation_rows)]
            max_new_tokens = generation_cap(config.evaluation.max_new_tokens, tokenizer, completions).tokens
        generation_metrics = GenerationMetrics(
            validation_rows[: config.training.eval_generation_rows], tokenizer, config, max_new_tokens
        )
        callbacks.append(generation_metrics)
    publishing = checkpoints is not None and config.training.checkpoint_steps
    if publishing:
        callbacks.append(_PublishCheckpoints(checkpoints, config.training.checkpoint_steps))
    trainer_dir = output_dir / "trainer"
    resume_from = None
    if publishing and config.training.resume:
        # Fetched once, into the folder all processes share (the step gives them one).
        resume_from = computed_on_main_process(lambda: resume_point(checkpoints, trainer_dir))
    if resume_from is not None:
        logger.info("Resuming from %s (step %s)", checkpoints.root, resume_from.name.rsplit("-", 1)[1])
    trainer = CompletionLossTrainer(
        model=model,
        args=build_training_arguments(config.training, trainer_dir),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=build_collator(tokenizer, config.data.packing, boundaries=attention.in_use(model)),
        callbacks=[*callbacks, *early_stopping(config.training)],
        chunked_loss=config.training.chunked_loss,
    )
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started
    tokens = trainer.tokens_trained()  # this run's batches on all processes, as `seconds` is this run's time

    steps = train_output.global_step
    resumed_step = _step_of(str(resume_from)) if resume_from else 0
    examples_seen = (steps - resumed_step) * config.training.batch_size * config.training.gradient_accumulation_steps
    examples_seen *= trainer.accelerator.num_processes
    metrics = {
        "train_loss": float(train_output.training_loss),
        "train_runtime_s": round(seconds, 2),
        "optimizer_steps": int(steps),
        "examples_seen": int(examples_seen),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / seconds, 1),
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "device": str(trainer.args.device),
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
        "num_processes": int(trainer.accelerator.num_processes),
        "resumed_from_step": int(resumed_step),
    }
    if eval_dataset is not None:
        # After load_best_model_at_end these are the kept adapter's numbers: not a point on the curve.
        history.active = False
        final = trainer.evaluate()
        metrics["validation_loss"] = float(final["eval_loss"])
        if PRIMARY_METRIC_KEY in final:
            metrics["validation_primary_metric"] = float(final[PRIMARY_METRIC_KEY])
    if trainer.state.best_model_checkpoint:
        metrics["best_step"] = _step_of(trainer.state.best_model_checkpoint)
    metrics["stopped_early"] = bool(steps < trainer.state.max_steps)

    adapter_dir = output_dir / "adapter"
    if trainer.accelerator.is_main_process:
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        (adapter_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
        if publishing:
            checkpoints.clear()  # finished: the adapter is saved, nothing is left to resume
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:  # once, not once per process
        logger.info("Trained %d steps in %.0f s, %.0f tokens/s", steps, seconds, metrics["train_tokens_per_s"])
    if generation_metrics is not None:
        # The final evaluation above repeated the best one; the history keeps the interval ones.
        scored = {record["step"]: record for record in generation_metrics.records[:-1]}
        for record in history.records:
            if "eval_loss" in record and record["step"] in scored:
                record.update({k: v for k, v in scored[record["step"]].items() if k != "step"})
    return TrainingResult(adapter_dir=adapter_dir, metrics=metrics, loss_history=history.records)

"""LoRA training set-up: translate the YAML into PEFT and transformers objects.

The loop itself is transformers' Trainer. Under `accelerate launch` each
process holds its own copy of the model on its own device; the Trainer only
saves from the main process.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from llm_lora import attention
from llm_lora.answer_length import answer_tokens
from llm_lora.checkpoints import CheckpointStore
from llm_lora.config import GENERATION_FACTS, ConfigPart, LoraSettings, RunConfig, TrainingConfig
from llm_lora.evaluation import generation_cap, score_generations
from llm_lora.generation import generate
from llm_lora.model_loading import load_model, load_tokenizer
from llm_lora.promotion import resolve_metric
from llm_lora.tokenization import IGNORE_INDEX

logger = logging.getLogger(__name__)

TRAINING_COLUMNS = ("input_ids", "attention_mask", "labels")


def build_lora_config(lora: LoraSettings) -> LoraConfig:
    """PEFT's LoraConfig from the YAML's `lora` section."""
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


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


def build_training_arguments(training: TrainingConfig, output_dir: Path) -> TrainingArguments:
    """transformers' TrainingArguments from the YAML's `training` section.

    Args:
        training: The training section.
        output_dir: Where the Trainer writes its checkpoints (the adapter is saved separately).
    """
    evaluate_every = training.eval_steps
    keep_best = bool(evaluate_every) and training.keep_best
    # The criterion early stopping and keep_best share.
    by_metric = training.best_by == "primary_metric"
    best_metric = (PRIMARY_METRIC_KEY if by_metric else "eval_loss") if evaluate_every else None
    precision = resolve_precision(training)
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=training.learning_rate,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a share of all steps
        lr_scheduler_type=training.lr_scheduler,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=training.gradient_checkpointing,
        activation_checkpointing_kwargs=(
            {"every_n_layers": training.gradient_checkpointing_every_n_layers}
            if training.gradient_checkpointing else None
        ),
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        logging_steps=training.logging_steps,
        eval_strategy="steps" if evaluate_every else "no",
        eval_steps=evaluate_every,
        # Checkpoints (adapter weights only, a few MB) exist to return to the best evaluation.
        save_strategy="steps" if keep_best or training.checkpoint_steps else "no",
        # keep_best needs a checkpoint at every evaluation; resumable ones are published every checkpoint_steps.
        save_steps=evaluate_every if keep_best else training.checkpoint_steps,
        save_total_limit=2 if keep_best or training.checkpoint_steps else None,
        load_best_model_at_end=keep_best,
        metric_for_best_model=best_metric,
        greater_is_better=by_metric if best_metric else None,
        report_to="none",
        disable_tqdm=False,  # the progress bar is the user's clock
        seed=training.seed,
        data_seed=training.seed,
        use_cpu=training.use_cpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # Every adapter weight takes part in every step: no extra graph search per step across processes.
        ddp_find_unused_parameters=False,
    )


def early_stopping(training: TrainingConfig) -> list[TrainerCallback]:
    """Stop after `early_stopping_patience` evaluations without a lower validation loss."""
    if not training.early_stopping_patience:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience)]


def build_collator(tokenizer: PreTrainedTokenizerBase, packing: bool, boundaries: bool = False):
    """Batch rows padded to the longest, or packed into one padding-free sequence.

    Packed rows restart their position ids; transformers turns that into a
    block-diagonal mask (SDPA, eager and flash attention), so no row attends to
    another and no compute goes to padding. With `boundaries`, the batch also
    carries the rows' cumulative lengths, which varlen attention uses instead of a mask.
    """
    if packing:
        return DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=boundaries
        )
    # Pads labels with -100 by position, so a pad token equal to EOS never hides the trained EOS.
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)


class CompletionLossTrainer(Trainer):
    """transformers' Trainer that projects onto the vocabulary only where a token is trained.

    With the loss on the completion, most positions (the prompt, the padding)
    carry no label, yet a causal LM computes vocabulary logits at every position:
    a (tokens x vocabulary) matrix product and a softmax over it, about a fifth
    of a small model's training compute and a large share of an 8B model's
    activation memory (a 128k vocabulary in fp32). Here the model receives a
    boolean `logits_to_keep` mask of the positions whose next token is labelled,
    and the loss is the same token-summed cross-entropy the model would compute,
    normalized the same way (by the batch's labelled-token count, across
    gradient accumulation and processes as the Trainer arranges). Models whose
    forward has no `logits_to_keep` take the Trainer's own path.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        labels = inputs.get("labels")
        if labels is None or not accepts_logits_to_keep(self.accelerator.unwrap_model(model)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        next_labels = labels[:, 1:]
        trained = next_labels != IGNORE_INDEX
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = trained
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"}, logits_to_keep=keep)
        # Row-major, as the mask flattens the kept positions: logits[i] predicts targets[i].
        targets = next_labels[trained]
        loss = F.cross_entropy(outputs.logits.float(), targets, reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            # num_items_in_batch counts every process's tokens: undo the averaging of gradients across them.
            # (tensor-parallel ranks share a batch, as in Trainer.compute_loss)
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):  # noqa: D102
        # Evaluation (validation loss, generated validation answers) runs the layers as written even
        # under training.compile: its no-grad forward passes and cached generation would each compile
        # graphs of their own, a long pause per shape for a few batches.
        with torch.compiler.set_stance("force_eager"):
            return super().evaluate(*args, **kwargs)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether a (possibly PEFT-wrapped) causal LM's forward takes `logits_to_keep`."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


PRIMARY_METRIC_KEY = "eval_primary_metric"


class GenerationMetrics(TrainerCallback):
    """At every evaluation, greedy answers on a validation slice, scored like the test set.

    The scores join the evaluation's metrics as `eval_<name>`, and the promotion
    metric also as `eval_primary_metric`, so keep_best and early stopping can use it.
    Must come before EarlyStoppingCallback in the callback list.
    """

    def __init__(
        self, rows: list[dict], tokenizer: PreTrainedTokenizerBase, config: RunConfig | ConfigPart, max_new_tokens: int
    ) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.expected_tokens = [answer_tokens(tokenizer, row["completion"]) for row in rows]
        self.records: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):  # noqa: D102
        if metrics is None or model is None:
            return
        was_training, use_cache = model.training, model.config.use_cache
        packed_attention = attention.in_use(model)
        model.eval()
        model.config.use_cache = True  # generation only; training keeps it off
        if packed_attention:  # generation has no packed rows
            model.set_attn_implementation("sdpa")
        try:
            generations = generate(
                model, self.tokenizer, [row["prompt_text"] for row in self.rows],
                batch_size=self.config.evaluation.batch_size, max_new_tokens=self.max_new_tokens,
            )
        finally:
            model.config.use_cache = use_cache
            model.train(was_training)
            if packed_attention:
                model.set_attn_implementation(attention.NAME)
        scores = score_generations(
            self.rows, generations, self.config.evaluation.metrics, self.expected_tokens, self.max_new_tokens
        ).metrics
        primary = resolve_metric(self.config.promotion.metric, scores)
        found = {f"eval_{name}": value for name, value in scores.items() if name not in GENERATION_FACTS}
        found[PRIMARY_METRIC_KEY] = scores[primary]
        metrics.update(found)
        self.records.append({"step": state.global_step, "metric": primary, **found})
        logger.info("Step %d: %s %.4f on %d validation rows", state.global_step, primary, scores[primary], len(self.rows))


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rstrip("/").rsplit("-", 1)[1]) if checkpoint else None


class _PublishCheckpoints(TrainerCallback):
    """Publish every `every`-th saved checkpoint to the durable store (main process only)."""

    def __init__(self, store: CheckpointStore, every: int) -> None:
        self.store = store
        self.every = every

    def on_save(self, args, state, control, **kwargs):  # noqa: D102
        if not state.is_world_process_zero or state.global_step % self.every:
            return
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        best = _step_of(state.best_model_checkpoint)
        self.store.publish(local, keep={best} if best is not None else set())
        logger.info("Checkpoint at step %d saved to %s", state.global_step, self.store.root)


def is_main_process() -> bool:
    """Whether this is the main Accelerate process (torchrun's rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def computed_on_main_process(compute):
    """compute() on the main Accelerate process only; every process receives its (picklable) result.

    For what all processes must agree on and only one may do: making a scratch
    folder, fetching checkpoints into it. A single process just computes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return compute()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    value = [compute() if state.is_main_process else None]
    broadcast_object_list(value)
    return value[0]


def resume_point(store: CheckpointStore, trainer_dir: Path) -> Path | None:
    """Fetch the newest complete checkpoint (and the best one it refers to) into the Trainer's folder.

    Returns:
        The local checkpoint folder to resume from, or None when the store has none.
    """
    step = store.latest()
    if step is None:
        return None
    local = store.fetch(step, trainer_dir)
    state_path = local / "trainer_state.json"
    state = json.loads(state_path.read_text())
    best = _step_of(state.get("best_model_checkpoint"))
    if best is not None and best != step and best in store.steps():
        store.fetch(best, trainer_dir)
    # The state names the best checkpoint by the crashed run's scratch path; point it here.
    state["best_model_checkpoint"] = str(trainer_dir / f"checkpoint-{best}") if best in store.steps() else None
    state_path.write_text(json.dumps(state, indent=2))
    return local


class _LossHistory(TrainerCallback):
    """Keeps every logged loss, for curves and metadata."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.active = True

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if self.active and logs and ("loss" in logs or "eval_loss" in logs):
            self.records.append({"step": state.global_step, **{k: v for k, v in logs.items() if "loss" in k}})


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


def _as_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({name: [row[name] for row in rows] for name in TRAINING_COLUMNS})


def attach_lora(model: PreTrainedModel, config: RunConfig | ConfigPart) -> PeftModel:
    """Wrap the base model with fresh LoRA adapters; the base weights stay frozen and as loaded.

    PEFT's prepare_model_for_kbit_training is not used for QLoRA: besides freezing,
    it copies every weight bitsandbytes left in 16 bits (embeddings, lm_head, norms)
    to float32 (4 GB more for Llama-3.1-8B), which also makes the residual stream
    float32 between layers, for weights that training never changes. PEFT creates
    the adapters themselves in float32 either way.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.training.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    try:
        peft_model = get_peft_model(model, build_lora_config(config.lora))
    except ValueError as exc:
        if "not found in the base model" not in str(exc) and "Target modules" not in str(exc):
            raise
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ValueError(
            f"lora.target_modules: {config.lora.target_modules} not found in {config.model.name};"
            f" its linear layers are {', '.join(linear)} (or use all-linear)"
        ) from None
    if resolve_precision(config.training) in ("bf16", "fp16"):
        # Under autocast the adapter's products run in 16 bits anyway; PEFT would first copy
        # every adapted layer's input to float32 (the adapter's dtype), only for autocast to
        # copy it back to 16 bits: two passes over each input, per adapted layer and step.
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                module.cast_input_dtype_enabled = False
    return peft_model


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place (regional compilation); returns how many.

    The layers share their code, so the same compiled graphs (dynamic in the sequence length, which
    packing changes every step; varlen attention runs between them, uncompiled) serve them all:
    the compile is paid once, not once per layer.
    Compiled layers still take part in gradient checkpointing. Layers are the model's
    `_no_split_modules` classes (LlamaDecoderLayer, PhiDecoderLayer, ...).
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in base.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"training.compile: no decoder layers found in {type(base).__name__}; set it to false")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


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
    )
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started

    steps = train_output.global_step
    resumed_step = _step_of(str(resume_from)) if resume_from else 0
    examples_seen = (steps - resumed_step) * config.training.batch_size * config.training.gradient_accumulation_steps
    examples_seen *= trainer.accelerator.num_processes
    # Real (non-pad) tokens of the rows actually consumed, epochs included.
    lengths = [len(row["input_ids"]) for row in train_rows]
    mean_length = sum(lengths) / len(lengths)
    real_tokens = mean_length * examples_seen
    metrics = {
        "train_loss": float(train_output.training_loss),
        "train_runtime_s": round(seconds, 2),
        "optimizer_steps": int(steps),
        "examples_seen": int(examples_seen),
        "train_tokens_per_s": round(real_tokens / seconds, 1),
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
        metrics["best_step"] = int(trainer.state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[1])
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


def load_adapter(model: PreTrainedModel, adapter_dir: Path, merge: bool = False) -> PeftModel | PreTrainedModel:
    """Put saved LoRA adapters on a loaded base model, for generation.

    Args:
        model: The base model.
        adapter_dir: A saved adapter.
        merge: Fold the adapter into the weights when they are float32 (the
            result equals the adapter's to rounding, and generation skips the
            extra low-rank products: the quickstart's finetuned evaluation took
            46 s instead of 59 s on a CPU). 16-bit weights keep the adapter separate: rounding
            the merged weights to 16 bits would change the model.
    """
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    peft_model.eval()
    if merge and all(parameter.dtype == torch.float32 for parameter in peft_model.parameters()):
        return peft_model.merge_and_unload().eval()
    return peft_model


def cpu_threads() -> int:
    """Threads PyTorch uses on the CPU (for logging the hardware a figure came from)."""
    return torch.get_num_threads()

"""The Trainer this project trains with, the batches it reads and its arguments from the YAML."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import PeftModel
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from llm_lora.config import TrainingConfig
from llm_lora.tokenization import IGNORE_INDEX
from llm_lora.training.callbacks import PRIMARY_METRIC_KEY
from llm_lora.training.chunked_loss import chunked_cross_entropy, hidden_states_out, plain_output_head
from llm_lora.training.precision import resolve_precision

logger = logging.getLogger(__name__)

TRAINING_COLUMNS = ("input_ids", "attention_mask", "labels")


def _as_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({name: [row[name] for row in rows] for name in TRAINING_COLUMNS})


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
            {"every_n_layers": training.gradient_checkpointing_every_n_layers,
             "offload": training.offload_activations and on_accelerator(training)}
            if training.gradient_checkpointing else None
        ),
        # bitsandbytes' 8-bit AdamW; else the TrainingArguments default (torch's fused AdamW).
        **({"optim": "adamw_bnb_8bit"} if training.optimizer == "adamw_8bit" else {}),
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


def on_accelerator(training: TrainingConfig) -> bool:
    """Whether the Trainer will train on an accelerator (a GPU), not on the CPU.

    Offloading activations to host memory means nothing on a CPU, where they already are (and
    transformers' pinned copies need an accelerator).
    """
    return not training.use_cpu and torch.accelerator.is_available()


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


def row_tokens(batch: dict) -> torch.Tensor | int:
    """Tokens of the rows in a batch from `build_collator`, padding left out.

    A padded batch marks its rows' tokens in the attention mask; a packed batch
    has neither mask nor padding, so every token in it belongs to a row.
    """
    mask = batch.get("attention_mask")
    return mask.sum() if mask is not None else batch["input_ids"].numel()


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

    With `chunked_loss` (training.chunked_loss), training steps go one further: the model returns its
    hidden states at those positions and the loss projects them a chunk at a time (see chunked_loss),
    so the logits of all labelled positions never exist at once. Evaluation keeps the logits path.

    It also counts the row tokens of every batch it trains on (`tokens_trained`),
    so that tokens/s reports the tokens actually trained.
    """

    def __init__(self, *args, chunked_loss: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tokens_trained: torch.Tensor | int = 0  # this process's, since the trainer was made
        self._chunked_head = plain_output_head(self.model) if chunked_loss else None
        if chunked_loss and self._chunked_head is None:
            logger.info("training.chunked_loss: %s's output layer is not a frozen plain projection; computing"
                        " the loss from full logits", type(self.model).__name__)

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        # Summed where the batch is, and read only at the end: counting adds no pause per batch.
        self._tokens_trained += row_tokens(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def tokens_trained(self) -> int:
        """Row tokens (padding left out) of every batch trained on, summed over all processes.

        Each process counts its own batches; every process must call this, as it sums across them.
        A resumed run counts only the batches trained since it resumed.
        """
        count = torch.as_tensor(self._tokens_trained, dtype=torch.int64, device=self.args.device)
        return int(self.accelerator.reduce(count, reduction="sum"))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        labels = inputs.get("labels")
        if labels is None or not accepts_logits_to_keep(self.accelerator.unwrap_model(model)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        next_labels = labels[:, 1:]
        trained = next_labels != IGNORE_INDEX
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = trained
        features = {key: value for key, value in inputs.items() if key != "labels"}
        # Row-major, as the mask flattens the kept positions: logits[i] predicts targets[i].
        targets = next_labels[trained]
        head = self._chunked_head if model.training else None
        if head is not None:
            with hidden_states_out(self.accelerator.unwrap_model(model), head) as stopped:
                outputs = model(**features, logits_to_keep=keep)
            loss = chunked_cross_entropy(stopped.hidden, head, targets, stopped.compute_dtype)
        else:
            outputs = model(**features, logits_to_keep=keep)
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

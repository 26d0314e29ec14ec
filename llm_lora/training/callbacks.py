"""What happens at the Trainer's evaluations and logs: generated validation answers, loss records, early stopping."""

from __future__ import annotations

import logging

from transformers import EarlyStoppingCallback, PreTrainedTokenizerBase, TrainerCallback

from llm_lora import attention
from llm_lora.answer_length import answer_tokens
from llm_lora.config import GENERATION_FACTS, ConfigPart, RunConfig, TrainingConfig
from llm_lora.evaluation import score_generations
from llm_lora.generation import generate
from llm_lora.promotion import resolve_metric

logger = logging.getLogger(__name__)

PRIMARY_METRIC_KEY = "eval_primary_metric"


def early_stopping(training: TrainingConfig) -> list[TrainerCallback]:
    """Stop after `early_stopping_patience` evaluations without a lower validation loss."""
    if not training.early_stopping_patience:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience)]


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


class _LossHistory(TrainerCallback):
    """Keeps every logged loss, for curves and metadata."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.active = True

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if self.active and logs and ("loss" in logs or "eval_loss" in logs):
            self.records.append({"step": state.global_step, **{k: v for k, v in logs.items() if "loss" in k}})

"""The run configuration: one YAML file is the whole truth of a run.

Every YAML key maps onto a field of the pydantic schema below. Unknown keys,
wrong types and missing files are rejected before anything heavy loads, with a
one-line message that names the file and the key's path.
"""

from __future__ import annotations

import json
import os
import reprlib
import string
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
    model_validator,
)

from llm_lora import metric_registry


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message is one line."""


# numpy, torch and datasets take seeds in 0 .. 2**32 - 1.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Far above any useful rank (the largest models' hidden sizes are about 16k).
MAX_LORA_RANK = 16384
# Longest value echoed back in an error message: a huge value (a YAML alias bomb) stays out of the terminal.
MAX_ECHO = 80


def echo(value) -> str:
    """A short repr of a value from the YAML: long strings and deep or long lists are cut, never built in full."""
    if isinstance(value, str) and len(value) > MAX_ECHO:
        return f"{value[:MAX_ECHO]!r}... ({len(value)} characters)"
    brief = reprlib.Repr()
    brief.maxlevel, brief.maxlist, brief.maxdict, brief.maxstring, brief.maxother = 2, 4, 4, MAX_ECHO, MAX_ECHO
    return brief.repr(value)


def _version_text(value):
    """A model version as YAML gives it: `version: 3` arrives as an int, and means version "3"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _leaf_types(annotation) -> set:
    """The plain types an annotation admits (through Optional, unions and Annotated)."""
    if get_origin(annotation) is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in get_args(annotation)))
    return {annotation}


class _YamlBoolean(str):
    """A YAML boolean given for a number key, as its text; the error message tells it from a quoted "true"."""


class _Section(BaseModel):
    # Unknown keys are typos more often than not: reject them instead of ignoring.
    # Non-finite numbers (.inf, .nan in YAML) are never a meaningful setting: refuse them by key.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data):
        """YAML reads yes/no/on/off/true/false as booleans, which pydantic would take as 1 and 0.

        A boolean given for a number key is handed on as its YAML text, so it fails that key's
        number check and the error names the key.
        """
        if not isinstance(data, dict):
            return data
        numeric = {
            name for name, field in cls.model_fields.items()
            if _leaf_types(field.annotation) & {int, float} and bool not in _leaf_types(field.annotation)
        }
        return {key: _YamlBoolean(str(value).lower()) if key in numeric and isinstance(value, bool) else value
                for key, value in data.items()}


class ModelConfig(_Section):
    """Which base model to finetune and how to load it."""

    name: str = Field(
        description=(
            "Hub id (meta-llama/Llama-3.1-8B), local model directory, GGUF file, "
            "or a file inside an installed Python package as package:<pkg>/<file>."
        )
    )
    revision: str | None = None
    # Run Python code shipped with a hub model. Off: only architectures transformers knows load.
    trust_remote_code: bool = False
    # Name of a ZenML secret whose `token` is the Hugging Face token (gated models such as
    # Llama 3.1). Without it, HF_TOKEN from the environment is used. Never written anywhere.
    token_secret: str | None = None
    # Loading dtype of the base weights. bf16 halves memory; fp32 is the safe CPU default.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # varlen: packed training rows go through PyTorch's variable-length FlashAttention kernel
    # (CUDA), each row's attention computed alone; elsewhere (CPU, generation) it is sdpa.
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "varlen"] | None = "sdpa"


class DataConfig(_Section):
    """Where the rows come from, what shape they have and how they are formatted.

    Give exactly one source: `train_file` (plus optional validation/test files),
    `path` (a file or a folder of split files), or `hub_id` (a hub dataset).
    Missing validation/test splits are carved out of train with `seed`.
    """

    train_file: Path | None = None
    validation_file: Path | None = None
    test_file: Path | None = None
    path: Path | None = None  # a data file, or a folder with train/validation/test files
    hub_id: str | None = None  # e.g. "org/dataset"; HF_HUB_OFFLINE=1 loads from the cache only
    subset: str | None = None  # the hub dataset's configuration name
    revision: str | None = None  # branch, tag or commit of the hub dataset
    hub_splits: dict[str, str] = {"train": "train", "validation": "validation", "test": "test"}
    validation_share: float = Field(default=0.1, gt=0, lt=0.5)  # used only when the source has no such split
    test_share: float = Field(default=0.1, gt=0, lt=0.5)
    # auto: from each row's keys. messages (or openai, the same) reads OpenAI's chat fine-tuning rows:
    # tools, tool calls, tool results, weights and the legacy functions form, checked as OpenAI checks them.
    format: Literal["auto", "prompt_completion", "messages", "openai", "instruction"] = "auto"
    # Canonical field -> your column, e.g. {prompt: question, completion: answer}.
    columns: dict[str, str] = {}
    # Instructions shown to the model before every input; also saves the template's
    # default system prompt (tokens paid on every example). A row's own system message wins.
    system_prompt: str | None = None
    # Used only when the tokenizer has no chat template; {system} and {prompt} are filled in.
    plain_template: str = "{system}### Input:\n{prompt}\n\n### Response:\n"
    # What carries loss. auto: every assistant turn (OpenAI's rule; prompt/completion rows have one).
    # completion: the final answer only; assistant_turns: every assistant turn; all: every token.
    # Rows whose messages carry OpenAI weights follow them whatever this says: weight 1 trains, 0 does not.
    # The end-of-turn token after each trained answer always carries loss.
    loss_on: Literal["auto", "completion", "assistant_turns", "all"] = "auto"
    on_bad_rows: Literal["error", "drop"] = "error"  # drop: skip bad rows, list them in the report
    max_train_rows: int | None = Field(default=None, ge=1)  # None: all rows
    max_validation_rows: int | None = Field(default=None, ge=1)
    max_test_rows: int | None = Field(default=None, ge=1)
    # Longest row kept, in tokens. auto: every row that fits the model's context window (the
    # tokenizer's model_max_length), so no row of a new task is lost to a number set for another;
    # a number caps memory per row (longer rows are dropped or truncated, and counted).
    max_seq_length: Literal["auto"] | Annotated[int, Field(ge=16)] = "auto"
    # Over-long rows: drop them, or cut the prompt's oldest tokens (the answer is never cut).
    over_length: Literal["drop", "truncate"] = "drop"
    # Pack several rows into one sequence without padding; attention stays within each row.
    packing: bool = False
    seed: Seed = 42

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [name for name in ("train_file", "path", "hub_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "data: give exactly one source: train_file, path or hub_id"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.train_file is None and (self.validation_file or self.test_file):
            raise ValueError("data: validation_file and test_file go with train_file")
        if "train" not in self.hub_splits or set(self.hub_splits) - {"train", "validation", "test"}:
            raise ValueError("data.hub_splits: keys are train (required), validation and test")
        unknown = set(self.columns) - {"prompt", "completion", "system", "messages", "instruction", "input", "output"}
        if unknown:
            raise ValueError(f"data.columns: unknown canonical field {echo(sorted(unknown)[0])}")
        if "{prompt}" not in self.plain_template:
            raise ValueError("data.plain_template: must contain {prompt}")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.plain_template) if name is not None}
        except ValueError as error:
            raise ValueError(f"data.plain_template: {error} (write a literal brace as {{{{ or }}}})") from None
        if fields - {"system", "prompt"}:
            raise ValueError(
                f"data.plain_template: unknown field {{{sorted(fields - {'system', 'prompt'})[0]}}}; it may use"
                " {system} and {prompt} (write a literal brace as {{ or }})"
            )
        return self


class LoraSettings(_Section):
    """PEFT LoRA adapter shape."""

    # Higher: more capacity, more memory. Never above the model's hidden size (checked where it is readable).
    rank: int = Field(default=16, ge=1, le=MAX_LORA_RANK)
    alpha: int = Field(default=32, ge=1, le=1_000_000)  # scale = alpha / rank
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    # "all-linear" fits Llama, Mistral and Phi alike; a name list must match the architecture.
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    use_dora: bool = False

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value):
        if not value:
            raise ValueError("lora.target_modules: an empty list adapts nothing; name layers or use all-linear")
        return value


class TrainingConfig(_Section):
    """Optimizer, schedule and precision."""

    method: Literal["lora", "qlora-4bit", "qlora-8bit"] = "lora"
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0)  # LoRA uses 1e-5 to 1e-2; above 1 always diverges
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)  # > 0 overrides epochs; -1: train for `epochs`
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    # auto: bf16 where the hardware computes it natively (recent GPUs, CPUs with AVX512-BF16 or
    # AMX), fp16 on older GPUs, else fp32. bf16 on a CPU without it is emulated, ~10x slower.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    # With checkpointing, recompute only every n-th decoder layer; the others keep their activations.
    # 1: all layers (least memory). Higher: less recompute, more memory (a GPU with room to spare).
    gradient_checkpointing_every_n_layers: int = Field(default=1, ge=1)
    # torch.compile each decoder layer (the layers share the compiled graphs; attention stays outside
    # them): fuses the norms, rotary embedding, activation and LoRA's scale-and-add into fewer kernels.
    # Costs a one-off compile at the start (about 100 s for an 8B model on an H200) and needs a
    # C compiler (C++ on a CPU); for long GPU runs.
    compile: bool = False
    # With checkpointing, hold the layer inputs saved for the recompute in CPU memory instead of the GPU's
    # (layers x tokens per step x hidden size x 2 bytes: 1 GiB per 4,096 tokens of an 8B model), copied
    # out in the forward pass and back in the backward pass: less GPU memory, a slower step. No-op on a CPU.
    offload_activations: bool = False
    # The loss projects hidden states onto the vocabulary a chunk of positions at a time, so no step holds
    # the logits of all its labelled positions (0.5 MB each for a 128k vocabulary, in float32): same loss
    # and gradients, less memory. Models whose output layer is adapted or post-processed ignore it.
    chunked_loss: bool = False
    # adamw: torch's AdamW (fused where the device has it), 32-bit moments. adamw_8bit: bitsandbytes'
    # AdamW with 8-bit moments for tensors of 4,096+ values: 4x less optimizer memory, same update rule.
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    # Sort rows of similar length into the same batch: less padding, faster on any device.
    group_by_length: bool = True
    logging_steps: int = Field(default=10, ge=1)
    num_processes: int = Field(default=1, ge=1)  # Accelerate processes: one per GPU; with use_cpu they share the cores
    use_cpu: bool = False  # train on the CPU even when a GPU is present
    # Validation loss every `eval_steps` optimizer steps (None: once, at the end).
    eval_steps: int | None = Field(default=None, ge=1)
    # Stop when validation loss has not improved for this many evaluations (needs eval_steps).
    early_stopping_patience: int | None = Field(default=None, ge=1)
    # Keep the adapter from the best evaluation (by `best_by`), not the last step.
    keep_best: bool = True
    # At every evaluation also greedy-generate on this many validation rows and score them
    # with the evaluation metrics (0: loss only). Costs generation time per evaluation.
    eval_generation_rows: int = Field(default=0, ge=0)
    # What "best" means for keep_best and early stopping: lowest validation loss, or the
    # highest promotion metric on the generated validation slice (needs eval_generation_rows).
    best_by: Literal["validation_loss", "primary_metric"] = "validation_loss"
    # Save a resumable checkpoint (adapter, optimizer, scheduler, RNG, data position) every N
    # optimizer steps; a re-run of the same config after a crash continues from the newest one.
    checkpoint_steps: int | None = Field(default=None, ge=1)
    # Where checkpoints go (local path or artifact-store URI); None: inside the active
    # artifact store, under llm_lora_checkpoints/<model name>/<key of model, settings and rows>.
    checkpoint_dir: str | None = None
    # Continue from the newest complete checkpoint of the same settings when one exists.
    resume: bool = True
    seed: Seed = 42

    @model_validator(mode="after")
    def _evaluation_settings_fit(self) -> TrainingConfig:
        if self.max_steps == 0:
            raise ValueError("training.max_steps: 0 trains nothing; -1 trains for training.epochs")
        if self.gradient_checkpointing_every_n_layers > 1 and not self.gradient_checkpointing:
            raise ValueError("training.gradient_checkpointing_every_n_layers: needs training.gradient_checkpointing: true")
        if self.offload_activations and not self.gradient_checkpointing:
            raise ValueError("training.offload_activations: needs training.gradient_checkpointing: true"
                             " (it moves the activations checkpointing keeps)")
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("training.early_stopping_patience: needs training.eval_steps")
        if self.eval_generation_rows and not self.eval_steps:
            raise ValueError("training.eval_generation_rows: needs training.eval_steps")
        if self.best_by == "primary_metric" and not self.eval_generation_rows:
            raise ValueError("training.best_by: primary_metric needs training.eval_generation_rows > 0")
        if self.checkpoint_steps and self.eval_steps and self.keep_best and self.checkpoint_steps % self.eval_steps:
            raise ValueError(
                f"training.checkpoint_steps: {self.checkpoint_steps} must be a multiple of training.eval_steps"
                f" ({self.eval_steps}) when keep_best is on"
            )
        return self


# Which scores exist, which way is better and which may promote: llm_lora/metric_registry.py. These
# names stay importable from here for the modules that read them from the config.
SCORES_BY_METRIC = metric_registry.SCORES_BY_METRIC
GENERATION_FACTS = metric_registry.GENERATION_FACTS
AUTO_PROMOTION_METRICS = metric_registry.AUTO_PROMOTION_METRICS
# evaluation.metrics: auto computes these for JSON answers, and these for any other answers.
AUTO_METRICS_JSON = ("json_fields",)
AUTO_METRICS_TEXT = ("exact_match", "rouge")


class EvaluationConfig(_Section):
    """Greedy generation on the test rows, same settings for base and finetuned."""

    batch_size: int = Field(default=16, ge=1)
    # Cap on each generated answer. auto: the longest expected answer in the prepared splits
    # (tokens with its end-of-turn) plus a margin, so another task's longer answers are never cut.
    max_new_tokens: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    # Share of a model's answers that may be cut short (stopped at the cap while the expected
    # answer needed that room) before its scores count as unmeasured: then the verdict and the
    # promotion decision are inconclusive and nothing is promoted.
    max_cut_short: float = Field(default=0.02, ge=0.0, le=1.0)
    # "auto": json_fields for JSON answers, else exact_match and rouge. Or name them:
    # json_fields, exact_match, rouge, classification_accuracy (metric modules in metrics/).
    # Answers that are function calls are always scored by tool_calls (the others score the text answers).
    metrics: Literal["auto"] | list[Literal["json_fields", "exact_match", "rouge", "classification_accuracy",
                                            "tool_calls"]] = "auto"


class RecordedBaseline(_Section):
    """Answers another model gave on the test rows, recorded in a file (a hosted fine-tune's, for example).

    The file holds one line per test row: the row as the data has it, its answer replaced by the
    model's (for chat rows, the last assistant message as the API returned it: content and/or
    tool_calls), with the response's `usage` (prompt_tokens, completion_tokens) and, optionally,
    `latency_s`. Lines are matched to test rows by their input.
    """

    name: str  # how the tables and the verdict name it, e.g. gpt-4o-mini-ft
    answers_file: Path
    # What the model costs per million tokens (its API's price); with both, the verdict says what
    # the finetuned model saves per million requests.
    price_per_million_prompt_tokens: float | None = Field(default=None, ge=0)
    price_per_million_completion_tokens: float | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class BaselinesConfig(_Section):
    """What the finetuned model is measured against, and how the "worth it" verdict is reached.

    The base model zero-shot is always evaluated. A few-shot prompt is the cheaper
    alternative to finetuning: the base model shown `few_shot_k` solved training rows
    before each test input. Every baseline answers the same test rows as the finetuned model.
    """

    # Solved examples from the train split put before each test input as earlier
    # user/assistant turns (0: no few-shot baseline). Each one adds its tokens to every prompt.
    few_shot_k: int = Field(default=3, ge=0)
    few_shot_seed: Seed = 0  # which train rows are drawn as examples
    # An optional larger model, answered zero-shot with the same prompt (e.g. {name: org/bigger-model}).
    reference_model: ModelConfig | None = None
    # The verdict: a paired bootstrap interval of the per-example gain over the best baseline.
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(default=2000, ge=100, le=1_000_000)
    bootstrap_seed: Seed = 0
    # Gains smaller than this (in per-example score) count as the same quality; then cost decides.
    min_gain: float = Field(default=0.02, ge=0.0)
    # Other models' recorded answers on the test rows, scored like the rest and shown in every table:
    # e.g. [{name: gpt-4o-mini-ft, answers_file: recorded.jsonl, price_per_million_prompt_tokens: 0.3, ...}]
    recorded: list[RecordedBaseline] = []

    @model_validator(mode="after")
    def _recorded_names_unique(self) -> BaselinesConfig:
        names = [entry.name for entry in self.recorded]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ValueError(f"baselines.recorded: the name {echo(twice)} is used twice; each file needs its own name")
        return self


class CostConfig(_Section):
    """Prices for the "worth it" report's payback; the training price is preflight.price_per_gpu_hour."""

    # What a prompt token costs you when serving (in your currency); None: no payback figure.
    price_per_million_prompt_tokens: float | None = Field(default=None, ge=0)
    # What a generated token costs you when serving; with a recorded baseline's prices, the verdict says
    # what serving the finetuned model saves per million requests (unset: generated tokens cost nothing).
    price_per_million_completion_tokens: float | None = Field(default=None, ge=0)
    # Requests you expect to serve with this model; decides the verdict when quality is the same.
    expected_requests: int | None = Field(default=None, ge=1)


class PromotionConfig(_Section):
    """When a new model version goes to production."""

    # "auto": tool_call_accuracy when answers are function calls, mean_field_accuracy for JSON answers,
    # else classification_accuracy, else exact_match.
    metric: str = "auto"
    # What the new version must beat by min_gain_over_base: the base model zero-shot, or the
    # best baseline (zero-shot, few-shot or the reference model, whichever scores highest).
    must_beat: Literal["base", "best_baseline"] = "base"
    # Required gain over the base model (or best baseline), in metric units (0.05 = five points).
    # Scores lie in 0..1; a negative gain would promote a version worse than what it must beat.
    min_gain_over_base: float = Field(default=0.05, ge=0.0, le=1.0)
    # Required gain over the current production version on the same test rows.
    min_gain_over_production: float = Field(default=0.0, ge=0.0, le=1.0)
    # A version that beats the base model but not production goes to staging (a candidate
    # for people to look at); production is never replaced by a version that is not better.
    staging: bool = True


# GGUF types: the first four are written by llama.cpp's converter from the merged weights, the
# others by llama.cpp's quantizer from the f16 file (llm_lora.gguf_export).
CONVERTER_GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZED_GGUF_TYPES = ("q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "q4_1", "q4_0", "iq4_nl",
                        "q3_k_m", "q2_k")
GgufType = Literal[CONVERTER_GGUF_TYPES + QUANTIZED_GGUF_TYPES]  # type: ignore[valid-type]
EXPORT_FORMATS = ("merged", "gguf")


class ExportConfig(_Section):
    """Exports of the finetuned model, each scored in the engine it is made for.

    `merged`: the adapter folded into the unquantized base weights (safetensors + tokenizer),
    for transformers, vLLM or SGLang. `gguf`: llama.cpp files (llama.cpp, Ollama, LM Studio),
    one per `gguf_types` entry, each with an Ollama Modelfile. Every export answers the test
    rows in its engine and is scored with the evaluation's metrics; one whose score differs
    from the PyTorch evaluation by more than its tolerance fails the run before promotion.
    """

    formats: list[Literal[EXPORT_FORMATS]] = []  # type: ignore[valid-type]
    merge: bool = False  # the same as listing merged in formats
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # of the merged weights (the GGUF's source)
    gguf_types: list[GgufType] = ["f16", "q8_0", "q4_k_m"]
    # Check on this many test rows that the merged model answers as base + adapter does (0: skip).
    verify_rows: int = Field(default=8, ge=0)
    # Test rows each export answers and is scored on (None: all rows the evaluation scored).
    score_rows: int | None = Field(default=None, ge=1)
    # Largest |export score - PyTorch score| on the promotion metric for merged, f32/f16/bf16 and q8_0.
    tolerance: float = Field(default=0.01, ge=0)
    # The same for the 6-bit-and-below types (None: their scores are reported, not checked).
    lossy_tolerance: float | None = Field(default=None, ge=0)
    ollama: bool = True  # write an Ollama Modelfile next to each GGUF file

    @model_validator(mode="after")
    def _merge_is_a_format(self):
        if self.merge and "merged" not in self.formats:
            object.__setattr__(self, "formats", ["merged", *self.formats])
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats lists a format twice: {self.formats}")
        if len(set(self.gguf_types)) != len(self.gguf_types):
            raise ValueError(f"gguf_types lists a type twice: {self.gguf_types}")
        return self

    @property
    def merged(self) -> bool:
        """Whether the merged model is made (it is also the GGUF converter's input)."""
        return bool(self.formats)

    @property
    def gguf(self) -> bool:
        return "gguf" in self.formats


class RemoteConfig(_Section):
    """How the pipeline runs on a remote (cloud) stack. The local orchestrator ignores it."""

    # Image the step containers build on: CUDA + PyTorch, the project's requirements go on top.
    parent_image: str = "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime"
    requirements: str = "requirements.txt"  # installed in the image (relative to the repository)
    apt_packages: list[str] = []
    environment: dict[str, str] = {}  # set in every step's container (no secrets: use model.token_secret)
    # A registered step operator that runs train_lora only (e.g. a Vertex or SageMaker GPU job),
    # so data preparation and evaluation stay on the orchestrator's cheaper machines. None:
    # train_lora runs on the orchestrator like every other step (then set train_gpus).
    training_step_operator: str | None = None
    train_gpus: int = Field(default=1, ge=0)  # GPUs requested for train_lora
    train_memory: str | None = "48GB"  # memory requested for train_lora (ZenML format: 48GB, 512MB)
    eval_gpus: int = Field(default=1, ge=0)  # GPUs for evaluation steps (generation on 7-8B models)
    # Retries of a failed step (preemption): train_lora resumes from its checkpoints.
    retries: int = Field(default=2, ge=0)
    retry_delay_s: int = Field(default=60, ge=0)


class PreflightConfig(_Section):
    """Figures for the preflight report's time and cost estimate."""

    # Training tokens/s for the estimate; None: the figure bench/ measured for this model and device.
    tokens_per_s: float | None = Field(default=None, gt=0)
    price_per_gpu_hour: float | None = Field(default=None, ge=0)  # in your currency; None: no cost line
    # Training time you mean to spend; the report warns, with the rows that fit, when the estimate is over.
    max_training_minutes: float | None = Field(default=None, gt=0)


def _zenml_name(value: str) -> str:
    """A name ZenML stores and formats (models, deployments): not blank, no braces, at most 255 characters."""
    if not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError(f"{echo(value)} has leading or trailing spaces")
    if "{" in value or "}" in value:
        raise ValueError(f"{echo(value)} contains a brace (ZenML reads braces as placeholders)")
    if len(value) > 255:
        raise ValueError(f"{len(value)} characters; at most 255")
    return value


ZenMLName = Annotated[str, AfterValidator(_zenml_name)]


class RegistryConfig(_Section):
    """The ZenML Model (Model Control Plane) that each run versions."""

    model_name: ZenMLName = "lora-finetune"
    description: str | None = None
    tags: list[ZenMLName] = []


class RunConfig(_Section):
    """A whole run: every YAML key lands in one of these sections."""

    model: ModelConfig
    data: DataConfig
    lora: LoraSettings = LoraSettings()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    cost: CostConfig = CostConfig()
    promotion: PromotionConfig = PromotionConfig()
    preflight: PreflightConfig = PreflightConfig()
    export: ExportConfig = ExportConfig()
    registry: RegistryConfig = RegistryConfig()
    remote: RemoteConfig | None = None  # settings for a remote stack (configs/remote/*.yaml)

    @model_validator(mode="after")
    def _check_precision_fits_method(self) -> RunConfig:
        if self.training.method.startswith("qlora") and self.training.use_cpu:
            raise ValueError("training.method: QLoRA needs a CUDA GPU; use method: lora with use_cpu: true")
        if self.model.attn_implementation == "varlen" and not self.data.packing:
            raise ValueError("model.attn_implementation: varlen works on packed rows; set data.packing: true")
        self._check_promotion_metric()
        return self

    def _check_promotion_metric(self) -> None:
        """promotion.metric must be a score the evaluation computes: a typo would only surface after training."""
        metric, chosen = self.promotion.metric, self.evaluation.metrics
        modules = [*AUTO_METRICS_JSON, *AUTO_METRICS_TEXT] if chosen == "auto" else list(chosen)
        scores = metric_registry.promotable_scores(modules)
        listed = f"evaluation.metrics: {chosen if chosen == 'auto' else ', '.join(chosen)}"
        if metric == "auto":
            # Whether the answers are function calls is the data's to say; without calls, auto needs a text score.
            text_auto = [name for name in AUTO_PROMOTION_METRICS if name not in metric_registry.SCORES_BY_METRIC["tool_calls"]]
            if metric_registry.auto_promotion_metric(scores) is None:
                raise ValueError(
                    f"promotion.metric: auto needs one of {', '.join(text_auto)} (tool_call_accuracy on answers"
                    f" that are function calls), which {listed} does not compute; name one of {', '.join(scores)}"
                )
            return
        # tool_calls scores whatever rows expect function calls, so its scores are there whenever the data has them.
        modules += [] if "tool_calls" in modules else ["tool_calls"]
        scores = metric_registry.promotable_scores(modules)
        if metric_registry.is_promotable(metric, modules):
            return
        known = scores + ([f"{metric_registry.FIELD_ACCURACY_PREFIX}<field>"] if "json_fields" in modules else [])
        raise ValueError(
            f"promotion.metric: {echo(metric)} is not a score that {listed} computes; use auto or one of {', '.join(known)}"
        )

    @field_validator("model")
    @classmethod
    def _check_model_name(cls, value: ModelConfig) -> ModelConfig:
        if not value.name.strip():
            raise ValueError("model.name: must not be empty")
        return value

    @field_validator("baselines")
    @classmethod
    def _check_reference_name(cls, value: BaselinesConfig) -> BaselinesConfig:
        if value.reference_model is not None and not value.reference_model.name.strip():
            raise ValueError("baselines.reference_model.name: must not be empty")
        return value

    def to_json(self) -> str:
        """Serialize to a JSON string for step parameters.

        Data paths and local model paths inside the repository travel relative to it,
        so a step running in a container (where the code lives elsewhere, e.g. /app)
        finds the same files.
        """
        data = self.data.model_copy(
            update={key: _repo_relative(getattr(self.data, key)) for key in DATA_PATH_KEYS}
        )
        recorded = [entry.model_copy(update={"answers_file": _repo_relative(entry.answers_file)})
                    for entry in self.baselines.recorded]
        config = self._with_model_names(_model_name_out)
        baselines = config.baselines.model_copy(update={"recorded": recorded})
        return config.model_copy(update={"data": data, "baselines": baselines}).model_dump_json()

    def part(self, **sections: bool | tuple[str, ...]) -> str:
        """The named sections as JSON, for one step's parameter (`ConfigPart.from_json` reads it back).

        Args:
            sections: Section name -> True for the whole section, or the keys the step reads of it.
        """
        whole = json.loads(self.to_json())
        part = {}
        for name, keys in sections.items():
            value = whole[name]
            if keys is True or value is None:
                part[name] = value
            else:
                part[name] = {_KEYS: list(keys), **{key: value[key] for key in keys}}
        return json.dumps(part, sort_keys=True)

    def sections(self) -> dict[str, dict]:
        """The sections steps read, each as a JSON-ready mapping (as `to_json`), for pipeline parameters."""
        return {name: value for name, value in json.loads(self.to_json()).items() if name != "remote"}

    @classmethod
    def from_sections(cls, **sections: dict) -> RunConfig:
        """Inverse of `sections`."""
        return cls.from_json(json.dumps(sections))

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Inverse of `to_json` (repository-relative paths made absolute against this checkout)."""
        config = cls.model_validate(json.loads(text))
        return config.model_copy(update={name: _local_section(name, getattr(config, name))
                                         for name in ("model", "data", "baselines")})

    def _with_model_names(self, rename) -> RunConfig:
        """This config with `rename` applied to model.name and baselines.reference_model.name."""
        model = self.model.model_copy(update={"name": rename(self.model.name)})
        baselines = self.baselines
        if baselines.reference_model is not None:
            reference = baselines.reference_model
            reference = reference.model_copy(update={"name": rename(reference.name)})
            baselines = baselines.model_copy(update={"reference_model": reference})
        return self.model_copy(update={"model": model, "baselines": baselines})


class _PartialSection:
    """A section of which a step was given only some keys: reading another is a bug, never a silent default."""

    def __init__(self, section: _Section, keys: tuple[str, ...]) -> None:
        self.__dict__.update(_section=section, _keys=keys)

    def __getattr__(self, name: str):
        if name in self.__dict__["_keys"]:
            return getattr(self.__dict__["_section"], name)
        section = type(self.__dict__["_section"]).__name__
        raise AttributeError(f"{section}.{name} was not given to this step (its part of the run config names"
                             f" only {', '.join(self.__dict__['_keys'])})")


class ConfigPart:
    """The sections of a run config that one step reads, made by `RunConfig.part`.

    A step's cache key covers exactly what it is given: a change elsewhere in the YAML leaves the
    step cached. Reading a section (or key) that was not given raises, naming it.
    """

    def __init__(self, sections: dict) -> None:
        self.__dict__["_sections"] = sections

    def __getattr__(self, name: str):
        sections = self.__dict__["_sections"]
        if name in sections:
            return sections[name]
        raise AttributeError(f"run config section {name!r} was not given to this step (it has {', '.join(sections)})")

    @classmethod
    def from_json(cls, text: str) -> ConfigPart:
        """Inverse of `RunConfig.part`: each section validated by its own schema, paths local again."""
        sections: dict = {}
        for name, value in json.loads(text).items():
            if value is None:
                sections[name] = None
                continue
            schema = next(t for t in _leaf_types(RunConfig.model_fields[name].annotation) if t is not type(None))
            keys = value.pop(_KEYS, None)
            if keys is None:
                section = _local_section(name, schema.model_validate(value))
                sections[name] = section
            else:  # only these keys travel: each validated by its own field's type
                values = {key: TypeAdapter(schema.model_fields[key].annotation).validate_python(item)
                          for key, item in value.items()}
                sections[name] = _PartialSection(_local_section(name, schema.model_construct(**values)), tuple(keys))
        return cls(sections)

    def serving_config(self) -> RunConfig:
        """What answering with the trained model needs: the whole model, data and evaluation sections.

        Recorded with the model version (batch inference and deployment format inputs as training did);
        the other sections keep their defaults and are not read there.
        """
        whole = {name: self._sections.get(name) for name in ("model", "data", "evaluation")}
        partial = [name for name, section in whole.items() if not isinstance(section, _Section)]
        if partial:
            raise AttributeError(f"serving_config needs the whole {', '.join(partial)} section(s)")
        return RunConfig(**{name: section.model_dump() for name, section in whole.items()})


_KEYS = "__keys__"


def _local_section(name: str, section: _Section) -> _Section:
    """A section read from step parameters, with repository-relative paths and model names made local."""
    if name == "data":
        return section.model_copy(update={key: _from_repo(getattr(section, key)) for key in DATA_PATH_KEYS})
    if name == "model":
        return section.model_copy(update={"name": _model_name_in(section.name)})
    if name == "baselines" and isinstance(getattr(section, "recorded", None), list) and section.recorded:
        section = section.model_copy(update={"recorded": [
            entry.model_copy(update={"answers_file": _from_repo(entry.answers_file)}) for entry in section.recorded]})
    if name == "baselines" and getattr(section, "reference_model", None) is not None:
        reference = section.reference_model
        return section.model_copy(update={"reference_model": reference.model_copy(
            update={"name": _model_name_in(reference.name)})})
    return section


DATA_PATH_KEYS = ("train_file", "validation_file", "test_file", "path")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _repo_relative(path: Path | None) -> Path | None:
    if path is None or not path.is_absolute():
        return path
    try:
        return path.relative_to(REPO_ROOT)
    except ValueError:
        return path  # outside the repository: only reachable where the same path exists


def _from_repo(path: Path | None) -> Path | None:
    return path if path is None or path.is_absolute() else REPO_ROOT / path


def _gguf_engine(settings, section: str):
    """A GGUF type is only read by the engines that serve the GGUF export: naming it for transformers is a mistake."""
    if settings.gguf_type is not None and settings.engine == "transformers":
        engines = "llama.cpp or llama-server" if section == "deploy" else "llama.cpp"
        raise ValueError(f"{section}.gguf_type: only read with engine: {engines}")
    return settings


class InferenceSettings(_Section):
    """Batch inference with a registered model version."""

    model_name: ZenMLName  # the ZenML Model that the finetune pipeline versions
    # A stage (production, staging), a version number (3, written bare or quoted), or a version name.
    version: Annotated[str, BeforeValidator(_version_text)] = "production"
    input_file: Path  # JSONL/JSON/CSV/Parquet rows: prompt, instruction(+input), or messages ending with a user turn
    output_file: Path  # predictions as JSONL, one line per input row
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)  # None: the cap the version was evaluated with
    # transformers: base model + the version's adapter. llama.cpp: the version's GGUF export
    # (trained with export.formats: [gguf]), of type gguf_type, in this process. llama-server: the same
    # file in llama.cpp's own server (built once from llama-cpp-python's source, or $LLM_LORA_LLAMA_SERVER),
    # started and supervised by the deployment, behind the same routes, queue and records.
    engine: Literal["transformers", "llama.cpp", "llama-server"] = "transformers"
    gguf_type: GgufType | None = None  # None: the version's first exported type

    @model_validator(mode="after")
    def _gguf_type_needs_llama_cpp(self):
        return _gguf_engine(self, "inference")


class InferenceConfig(_Section):
    """An inference YAML: a single `inference` section."""

    inference: InferenceSettings

    def to_json(self) -> str:
        """Serialize to a JSON string (paths as strings), for step parameters."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> InferenceConfig:
        """Inverse of `to_json`."""
        return cls.model_validate(json.loads(text))


class DeploySettings(_Section):
    """The production model behind HTTP: a ZenML pipeline deployment on the stack's deployer."""

    model_name: ZenMLName  # the ZenML Model that the finetune pipeline versions
    # A stage (production, staging), a version number (3, written bare or quoted), or a version name.
    version: Annotated[str, BeforeValidator(_version_text)] = "production"
    deployment_name: ZenMLName | None = None  # None: the model name; `zenml deployment delete <name>` stops it
    # Port of the local deployer (None: the first free one from 8000). Other deployers choose their own.
    port: int | None = Field(default=None, ge=1, le=65535)
    # Inputs generated together, from all concurrent requests: llama.cpp's slots (each answer leaves its
    # slot when it ends and a waiting input takes it), transformers' batch.
    batch_size: int = Field(default=16, ge=1, le=256)
    max_new_tokens: int | None = Field(default=None, ge=1)  # None: the cap the version was evaluated with
    # One JSON line per request (time, route, version, inputs, prompt tokens, latency, queue time, parse success;
    # no texts). The monitor pipeline reads it (configs/monitor.yaml).
    request_log: Path | None = None
    # Every this many seconds the new request records become one `served_requests` artifact in ZenML,
    # linked to the served version (0: none). Requests never wait for it.
    record_every_s: float = Field(default=60.0, ge=0)
    # Inputs that may wait for the model; past it a request gets 503 with Retry-After at once.
    max_queue: int = Field(default=64, ge=1)
    batch_window_ms: float = Field(default=10.0, ge=0, le=1000)  # transformers: wait this long for batch company
    timeout_s: int = Field(default=600, ge=10)  # wait this long for the server to load the model
    # transformers: base model + the version's adapter. llama.cpp: the version's GGUF export
    # (trained with export.formats: [gguf]), of type gguf_type, in this process. llama-server: the same
    # file in llama.cpp's own server (built once from llama-cpp-python's source, or $LLM_LORA_LLAMA_SERVER),
    # started and supervised by the deployment, behind the same routes, queue and records.
    engine: Literal["transformers", "llama.cpp", "llama-server"] = "transformers"
    gguf_type: GgufType | None = None  # None: the version's first exported type
    gguf_context: int = Field(default=2048, ge=64)  # llama.cpp, llama-server: prompt + answer tokens of each slot
    # llama.cpp, llama-server: a slot reuses the start a new prompt shares with its last one (the system prompt,
    # the chat markup), read once instead of per request. That start was computed beside other requests, and at a
    # near-tie an answer can then differ from the one it gets alone; false: every prompt read whole.
    prompt_cache: bool = True

    @model_validator(mode="after")
    def _gguf_type_needs_llama_cpp(self):
        return _gguf_engine(self, "deploy")


class DeployConfig(_Section):
    """A deploy YAML: a single `deploy` section."""

    deploy: DeploySettings


class MonitorSettings(_Section):
    """What is watched: a registered version and the request log of its deployment."""

    model_name: ZenMLName  # the ZenML Model that the finetune pipeline versions
    # A stage (production, staging), a version number (3, written bare or quoted), or a version name.
    version: Annotated[str, BeforeValidator(_version_text)] = "production"
    request_log: Path  # the deployment's deploy.request_log (JSON lines, one per request)
    window_hours: float = Field(default=24.0, gt=0)  # the records of this many hours are read
    # now: the window ends at the monitor's start (a schedule). newest: at the log's newest record (a log
    # copied from elsewhere, or read after the deployment stopped).
    window_end: Literal["now", "newest"] = "now"


class NewRowsSettings(_Section):
    """Newly labelled rows, read like training rows (the monitored version's data.format and data.columns).

    Give one source: `path` (a data file, or a folder whose data files all count: it grows as rows are
    labelled) or `hub_id` (a hub dataset; `revision` pins which labelled rows). Rows whose input the
    version's own data holds are not new.
    """

    path: Path | None = None
    hub_id: str | None = None
    subset: str | None = None  # the hub dataset's configuration name
    revision: str | None = None  # branch, tag or commit of the hub dataset
    split: str = "train"  # the hub dataset's split that holds the labelled rows
    # Rows production is re-scored on at most (None: every new row); each costs one generation.
    max_score_rows: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> NewRowsSettings:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("new_rows: give exactly one source: path or hub_id")
        if self.path is not None and (self.subset or self.revision):
            raise ValueError("new_rows: subset and revision go with hub_id")
        return self


class MonitorThresholds(_Section):
    """When the monitor retrains or alerts; each check and its numbers are recorded with the decision."""

    # Retrain when production's score on the new rows is this far below the score it was promoted on.
    max_score_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    # Fewer new rows than this: their score is reported but decides nothing (too few to tell from noise).
    min_score_rows: int = Field(default=20, ge=1)
    # Retrain when this many new labelled rows have arrived, whatever the score (None: never for that alone).
    min_new_rows: int | None = Field(default=500, ge=1)
    # Alert on input-length drift: a two-sample Kolmogorov-Smirnov test of the served prompts' token
    # counts against the training rows', below this p-value...
    drift_p_value: float = Field(default=0.01, gt=0.0, lt=1.0)
    # ...with at least this gap between the two length distributions (KS statistic: on heavy traffic
    # any tiny shift is "significant"; this keeps the alert for shifts that matter)...
    drift_min_statistic: float = Field(default=0.1, ge=0.0, le=1.0)
    drift_min_inputs: int = Field(default=30, ge=2)  # ...and at least this many served inputs
    min_parse_rate: float = Field(default=0.95, ge=0.0, le=1.0)  # alert below this share of JSON answers (JSON-trained versions)
    max_refusal_rate: float = Field(default=0.05, ge=0.0, le=1.0)  # alert above this share of refused requests
    max_latency_p95_s: float | None = Field(default=None, gt=0)  # alert above it (None: latency not checked)


class RetrainSettings(_Section):
    """What a retrain runs: a finetune config with its data plus the new labelled rows."""

    # The finetune YAML whose model and settings retrain (None: the monitor alerts instead of retraining).
    finetune_config: Path | None = None
    # Each retrain writes its rows (new labelled rows first, then the config's) and the config that names
    # them into a folder of its own here. Keep it: the retrained version's record points at those rows.
    data_folder: Path = Path("outputs/retrain")


class MonitorConfig(_Section):
    """A monitor YAML: what is watched, the new labelled rows, the thresholds and what a retrain runs."""

    monitor: MonitorSettings
    new_rows: NewRowsSettings | None = None  # None: production is not re-scored
    thresholds: MonitorThresholds = MonitorThresholds()
    retrain: RetrainSettings = RetrainSettings()

    def to_json(self) -> str:
        """Serialize to a JSON string (paths as strings), for step parameters."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> MonitorConfig:
        """Inverse of `to_json`."""
        return cls.model_validate(json.loads(text))


# A config's optional top-level `kind:`: which job it is for, and so which schema it is read with.
CONFIG_KINDS = {"finetune": RunConfig, "predict": InferenceConfig, "deploy": DeployConfig, "monitor": MonitorConfig}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {echo(key)} (a second one would replace the first)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _error_location(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"])


def _union_error(errors: list[dict]) -> tuple[str, str, int] | None:
    """A field that takes one of several shapes (`all-linear` or a list of names) failed every one of them.

    pydantic reports one error per shape, each under its type tag (`lora.target_modules.list[str].0`);
    the user wrote one value: name the field once, list what it takes, and show what was given.
    Returns (the field's path, the message, how many errors are about other fields), or None.
    """
    loc = errors[0]["loc"]
    tag = next((i for i, part in enumerate(loc) if isinstance(part, str) and "[" in part), None)
    if tag is None:
        return None
    field = loc[:tag]
    shapes = list(dict.fromkeys(e["loc"][tag] for e in errors if e["loc"][:tag] == field and len(e["loc"]) > tag))
    given = next((e["input"] for e in errors if e["loc"][:tag] == field and len(e["loc"]) == tag + 1),
                 errors[0]["input"])
    others = sum(1 for e in errors if e["loc"][:tag] != field)
    # A bounded number names its bound only in the error of a value that broke it.
    bounds = {e["loc"][tag]: e["ctx"] for e in errors if e["loc"][:tag] == field and len(e["loc"]) > tag
              and e.get("ctx") and {"ge", "gt"} & set(e["ctx"])}
    expected = " or ".join(_shape_in_words(shape, bounds.get(shape)) for shape in shapes)
    return ".".join(str(part) for part in field), f"expected {expected}, got {echo(given)}", others


def _shape_in_words(tag: str, bound: dict | None = None) -> str:
    """pydantic's type tag in words: literal['a','b'] -> 'a' or 'b'; list[str] -> a list of strings."""
    if tag.startswith("literal[") and tag.endswith("]"):
        return ", ".join(f"'{choice.strip(chr(39))}'" for choice in tag[len("literal["):-1].split(","))
    if tag.startswith("list[") and tag.endswith("]"):
        inner = tag[len("list["):-1]
        return "a list of " + ({"str": "strings", "int": "integers"}.get(inner) or _shape_in_words(inner))
    if tag in ("int", "constrained-int"):
        if bound and "ge" in bound:
            return f"a whole number of at least {bound['ge']}"
        return "a whole number" + (f" above {bound['gt']}" if bound and "gt" in bound else "")
    return tag


def _check_writable(file: Path, where: str) -> None:
    """The file can be written: it is writable, or its nearest existing folder is (folders are made on write)."""
    if file.exists():
        if not os.access(file, os.W_OK):
            raise ConfigError(f"{where}: {file} is not writable")
        return
    folder = file.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot write under {folder} (no permission); name a file in a writable folder")


def _find(value: Path, config_path: Path) -> Path | None:
    """A relative path is looked up from the current directory, then from the config's folder; ~ is the home folder."""
    value = value.expanduser()
    candidates = [value] if value.is_absolute() else [Path.cwd() / value, config_path.parent / value]
    return next((candidate for candidate in candidates if candidate.exists()), None)


def _local_model_name(name: str, config_path: Path) -> str:
    """A relative local model path (a folder or .gguf file), found like data paths, made absolute.

    Looked up from the current directory, then from the config's folder; so the stored run
    config names the same model whichever folder a run starts from. Hub ids, package: files and
    paths found nowhere are returned unchanged (loading names what is wrong with them).
    """
    if name.startswith("package:") or Path(name).expanduser().is_absolute():
        return name
    found = _find(Path(name), config_path)
    return str(found.resolve()) if found is not None else name


def _model_name_out(name: str) -> str:
    """A local model inside the repository travels as ./<path relative to it>, like data paths."""
    path = Path(name)
    relative = _repo_relative(path) if path.is_absolute() else None
    return f"./{relative}" if relative is not None and not relative.is_absolute() else name


def _model_name_in(name: str) -> str:
    return str(REPO_ROOT / name[2:]) if name.startswith("./") else name


def load_config(
    path: str | Path, check_files: bool = True
) -> RunConfig | InferenceConfig | DeployConfig | MonitorConfig:
    """Read and validate a run configuration.

    Relative data paths, and local model paths in model.name and
    baselines.reference_model.name, are resolved against the current directory
    first and the config file's directory second, so a config runs from the repo
    root and from its own folder alike.

    Args:
        path: The YAML file.
        check_files: Also require the data files to exist.

    Returns:
        The validated configuration, paths made absolute: a RunConfig, an InferenceConfig, a
        DeployConfig or a MonitorConfig as its `kind:` says (finetune, predict, deploy, monitor), or
        without it, an InferenceConfig for a YAML with only an `inference` section, a DeployConfig for
        one with only a `deploy` section, a MonitorConfig for one with a `monitor` section.

    Raises:
        ConfigError: With a one-line message naming the file and the key.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --config names a YAML file (e.g. configs/quickstart.yaml)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as exc:  # no permission, a device
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where} {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, ...), got {type(raw).__name__}")
    kind = raw.pop("kind", None)
    if kind is not None:
        if kind not in CONFIG_KINDS:
            raise ConfigError(f"{path}: kind: {echo(kind)} is not one of {', '.join(CONFIG_KINDS)}")
        schema = CONFIG_KINDS[kind]
    # Without `kind:`, a file with a run's sections is a run config (a stray `inference:`/`deploy:` there is
    # an unknown key); else its one section says what it is.
    elif {"model", "data"} & set(raw):
        schema = RunConfig
    else:
        schema = (InferenceConfig if "inference" in raw else DeployConfig if "deploy" in raw
                  else MonitorConfig if "monitor" in raw else RunConfig)
    try:
        config = schema.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _error_location(first)
        message = first["msg"]
        union = _union_error(exc.errors())
        if union is not None:
            where, message, others = union
            more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
            raise ConfigError(f"{path}: {where}: {message}{more}") from None
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] in ("int_parsing", "float_parsing") and isinstance(first.get("input"), _YamlBoolean):
            message = f"expected a number, got {first['input']} (YAML reads yes/no/on/off/true/false as a boolean)"
        elif first["type"] == "missing":
            message = "required key is missing"
        elif first["type"] == "literal_error":
            message = f"{echo(first.get('input'))} is not one of {first['ctx']['expected']}"
        elif first["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        others = len(exc.errors()) - 1
        more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
        # Cross-field checks name their own keys ("data.columns: ..."); don't name the section twice.
        named = message.split(":", 1)[0]
        if first["type"] == "value_error" and (not where or named == where or named.startswith(f"{where}.")):
            raise ConfigError(f"{path}: {message}{more}") from None
        raise ConfigError(f"{path}: {where}: {message}{more}") from None

    if isinstance(config, MonitorConfig):
        return _monitor_paths(config, path, check_files)
    if isinstance(config, DeployConfig):
        log = config.deploy.request_log
        log = log.expanduser() if log is not None else None
        if log is not None and not log.is_absolute():
            log = (Path.cwd() / log).resolve()
        if log is not None and log.is_dir():
            raise ConfigError(f"{path}: deploy.request_log: is a folder ({config.deploy.request_log}); name a file")
        if log is not None:
            _check_writable(log, f"{path}: deploy.request_log")
        return config.model_copy(update={"deploy": config.deploy.model_copy(update={"request_log": log})})
    if isinstance(config, InferenceConfig):
        settings = config.inference
        found = _find(settings.input_file, path)
        if found is None and check_files:
            raise ConfigError(f"{path}: inference.input_file: not found: {settings.input_file}")
        output = settings.output_file.expanduser()
        output = output if output.is_absolute() else Path.cwd() / output
        if output.is_dir():
            raise ConfigError(f"{path}: inference.output_file: is a folder ({settings.output_file}); name a file")
        if found is not None and output.resolve() == found.resolve():
            raise ConfigError(f"{path}: inference.output_file: is the input file ({settings.input_file}); the"
                              " predictions would overwrite it. Name another file")
        _check_writable(output, f"{path}: inference.output_file")
        update = {"input_file": (found or settings.input_file).resolve(), "output_file": output.resolve()}
        return config.model_copy(update={"inference": settings.model_copy(update=update)})
    config = config._with_model_names(lambda name: _local_model_name(name, path))
    data = config.data
    resolved = {}
    for key in DATA_PATH_KEYS:
        value: Path | None = getattr(data, key)
        if value is None:
            continue
        found = _find(value, path)
        if found is None and check_files:
            raise ConfigError(f"{path}: data.{key}: not found: {value}")
        if found is not None and found.is_dir() and key != "path":
            raise ConfigError(f"{path}: data.{key}: is a folder ({value}); name a file, or use data.path for a folder")
        resolved[key] = (found or value.expanduser()).resolve()
    files = [key for key in ("train_file", "validation_file", "test_file") if key in resolved]
    for position, key in enumerate(files):
        same = next((other for other in files[:position] if resolved[other] == resolved[key]), None)
        if same is not None:
            raise ConfigError(
                f"{path}: data.{key}: is the same file as data.{same} ({resolved[key]}); every evaluation row would"
                " also be a training row. Name a separate file, or leave the key out to carve the split from train"
            )
    if data.hub_id is not None and data.hub_id.startswith((".", "/", "~")):  # a local dataset folder
        folder = _find(Path(data.hub_id), path)
        if folder is None:
            raise ConfigError(f"{path}: data.hub_id: {echo(data.hub_id)} looks like a local folder and is not found")
        resolved["hub_id"] = str(folder.resolve())
    if config.remote is not None and not (REPO_ROOT / config.remote.requirements).is_file():
        raise ConfigError(f"{path}: remote.requirements: {config.remote.requirements} not found in the repository"
                          f" ({REPO_ROOT})")
    recorded = []
    for index, entry in enumerate(config.baselines.recorded):
        found = _find(entry.answers_file, path)
        if found is None and check_files:
            raise ConfigError(f"{path}: baselines.recorded[{index}].answers_file: not found: {entry.answers_file}")
        if found is not None and found.is_dir():
            raise ConfigError(f"{path}: baselines.recorded[{index}].answers_file: is a folder ({entry.answers_file});"
                              " name the file of recorded answers")
        recorded.append(entry.model_copy(update={"answers_file": (found or entry.answers_file.expanduser()).resolve()}))
    config = config.model_copy(update={"baselines": config.baselines.model_copy(update={"recorded": recorded})})
    training = config.training
    if training.checkpoint_dir is not None and not training.checkpoint_dir.strip():
        raise ConfigError(f"{path}: training.checkpoint_dir: empty; leave the key out to keep checkpoints in the"
                          " artifact store")
    if training.checkpoint_dir and training.checkpoint_dir.startswith("~"):
        training = training.model_copy(update={"checkpoint_dir": str(Path(training.checkpoint_dir).expanduser())})
    return config.model_copy(update={"data": data.model_copy(update=resolved), "training": training})


def _monitor_paths(config: MonitorConfig, path: Path, check_files: bool) -> MonitorConfig:
    """A monitor config's paths made absolute (found like data paths); the finetune config must exist.

    The request log and the new rows are checked when the monitor runs: a deployment may not have
    written its log yet when a schedule is set up.
    """
    def absolute(value: Path) -> Path:
        found = _find(value, path)
        value = value.expanduser()
        return (found or (value if value.is_absolute() else Path.cwd() / value)).resolve()

    settings = config.monitor.model_copy(update={"request_log": absolute(config.monitor.request_log)})
    if settings.request_log.is_dir():
        raise ConfigError(f"{path}: monitor.request_log: is a folder ({config.monitor.request_log}); name the"
                          " deployment's request_log file")
    new_rows = config.new_rows
    if new_rows is not None and new_rows.path is not None:
        new_rows = new_rows.model_copy(update={"path": absolute(new_rows.path)})
    retrain = config.retrain
    if retrain.finetune_config is not None:
        found = _find(retrain.finetune_config, path)
        if found is None and check_files:
            raise ConfigError(f"{path}: retrain.finetune_config: not found: {retrain.finetune_config}")
        if found is not None and found.is_dir():
            raise ConfigError(f"{path}: retrain.finetune_config: is a folder ({retrain.finetune_config}); name a"
                              " finetune YAML")
        retrain = retrain.model_copy(update={"finetune_config": (found or retrain.finetune_config).resolve()})
    folder = retrain.data_folder.expanduser()
    folder = (folder if folder.is_absolute() else Path.cwd() / folder).resolve()
    if folder.is_file():
        raise ConfigError(f"{path}: retrain.data_folder: is a file ({retrain.data_folder}); name a folder")
    _check_writable(folder / "train.jsonl", f"{path}: retrain.data_folder")
    retrain = retrain.model_copy(update={"data_folder": folder})
    return config.model_copy(update={"monitor": settings, "new_rows": new_rows, "retrain": retrain})

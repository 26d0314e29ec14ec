"""LoRA and QLoRA training throughput and memory on one CUDA GPU, for 8B-, 7B- and 2.7B-shaped models.

For each shape (Llama-3.1-8B, Mistral-7B-v0.3, Phi-2), the model is built
from its architecture's numbers with random weights, directly on the GPU (no
download), and trained for a few optimizer steps with the project's own set-up
(llm_lora.training: attach_lora, build_training_arguments, build_collator,
CompletionLossTrainer) and the LoRA and training sections of its shipped
config (configs/<shape>.yaml), on rows whose lengths follow a realistic mix
(log-normal, median 300 tokens, up to the config's max_seq_length) with the
loss on the last 30% of each row. QLoRA weights are quantized with the
config's bitsandbytes settings (NF4, double quantization) the way
`from_pretrained(quantization_config=...)` quantizes them at load time.

For the 8B shape the same run also measures:
- the anchor recipe: HF + PEFT QLoRA NF4 with double quantization, r=8 on
  q,k,v,o,gate,up,down and lm_head, every row padded (or cut) to 512, batch 2,
  paged AdamW 8-bit, gradient checkpointing, prepare_model_for_kbit_training;
- the project's QLoRA at the anchor's tokens per step (1,024), for memory;
- the longest single sequence that trains with QLoRA (one optimizer step).

Reports real (non-pad) tokens/s, padding share, peak GPU memory and model
FLOP/s utilization (forward + input-gradient FLOPs of the frozen weights,
the kept vocabulary positions and attention, over the bf16 matrix rate
measured on the same card in the same run; recomputation is not counted as
useful work). Writes bench/results/gpu-training-<device>.json after every
measurement, so a run cut short keeps what it measured.

    python bench/gpu_training.py                      # about 3 minutes on one H100 (before the bf16 checkpointing sweep)
    python bench/gpu_training.py --shapes llama-3.1-8b --bf16-only   # bf16 LoRA: rows per step x checkpointed layers
    python bench/gpu_training.py --shapes llama-3.1-8b --bf16-only --liger --compile   # the fastest again, Liger / compiled
    python bench/gpu_training.py --shapes llama-3.1-8b --longest-only   # the longest QLoRA sequence
    python bench/gpu_training.py --shapes phi-2 --steps 4
    python bench/gpu_training.py --tiny --device cpu  # the same code on 2-layer shapes, to check it runs
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from llm_lora.tokenization import IGNORE_INDEX  # noqa: E402

# Architecture numbers from each model's published config.json.
SHAPES = {
    "llama-3.1-8b": {
        "config": "configs/llama-3.1-8b.yaml",
        "architecture": dict(
            model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
            rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        ),
    },
    "mistral-7b": {
        "config": "configs/mistral-7b.yaml",
        "architecture": dict(
            model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, vocab_size=32768, max_position_embeddings=32768,
            rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    },
    "phi-2": {
        "config": "configs/phi-2.yaml",
        "architecture": dict(
            model_type="phi", hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, vocab_size=51200, max_position_embeddings=2048,
            layer_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
        ),
    },
}
# --tiny: the same architectures with two small layers, for checking the script on a CPU.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512)

ANCHOR_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
ANCHOR_LENGTH = 512
ANCHOR_BATCH = 2
COMPLETION_SHARE = 0.3  # loss on the last 30% of each row
LONG_LABELLED = 4096  # a long row's loss is on its last 4,096 tokens (a long document, then the answer)
# bf16 LoRA without recomputation, 8 rows: the 8-row baseline (with LoRA dropout 0.05 and SDPA, 16 rows
# once ran out of memory on an 80 GB H100).
BF16_ROWS = 8
SWEEP_ROWS = [32, 64]  # 8B shape: more rows per step spread each step's fixed cost (launches, dequantization)
# 8B shape, bf16 LoRA: (rows per step, checkpoint every n-th layer; 0: none). Full recomputation costs
# about a third of a LoRA step (forward twice, backward once); checkpointing fewer layers keeps more
# activations (~8 MB per token per uncheckpointed 8B layer stack) to recompute less.
# Without checkpointing (dropout 0, varlen; bench/results/gpu-training-h200-bf16.json) 16 rows peaked at
# 60.2 GiB eager and 50.8 compiled, 24 rows at 83.0 eager (more than an 80 GB card) and 68.8 compiled.
# A setting that does not fit is recorded as out of memory and the sweep goes on.
BF16_SWEEP = [(12, 0), (16, 0), (24, 0), (16, 4), (24, 4), (32, 2), (32, 1)]
# --liger and --compile repeat the 8-row run and this many of the sweep's fastest settings.
REPEATED_BEST = 2


def sample_rows(count: int, max_length: int, vocab: int, seed: int) -> list[dict]:
    """Rows of random tokens whose lengths follow a log-normal mix (median 300), up to max_length."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(math.log(300) + 0.7 * torch.randn(count, generator=generator)).round().clamp(64, max_length)
    rows = []
    for length in lengths.int().tolist():
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        prompt = length - max(8, int(length * COMPLETION_SHARE))
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def build_model(shape: str, tiny: bool, device: str, attn_implementation: str | None):
    """The shape's architecture with random weights, built in bf16 directly on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    architecture = dict(SHAPES[shape]["architecture"])
    if tiny:
        architecture.update(TINY, num_key_value_heads=min(architecture["num_key_value_heads"], TINY["num_attention_heads"]))
    config = AutoConfig.for_model(**architecture)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn_implementation)
    model.config.use_cache = False
    return model


def quantize_in_place(model, bnb_config, device: str) -> None:
    """Swap every nn.Linear but lm_head for bitsandbytes' Linear4bit, as from_pretrained does at load time."""
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or f"{name}.{child_name}".endswith("lm_head"):
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=bnb_config.bnb_4bit_compute_dtype, compress_statistics=bnb_config.bnb_4bit_use_double_quant,
                quant_type=bnb_config.bnb_4bit_quant_type, device="meta",
            )
            quantized.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=bnb_config.bnb_4bit_use_double_quant,
                quant_type=bnb_config.bnb_4bit_quant_type, module=quantized,
            )
            if child.bias is not None:
                quantized.bias = child.bias
            setattr(module, child_name, quantized.to(device))  # .to() quantizes
            del child
    model.is_loaded_in_4bit = True
    _free_memory()


def reset_base(model) -> None:
    """Undo what a previous variant set on the shared base model: checkpointing, fp32 copies, input-grad hook."""
    model.gradient_checkpointing_disable()
    if getattr(model, "_require_grads_hook", None) is not None:
        model.disable_input_require_grads()
    for parameter in model.parameters():
        if parameter.dtype == torch.float32 and parameter.__class__.__name__ != "Params4bit":
            parameter.data = parameter.data.to(torch.bfloat16)
        parameter.requires_grad_(False)


def flops_per_token(model, rows: list[dict]) -> float:
    """Useful training FLOPs per real token: forward plus input gradients of the frozen weights, no recomputation.

    Linear layers: 2 x parameters forward and 2 x backward (the input's gradient; frozen
    weights get none). The vocabulary projection only at labelled positions. Causal
    attention: 4 x context x width per layer forward, twice that backward. LoRA's own
    products (rank 8 to 16) are left out.
    """
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head_dim
    linear = sum(
        module.in_features * module.out_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and "lm_head" not in name
    )
    vocabulary = config.hidden_size * config.vocab_size
    rows = [row for item in rows for row in (item if isinstance(item, list) else [item])]
    tokens = sum(len(row["input_ids"]) for row in rows)
    labelled = sum(sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows)
    context = sum(len(row["input_ids"]) * (len(row["input_ids"]) + 1) / 2 for row in rows) / tokens
    attention = 3 * 4 * context * width * config.num_hidden_layers
    return 4 * linear + 4 * vocabulary * labelled / tokens + attention


def counting(trainer_class):
    """The trainer class, recording each micro-batch's real and padded token counts."""

    class Counting(trainer_class):
        def compute_loss(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            real = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            self.token_counts.append((real, inputs["input_ids"].numel()))
            return super().compute_loss(model, inputs, *args, **kwargs)

    Counting.token_counts = None
    return Counting


class StepTimer:
    """Host time after each optimizer step, the device synchronized first."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if timer.device == "cuda":
                    torch.cuda.synchronize()  # a sync point: the step's kernels have finished
                timer.times.append(time.perf_counter())

        return _Timer()


def measure(trainer_class, model, args, rows, collator, warmup: int, device: str, flops_token: float, peak_flops: float):
    """Train, then report the post-warm-up steps' throughput and the whole run's peak memory."""
    trainer_class = counting(trainer_class)
    timer = StepTimer(device)
    trainer = trainer_class(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[timer.callback()])
    trainer.token_counts = []
    started = time.perf_counter()
    output = trainer.train()
    steps = len(timer.times)
    timed = trainer.token_counts[warmup:steps]
    seconds = timer.times[-1] - timer.times[warmup - 1]
    real = sum(count for count, _ in timed)
    padded = sum(count for _, count in timed)
    result = {
        "optimizer_steps_timed": steps - warmup,
        "seconds": round(seconds, 3),
        "first_step_seconds": round(timer.times[0] - started, 1),  # a compile, where there is one, is in it
        "real_tokens_per_step": round(real / (steps - warmup)),
        "real_tokens_per_s": round(real / seconds),
        "padded_tokens_per_s": round(padded / seconds),
        "padding_share": round(1 - real / padded, 4),
        "train_loss": round(float(output.training_loss), 4),
    }
    if device == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        result["model_flops_utilization"] = round(real / seconds * flops_token / peak_flops, 4)
    del trainer
    return result


def training_args(run_config, output_dir: str, steps: int, **overrides):
    """The project's TrainingArguments for `steps` steps, without logging, saving or progress bars."""
    from llm_lora.training import build_training_arguments

    training = run_config.training.model_copy(
        update={"max_steps": steps, "logging_steps": 10_000, "eval_steps": None, "checkpoint_steps": None, **overrides}
    )
    args = build_training_arguments(training, Path(output_dir))
    args.disable_tqdm = True
    return args


def project_variant(shape, model, run_config, rows, steps, warmup, device, peak_flops, record, label="",
                    suffix="", lora=None, **training):
    """One measurement of the project's set-up (attach_lora + CompletionLossTrainer) on the shared base model.

    `lora` and `training` override the config's sections; the run's name says what was changed.
    """
    from llm_lora import attention
    from llm_lora.training import CompletionLossTrainer, attach_lora, build_collator, compile_layers

    if device == "cpu":
        training["use_cpu"] = True
    settings = run_config.model_copy(update={"training": run_config.training.model_copy(update=training),
                                             "lora": run_config.lora.model_copy(update=lora or {})})
    method = {"lora": "bf16 LoRA", "qlora-4bit": "QLoRA"}[settings.training.method]
    name = (f"{shape} {method}, {label or str(settings.training.batch_size) + ' rows'} per step, "
            f"{_checkpointing(settings.training)}, dropout {settings.lora.dropout}{suffix}")

    def run():
        reset_base(model)
        _begin(device)
        peft_model = attach_lora(model, settings)
        try:
            if settings.training.compile:
                compile_layers(peft_model)
            with tempfile.TemporaryDirectory() as out:
                args = training_args(settings, out, steps)
                collator = build_collator(None, settings.data.packing, boundaries=attention.in_use(model))
                if isinstance(rows[0], list):  # groups of rows, one group a step, packed together
                    collator = _flatten_groups(collator)
                result = measure(CompletionLossTrainer, peft_model, args, rows, collator,
                                 warmup, device, flops_per_token(peft_model, rows), peak_flops)
        finally:
            peft_model.unload()
            for layer in model.modules():  # back to eager for the next variant
                if getattr(layer, "_compiled_call_impl", None) is not None:
                    layer._compiled_call_impl = None
        result.update(setup=_describe(settings, model))
        _report(record, name, result)
        return result

    return guarded(run, name, record)


def attention_check(model, rows, device, record) -> None:
    """With varlen attention: the loss of one packed batch, varlen against SDPA's block-diagonal mask."""
    from llm_lora import attention
    from llm_lora.training import build_collator

    if not attention.in_use(model):
        return
    batch = build_collator(None, True, boundaries=True)(rows[:BF16_ROWS])
    batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
    losses = {}
    for implementation in ("sdpa", attention.NAME):
        model.set_attn_implementation(implementation)
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            losses[implementation] = round(float(model(**batch).loss), 5)
    record["attention_check"] = {"packed_rows": BF16_ROWS, "sdpa_loss": losses["sdpa"], "varlen_loss": losses[attention.NAME]}
    _write(record)
    print("attention check", record["attention_check"], flush=True)


def anchor_variant(model, rows, steps, warmup, device, peak_flops, record):
    """The anchor recipe on the shared (already 4-bit) base model."""
    attention = model.config._attn_implementation
    model.set_attn_implementation("sdpa")  # the recipe's padded rows: transformers' default attention
    try:
        _anchor(model, rows, steps, warmup, device, peak_flops, record)
    finally:
        model.set_attn_implementation(attention)


def _anchor(model, rows, steps, warmup, device, peak_flops, record):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    reset_base(model)
    _begin(device)
    prepared = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=ANCHOR_TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(prepared, lora)
    padded_rows = [_pad_to(row, ANCHOR_LENGTH) for row in rows]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=ANCHOR_BATCH, max_steps=steps, learning_rate=2e-4,
            optim="paged_adamw_8bit", gradient_checkpointing=True, bf16=True, logging_steps=10_000,
            save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
            use_cpu=device == "cpu",
        )
        result = measure(Trainer, peft_model, args, padded_rows, _stack, warmup, device,
                         flops_per_token(peft_model, [_unpad(row) for row in padded_rows]), peak_flops)
    result.update(setup=f"QLoRA NF4 double-quant, r=8 on {','.join(ANCHOR_TARGETS)}, pad to {ANCHOR_LENGTH}, "
                        f"batch {ANCHOR_BATCH}, paged_adamw_8bit, gradient checkpointing, prepare_model_for_kbit_training")
    peft_model.unload()
    _report(record, "anchor: HF+PEFT QLoRA recipe", result)
    return result


def long_row(length: int, vocab: int) -> dict:
    """One row of random tokens, its loss on the last LONG_LABELLED (a long document, then the answer)."""
    ids = torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(length)).tolist()
    return {"input_ids": ids, "attention_mask": [1] * length,
            "labels": [IGNORE_INDEX] * (length - LONG_LABELLED) + ids[-LONG_LABELLED:]}


def longest_trainable(train_one_step, lengths, vocab: int, device: str, deadline: float, on_try=None) -> list[dict]:
    """`train_one_step(row)` (returns the loss) on a single long_row of each length, until one does not fit
    or time runs out; `on_try(tries)` after each."""
    tries = []
    for length in lengths:
        if time.perf_counter() > deadline:
            tries.append({"length": length, "skipped": "time budget"})
            break
        _begin(device)
        started = time.perf_counter()
        try:
            loss = train_one_step(long_row(length, vocab))
            entry = {"length": length, "trained": math.isfinite(loss), "step_seconds": round(time.perf_counter() - started, 1),
                     "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}
        except torch.OutOfMemoryError:
            entry = {"length": length, "trained": False, "error": "out of memory"}
        _free_memory()
        tries.append(entry)
        if on_try is not None:
            on_try(tries)
        print("longest sequence", entry, flush=True)
        if not entry["trained"]:
            break
    return tries


def longest_sequence(model, run_config, vocab, lengths, device, record, deadline):
    """One QLoRA optimizer step on a single row of each length, until one does not fit or time runs out."""
    from llm_lora.training import CompletionLossTrainer, attach_lora, build_collator

    def one_step(row):
        reset_base(model)
        peft_model = attach_lora(model, run_config)
        try:
            with tempfile.TemporaryDirectory() as out:
                args = training_args(run_config, out, 1, batch_size=1, gradient_accumulation_steps=1, use_cpu=device == "cpu")
                trainer = CompletionLossTrainer(model=peft_model, args=args, train_dataset=[row],
                                                data_collator=build_collator(None, True))
                return trainer.train().training_loss
        finally:
            peft_model.unload()

    def save(tries):
        record["longest_sequence_qlora"] = {"labelled_tokens": LONG_LABELLED, "tries": tries,
                                            "setup": _describe(run_config)}
        _write(record)

    return longest_trainable(one_step, lengths, vocab, device, deadline, save)


def _flatten_groups(collator):
    return lambda groups: collator([row for group in groups for row in group])


def _pad_to(row: dict, length: int) -> dict:
    row = {key: value[:length] for key, value in row.items()}
    missing = length - len(row["input_ids"])
    return {"input_ids": row["input_ids"] + [0] * missing, "attention_mask": row["attention_mask"] + [0] * missing,
            "labels": row["labels"] + [IGNORE_INDEX] * missing}


def _unpad(row: dict) -> dict:
    real = sum(row["attention_mask"])
    return {key: value[:real] for key, value in row.items()}


def _stack(rows: list[dict]) -> dict:
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


def _describe(config, model=None) -> str:
    lora, training = config.lora, config.training
    attention = model.config._attn_implementation if model is not None else config.model.attn_implementation
    liger = model is not None and _has_liger_kernels(model)
    return (f"{training.method}, r={lora.rank} alpha={lora.alpha} dropout={lora.dropout} targets={lora.target_modules}"
            f"{' DoRA' if lora.use_dora else ''}, {training.batch_size} rows per step, packing={config.data.packing},"
            f" {_checkpointing(training)}, attention={attention}{', compiled layers' if training.compile else ''}"
            f"{', Liger kernels' if liger else ''}")


def _checkpointing(training) -> str:
    if not training.gradient_checkpointing:
        return "no checkpointing"
    every = training.gradient_checkpointing_every_n_layers
    return "checkpointing" if every == 1 else f"checkpointing every {every} layers"


def _free_memory() -> None:
    """Drop what Python and the CUDA caching allocator still hold from the previous measurement."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _begin(device: str) -> None:
    _free_memory()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


RESULTS: Path | None = None


def _write(record: dict) -> None:
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


def guarded(function, name: str, record: dict, *args, **kwargs):
    """Run one measurement; an error (out of memory, say) is recorded and the next measurement goes on."""
    try:
        return function(*args, **kwargs)
    except Exception as error:
        record["runs"].append({"name": name, "error": f"{type(error).__name__}: {error}"[:500]})
        _write(record)
        print(name, "FAILED:", record["runs"][-1]["error"], flush=True)
        _free_memory()
        return None


def _report(record: dict, name: str, result: dict) -> None:
    record["runs"].append({"name": name, **result})
    _write(record)
    print(name, json.dumps(result), flush=True)


def matmul_rate(device: str) -> float:
    """Measured bf16 matrix-product rate (FLOP/s): 8192^3 products on fresh random data, median of 20."""
    if device != "cuda":
        return float("nan")
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del a, b
    return 2 * 8192**3 / sorted(times)[len(times) // 2]


def _versions() -> dict:
    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before timing starts")
    parser.add_argument("--lengths", type=int, nargs="*", default=[65536, 131072],
                        help="single-row lengths tried for the longest QLoRA sequence (8B shape)")
    parser.add_argument("--budget-s", type=float, default=120, help="no new longest-sequence try after this many seconds")
    parser.add_argument("--longest-only", action="store_true",
                        help="only the longest QLoRA sequence on the 8B shape (a fresh process: nothing else on the card)")
    parser.add_argument("--no-sweep", action="store_true",
                        help="8B shape: skip the rows-per-step and checkpointing variants")
    parser.add_argument("--liger", action="store_true",
                        help="then again with Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (pip install "
                             "liger-kernel; CUDA): bf16 LoRA with --bf16-only, else the config as shipped")
    parser.add_argument("--compile", action="store_true",
                        help="then again with training.compile (each decoder layer compiled): with --bf16-only the "
                             "8-row run and the sweep's fastest settings, else the config as shipped")
    parser.add_argument("--bf16-only", action="store_true",
                        help="only bf16 LoRA: the attention check, the config's LoRA at 8 rows, and (8B) its sweep")
    parser.add_argument("--tiny", action="store_true", help="2-layer shapes (checks the script, measures nothing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="results file (default bench/results/gpu-training-<device>.json)")
    args = parser.parse_args()
    if args.bf16_only and args.longest_only:
        parser.error("--bf16-only and --longest-only measure different runs: give one of them")
    started = time.perf_counter()

    from llm_lora.config import load_config
    from llm_lora.model_loading import attention_for, quantization_config

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    slug = "tiny" if args.tiny else device_name.lower().replace("nvidia ", "").split()[0]
    suffix = "-longest" if args.longest_only else ""
    RESULTS = Path(args.out) if args.out else REPO / "bench" / "results" / f"gpu-training-{slug}{suffix}.json"
    peak_flops = matmul_rate(args.device)
    record = {
        "command": "python bench/gpu_training.py " + " ".join(sys.argv[1:]),
        "device": device_name,
        "measured_bf16_matmul_tflops": round(peak_flops / 1e12, 1),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if args.device == "cuda" else None,
        "versions": _versions(),
        "python": platform.python_version(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "rows": f"random tokens, log-normal lengths (median 300, 64 to the config's max_seq_length), loss on the last {COMPLETION_SHARE:.0%}",
        "runs": [],
    }
    _write(record)
    print(f"{device_name}: bf16 matmul {peak_flops / 1e12:.0f} TFLOP/s", flush=True)

    for shape in args.shapes:
        run_config = load_config(REPO / SHAPES[shape]["config"])
        train = run_config.training
        attention = attention_for(run_config.model, train if args.device == "cuda" else None)
        model = build_model(shape, args.tiny, args.device, attention)
        vocab = model.config.vocab_size
        steps = args.steps + args.warmup
        sweep = shape == "llama-3.1-8b" and not args.no_sweep
        most_rows = max([train.batch_size, BF16_ROWS, *(SWEEP_ROWS if sweep else []),
                         *(rows for rows, _ in BF16_SWEEP if sweep)])
        rows = sample_rows(most_rows * steps, run_config.data.max_seq_length, vocab, seed=1)
        measured = dict(model=model, run_config=run_config, steps=steps, warmup=args.warmup, device=args.device,
                        peak_flops=peak_flops, record=record)
        if not args.longest_only:
            attention_check(model, rows, args.device, record)
            # bf16 LoRA first, while the weights are still 16-bit: without checkpointing an 80 GB card
            # holds BF16_ROWS rows of the 8B shape.
            def bf16(count, every, suffix="", **extra):
                return project_variant(shape, rows=rows, method="lora", batch_size=count, gradient_checkpointing=every > 0,
                                       gradient_checkpointing_every_n_layers=max(every, 1), suffix=suffix,
                                       **extra, **measured)

            speeds = {(BF16_ROWS, 0): bf16(BF16_ROWS, 0)}
            for setting in BF16_SWEEP if sweep else []:
                speeds[setting] = bf16(*setting)
            fastest = sorted((setting for setting in speeds if speeds[setting] and setting != (BF16_ROWS, 0)),
                             key=lambda setting: -speeds[setting]["real_tokens_per_s"])[:REPEATED_BEST]
            repeated = [(BF16_ROWS, 0), *fastest]
            if args.compile and args.bf16_only:
                for setting in repeated:
                    bf16(*setting, suffix=", compiled layers", compile=True)
        if args.bf16_only:
            if args.liger and guarded(with_liger_kernels, f"{shape}: Liger kernels", record, model):
                for setting in repeated:
                    bf16(*setting, suffix=", Liger kernels")
            del model
            _free_memory()
            continue
        if args.device == "cuda" or args.tiny:
            quantize_in_place(model, quantization_config(train) if args.device == "cuda" else _cpu_nf4(), args.device)
        if shape == "llama-3.1-8b" and not args.longest_only:
            anchor_rows = sample_rows(ANCHOR_BATCH * steps, ANCHOR_LENGTH * 2, vocab, seed=2)
            guarded(anchor_variant, "anchor: HF+PEFT QLoRA recipe", record, model, anchor_rows, steps, args.warmup,
                    args.device, peak_flops, record)
            # The project's QLoRA at the anchor's tokens per step: packed rows, 1,024 real tokens.
            groups = _groups_of_tokens(sample_rows(200, run_config.data.max_seq_length, vocab, seed=3),
                                       ANCHOR_LENGTH * ANCHOR_BATCH, steps)
            project_variant(shape, rows=groups, label="1,024 tokens (the anchor's)", batch_size=1,
                            group_by_length=False, **measured)
        if not args.longest_only:
            project_variant(shape, rows=rows, label=f"{train.batch_size} rows ({SHAPES[shape]['config']})", **measured)
            for count in SWEEP_ROWS if sweep else []:
                project_variant(shape, rows=rows, batch_size=count, **measured)
            if args.compile:
                project_variant(shape, rows=rows, label=f"{train.batch_size} rows ({SHAPES[shape]['config']})",
                                suffix=", compiled layers", compile=True, **measured)
        if args.liger and not args.longest_only and guarded(with_liger_kernels, f"{shape}: Liger kernels", record, model):
            project_variant(shape, rows=rows, label=f"{train.batch_size} rows ({SHAPES[shape]['config']})",
                            suffix=", Liger kernels", **measured)
        if shape == "llama-3.1-8b" and args.longest_only:
            longest_sequence(model, run_config, vocab, args.lengths if not args.tiny else [256, 512], args.device,
                             record, started + args.budget_s)
        del model
        _free_memory()

    print(f"\n{'run':<88} {'tokens/s':>9} {'per step':>9} {'pad':>6} {'peak GiB':>9} {'MFU':>6}")
    for run in record["runs"]:
        if "error" in run:
            print(f"{run['name']:<88} {run['error'][:60]}")
            continue
        print(f"{run['name']:<88} {run['real_tokens_per_s']:>9} {run['real_tokens_per_step']:>9} "
              f"{run['padding_share']:>6.1%} {run.get('peak_allocated_gib', float('nan')):>9} "
              f"{run.get('model_flops_utilization', float('nan')):>6.1%}")
    for entry in record.get("longest_sequence_qlora", {}).get("tries", []):
        print("longest sequence:", entry)
    print(f"-> {RESULTS} ({time.perf_counter() - started:.0f} s)")


def with_liger_kernels(model) -> bool:
    """Swap the model's RMSNorm, rotary embedding and SwiGLU for Liger's fused Triton kernels, in place.

    The vocabulary projection and loss stay the project's (logits only where a token is trained), so
    Liger's fused linear cross-entropy is left off. Every later measurement on this model uses the
    kernels: run this last. Returns whether the model's architecture has Liger kernels.
    """
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    if not _has_liger_kernels(model):
        raise RuntimeError(f"no Liger kernels for model type {model.config.model_type!r}")
    return True


def _has_liger_kernels(model) -> bool:
    # Liger binds its RMSNorm forward to each norm module it patched, with its own attributes.
    return hasattr(getattr(getattr(model, "model", None), "norm", None), "casting_mode")


def _groups_of_tokens(rows: list[dict], tokens: int, count: int) -> list[list[dict]]:
    """`count` groups of whole rows with exactly `tokens` tokens each (the last row of a group cut short)."""
    groups, group, size = [], [], 0
    for row in rows:
        take = min(len(row["input_ids"]), tokens - size)
        group.append({key: value[:take] for key, value in row.items()})
        size += take
        if size == tokens:
            groups.append(group)
            group, size = [], 0
        if len(groups) == count:
            break
    return groups


def _cpu_nf4():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


if __name__ == "__main__":
    main()

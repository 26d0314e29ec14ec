"""The project's LoRA and QLoRA training next to unsloth's, on the same card, the same rows, in one run.

Both tools load the same random-weight model folder (the Llama-3.1-8B shape, written once by this
script with a tokenizer, since unsloth loads one) and train the same rows: `--rows-per-step` rows of
exactly `--row-length` tokens per optimizer step (no padding for either tool), the loss on the same
positions (the last 30% of each row, or every position with `--labels all`), LoRA r=16 alpha=32
dropout 0 on the seven projections, bf16. The project trains them packed into one sequence with its
varlen attention (the same per-row causal attention as unsloth's batch of rows); unsloth trains them
as a batch through its own patched model, its gradient checkpointing (which offloads to CPU) and
bitsandbytes' 8-bit AdamW, as its notebooks do.

Each tool runs in its own process, one per method (QLoRA 4-bit, then bf16 LoRA): unsloth patches
transformers on import and pins its own versions (transformers <= 5.17, trl <= 1.15, datasets < 5),
so it cannot share the project's environment, and the project does not depend on it. `--unsloth-path`
is the PYTHONPATH of unsloth's process, in place of the one this script runs with (a folder of
unpacked wheels over the machine's own torch and transformers; see README "Training speed and memory
on a GPU"). The project's process measures its set-up as shipped and with each
training lever (chunked_loss, offload_activations, optimizer: adamw_8bit) alone and together.

Per run: real tokens/s over the timed steps (after warm-up, the device synchronized), tokens per
step, labelled positions per step, peak allocated memory while training (weights included), final
loss. Then, per tool, the longest single row that trains one QLoRA step (loss on its last 4,096
tokens, the project's bench convention). Results go to bench/results/gpu-vs-unsloth-<device>.json
after every process, so a run cut short keeps what it measured.

    python bench/gpu_vs_unsloth.py --unsloth-path /tmp/unsloth-site            # both tools, both methods
    python bench/gpu_vs_unsloth.py --tools project --methods qlora               # the project's levers only
    python bench/gpu_vs_unsloth.py --tiny --device cpu --tools project --no-longest   # checks the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from gpu_training import (  # noqa: E402
    SHAPES, TINY, _begin, _stack, _versions, build_model, longest_trainable, matmul_rate, measure,
)
from llm_lora.tokenization import IGNORE_INDEX  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {"qlora": "configs/llama-3.1-8b.yaml", "lora": "configs/llama-3.1-8b-bf16.yaml"}
# The project's variants: training-section overrides on top of the method's config, at the shared shape.
LEVERS = {
    "as shipped": {},
    "chunked_loss": {"chunked_loss": True},
    "offload_activations": {"offload_activations": True},
    "adamw_8bit": {"optimizer": "adamw_8bit"},
    "all three": {"chunked_loss": True, "offload_activations": True, "optimizer": "adamw_8bit"},
}
LONG_LENGTHS = [16384, 32768, 49152, 65536, 98304, 131072]


def fixed_rows(count: int, length: int, vocab: int, labels: str, seed: int) -> list[dict]:
    """Rows of random tokens, all `length` long; labelled on the last 30% or on every position."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        prompt = 0 if labels == "all" else length - int(length * 0.3)
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def word_level_tokenizer(vocab: int):
    """A tokenizer of `vocab` made-up words (both tools load one from the model folder; no hub access)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{index}": index for index in range(vocab)}
    core = Tokenizer(models.WordLevel(words, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="w1", eos_token="w2", pad_token="w0",
                                   unk_token="w0", model_max_length=1 << 20)


def write_model(folder: Path, tiny: bool, device: str) -> None:
    """The 8B shape with random bf16 weights and a tokenizer, saved as a local model folder."""
    model = build_model("llama-3.1-8b", tiny, device, None)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, 0
    model.save_pretrained(folder, max_shard_size="5GB")
    word_level_tokenizer(model.config.vocab_size).save_pretrained(folder)
    del model


RESULT_MARK = "RESULT "  # a worker's result lines; the Trainer prints dicts of its own


def _emit(result: dict) -> None:
    print(RESULT_MARK + json.dumps(result), flush=True)


def _labelled_per_step(rows: list[dict], rows_per_step: int) -> int:
    return sum(sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows[:rows_per_step])


def _peak_memory(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


# ---------------------------------------------------------------- the project's process

def project_worker(options) -> list[dict]:
    """The project's loading, adapters and Trainer, as shipped and with each lever."""
    from llm_lora import attention
    from llm_lora.config import load_config
    from llm_lora.model_loading import load_model
    from llm_lora.training import CompletionLossTrainer, attach_lora, build_collator, build_training_arguments
    from gpu_training import flops_per_token, reset_base

    rows = json.loads(Path(options.rows).read_text())
    config = load_config(REPO / CONFIGS[options.method], check_files=False)
    shared = {"batch_size": options.rows_per_step, "gradient_accumulation_steps": 1, "group_by_length": False,
              "max_steps": options.steps + options.warmup, "logging_steps": 10_000, "eval_steps": None,
              "checkpoint_steps": None, "warmup_ratio": 0.0, "use_cpu": options.device == "cpu",
              # equal footing at equal tokens per step: both tools recompute activations
              "gradient_checkpointing": True, "gradient_checkpointing_every_n_layers": 1, "compile": False}
    if options.device == "cpu":
        shared["precision"] = "fp32" if options.method == "qlora" else "auto"
    config = config.model_copy(update={
        "model": config.model.model_copy(update={"name": options.model} | (
            {"attn_implementation": "sdpa"} if options.device == "cpu" else {})),
        "lora": config.lora.model_copy(update={"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS}),
        "data": config.data.model_copy(update={"packing": True}),
        "training": config.training.model_copy(update=shared)})
    if options.device == "cpu" and options.method == "qlora":  # bitsandbytes' 4-bit training needs CUDA
        config = config.model_copy(update={"training": config.training.model_copy(update={"method": "lora"})})
    _begin(options.device)
    model = load_model(config.model, training=config.training)
    model.config.use_cache = False
    peak_flops = matmul_rate(options.device)
    results = []
    for name in options.levers:
        settings = config.model_copy(update={"training": config.training.model_copy(update=LEVERS[name])})
        reset_base(model)
        _begin(options.device)
        peft_model = attach_lora(model, settings)
        try:
            with tempfile.TemporaryDirectory() as out:
                args = build_training_arguments(settings.training, Path(out))
                args.disable_tqdm = True
                chunked = settings.training.chunked_loss

                class Project(CompletionLossTrainer):
                    def __init__(self, *args, **kwargs):
                        super().__init__(*args, chunked_loss=chunked, **kwargs)

                collator = build_collator(None, True, boundaries=attention.in_use(model))
                result = measure(Project, peft_model, args, rows, collator, options.warmup, options.device,
                                 flops_per_token(peft_model, rows), peak_flops)
        except torch.OutOfMemoryError:
            result = {"error": "out of memory"}
        finally:
            peft_model.unload()
        result.update(tool="project", method=options.method, variant=name,
                      settings={key: getattr(settings.training, key) for key in (
                          "method", "gradient_checkpointing", "chunked_loss", "offload_activations", "optimizer")})
        _emit(result)
        results.append(result)
    if options.longest:
        settings = config.model_copy(update={"training": config.training.model_copy(
            update={**LEVERS["all three"], "batch_size": 1, "max_steps": 1})})

        def one_step(row):
            reset_base(model)
            peft_model = attach_lora(model, settings)
            try:
                with tempfile.TemporaryDirectory() as out:
                    args = build_training_arguments(settings.training, Path(out))
                    args.disable_tqdm = True
                    trainer = CompletionLossTrainer(model=peft_model, args=args, train_dataset=[row],
                                                    data_collator=build_collator(None, True, boundaries=attention.in_use(model)),
                                                    chunked_loss=True)
                    return float(trainer.train().training_loss)
            finally:
                peft_model.unload()

        tries = longest_trainable(one_step, options.lengths, model.config.vocab_size, options.device,
                        time.perf_counter() + options.budget_s)
        results.append({"tool": "project", "method": options.method, "longest": tries, "variant": "all three"})
        _emit(results[-1])
    return results


# ---------------------------------------------------------------- unsloth's process

def unsloth_worker(options) -> list[dict]:
    """unsloth's own loading, adapters, gradient checkpointing and 8-bit AdamW, through transformers' Trainer."""
    import unsloth  # noqa: F401  (first: it patches transformers and peft on import)
    from transformers import Trainer, TrainingArguments
    from unsloth import FastLanguageModel

    from gpu_training import flops_per_token

    rows = json.loads(Path(options.rows).read_text())
    quantized = options.method == "qlora"
    _begin(options.device)
    base, _ = FastLanguageModel.from_pretrained(
        model_name=options.model, max_seq_length=max(options.row_length, *options.lengths), dtype=torch.bfloat16,
        load_in_4bit=quantized, load_in_8bit=False, full_finetuning=False,
    )
    model = FastLanguageModel.get_peft_model(
        base, r=16, lora_alpha=32, lora_dropout=0, target_modules=TARGETS, bias="none",
        use_gradient_checkpointing="unsloth", random_state=0,
    )

    def arguments(out: str, steps: int, rows_per_step: int) -> TrainingArguments:
        return TrainingArguments(
            output_dir=out, per_device_train_batch_size=rows_per_step, gradient_accumulation_steps=1,
            max_steps=steps, learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0, bf16=True,
            optim="adamw_8bit", logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True,
            remove_unused_columns=False, dataloader_num_workers=0, seed=0,
        )

    _begin(options.device)
    peak_flops = matmul_rate(options.device)
    _begin(options.device)
    with tempfile.TemporaryDirectory() as out:
        try:
            result = measure(Trainer, model, arguments(out, options.steps + options.warmup, options.rows_per_step),
                             rows, _stack, options.warmup, options.device, flops_per_token(model, rows), peak_flops)
        except torch.OutOfMemoryError:
            result = {"error": "out of memory"}
    result.update(tool="unsloth", method=options.method, variant="unsloth", settings={
        "gradient_checkpointing": "unsloth (offloaded to CPU)", "optimizer": "adamw_8bit",
        "load_in_4bit": quantized})
    _emit(result)
    results = [result]
    if options.longest:
        def one_step(row):
            with tempfile.TemporaryDirectory() as out:
                trainer = Trainer(model=model, args=arguments(out, 1, 1), train_dataset=[row], data_collator=_stack)
                return float(trainer.train().training_loss)

        tries = longest_trainable(one_step, options.lengths, base.config.vocab_size, options.device,
                        time.perf_counter() + options.budget_s)
        results.append({"tool": "unsloth", "method": options.method, "longest": tries, "variant": "unsloth"})
        _emit(results[-1])
    return results


# ---------------------------------------------------------------- the run

def _worker_command(options, tool: str, method: str, model: Path, rows: Path, longest_run: bool) -> list[str]:
    command = [sys.executable, __file__, "--worker", tool, "--method", method, "--model", str(model),
               "--rows", str(rows), "--device", options.device, "--steps", str(options.steps),
               "--warmup", str(options.warmup), "--rows-per-step", str(options.rows_per_step),
               "--row-length", str(options.row_length), "--budget-s", str(options.budget_s),
               "--lengths", *map(str, options.lengths), "--levers", *options.levers]
    return command + (["--longest"] if longest_run else [])


def run_worker(command: list[str], env: dict) -> tuple[list[dict], str | None]:
    """Run one worker process; its results are the lines it printed after RESULT_MARK."""
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
    results = []
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            results.append(json.loads(line[len(RESULT_MARK):]))
        else:
            print(line, flush=True)
    return results, None if completed.returncode == 0 else f"exit status {completed.returncode}"


def table(runs: list[dict]) -> str:
    lines = [f"{'method':<6} {'tool, variant':<34} {'tokens/s':>9} {'per step':>9} {'labelled':>9} {'peak GiB':>9}"
             f" {'vs unsloth':>11}"]
    peers = {run["method"]: run for run in runs if run.get("tool") == "unsloth" and "real_tokens_per_s" in run}
    for run in runs:
        if "longest" in run:
            trained = [t["length"] for t in run["longest"] if t.get("trained")]
            lines.append(f"{run['method']:<6} {run['tool'] + ', longest QLoRA row':<34} {max(trained, default=0):>9}")
            continue
        label = f"{run['tool']}, {run['variant']}"
        if "real_tokens_per_s" not in run:
            lines.append(f"{run['method']:<6} {label:<34} {run.get('error', '?')}")
            continue
        peer = peers.get(run["method"])
        ratio = f"{run['real_tokens_per_s'] / peer['real_tokens_per_s']:.2f}x" if peer else "-"
        lines.append(f"{run['method']:<6} {label:<34} {run['real_tokens_per_s']:>9} {run['real_tokens_per_step']:>9}"
                     f" {run['labelled_per_step']:>9} {str(run.get('peak_allocated_gib')):>9} {ratio:>11}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", nargs="+", default=["project", "unsloth"], choices=["project", "unsloth"])
    parser.add_argument("--methods", nargs="+", default=["qlora", "lora"], choices=list(CONFIGS))
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--rows-per-step", type=int, default=4)
    parser.add_argument("--row-length", type=int, default=1024)
    parser.add_argument("--labels", default="last30", choices=["last30", "all"], help="loss positions of every row")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before timing starts")
    parser.add_argument("--lengths", type=int, nargs="+", default=LONG_LENGTHS,
                        help="single-row lengths tried for the longest QLoRA row")
    parser.add_argument("--budget-s", type=float, default=120, help="no new longest-row try after this many seconds")
    parser.add_argument("--no-longest", action="store_true", help="skip the longest QLoRA row")
    parser.add_argument("--unsloth-path", default=None,
                        help="PYTHONPATH of unsloth's process (in place of this one's, which holds the project's packages)")
    parser.add_argument("--tiny", action="store_true", help="2-layer shape (checks the script, measures nothing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", default=None, help="where the model folder and rows are written (default: a temp dir)")
    parser.add_argument("--out", default=None, help="results file (default bench/results/gpu-vs-unsloth-<device>.json)")
    # a worker process's own arguments
    parser.add_argument("--worker", choices=["project", "unsloth"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--longest", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        (project_worker if options.worker == "project" else unsloth_worker)(options)
        return

    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if options.device == "cuda" else platform.processor() or "cpu"
    slug = "tiny" if options.tiny else device_name.lower().replace("nvidia ", "").split()[0]
    results_path = Path(options.out) if options.out else BENCH / "results" / f"gpu-vs-unsloth-{slug}.json"
    architecture = dict(SHAPES["llama-3.1-8b"]["architecture"], **(TINY if options.tiny else {}))
    record = {
        "command": "python bench/gpu_vs_unsloth.py " + " ".join(sys.argv[1:]),
        "device": device_name,
        "versions": _versions(),
        "python": platform.python_version(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "shape": "llama-3.1-8b" + (" (tiny: 2 small layers)" if options.tiny else ""),
        "rows": (f"{options.rows_per_step} rows of {options.row_length} random tokens per step, loss on "
                 f"{'every position' if options.labels == 'all' else 'the last 30% of each row'}; the same rows for both"),
        "lora": "r=16 alpha=32 dropout 0 on q,k,v,o,gate,up,down; bf16",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(dir=options.workdir) as work:
        work = Path(work)
        write_model(work / "model", options.tiny, options.device)
        count = options.rows_per_step * (options.steps + options.warmup)
        rows = fixed_rows(count, options.row_length, architecture["vocab_size"], options.labels, seed=1)
        (work / "rows.json").write_text(json.dumps(rows))
        labelled = _labelled_per_step(rows, options.rows_per_step)
        for method in options.methods:
            for tool in options.tools:
                env = dict(os.environ)
                if tool == "unsloth":
                    # unsloth's own packages, not the project's (which may be newer than unsloth allows)
                    env["PYTHONPATH"] = options.unsloth_path or ""
                    env["HF_HUB_OFFLINE"] = "1"  # the model folder is local; nothing to ask the hub
                longest_run = method == "qlora" and not options.no_longest
                print(f"\n== {tool}, {method}", flush=True)
                results, failure = run_worker(
                    _worker_command(options, tool, method, work / "model", work / "rows.json", longest_run), env)
                for result in results:
                    result.setdefault("labelled_per_step", labelled)
                record["runs"].extend(results)
                if failure:
                    record["runs"].append({"tool": tool, "method": method, "variant": "process", "error": failure})
                results_path.write_text(json.dumps(record, indent=2) + "\n")
    print("\n" + table(record["runs"]))
    print(f"-> {results_path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

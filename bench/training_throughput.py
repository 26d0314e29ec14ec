"""Training throughput of the quickstart's LoRA set-up: vocabulary logits everywhere vs only where trained.

Trains the quickstart model (configs/quickstart.yaml) on its own prepared
rows for the same optimizer steps twice, from the same fresh adapter: once
with transformers' Trainer as is (logits and cross-entropy at every position),
once with the project's CompletionLossTrainer (logits only at the positions
whose next token is labelled). Reports real (non-pad) tokens/s and the loss
after the steps, and writes bench/results/training-throughput-<device>.json.

    python bench/training_throughput.py            # about 6 minutes on 2 CPU cores
    python bench/training_throughput.py --steps 10 --repeats 1

Run it with nothing else on the machine: the figure is the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from quickstart import cpu_model  # bench/ is on the path when this file runs as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per variant, interleaved")
    args = parser.parse_args()

    import torch
    from transformers import Trainer

    from llm_lora.config import load_config
    from llm_lora.data_preparation import prepare_splits
    from llm_lora.model_loading import load_model, load_tokenizer
    from llm_lora.training import (
        CompletionLossTrainer,
        _as_dataset,
        attach_lora,
        build_collator,
        build_training_arguments,
        resolve_precision,
    )

    config = load_config(REPO / args.config)
    training = config.training.model_copy(update={"max_steps": args.steps, "logging_steps": args.steps})
    tokenizer = load_tokenizer(config.model)
    rows = prepare_splits(config.data, tokenizer).splits["train"]
    rows = rows[: args.steps * training.batch_size * training.gradient_accumulation_steps]
    dataset = _as_dataset(rows)
    real_tokens = sum(len(row["input_ids"]) for row in rows)
    labelled = sum(sum(label != -100 for label in row["labels"][1:]) for row in rows)
    base = load_model(config.model, training=training)
    base.config.use_cache = False

    results: dict[str, list[dict]] = {"Trainer (all positions)": [], "CompletionLossTrainer": []}
    variants = {"Trainer (all positions)": Trainer, "CompletionLossTrainer": CompletionLossTrainer}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            for name, trainer_class in variants.items():
                torch.manual_seed(training.seed)
                model = attach_lora(base, config)
                trainer = trainer_class(
                    model=model,
                    args=build_training_arguments(training, Path(out)),
                    train_dataset=dataset,
                    data_collator=build_collator(tokenizer, config.data.packing),
                )
                trainer.args.disable_tqdm = True
                started = time.perf_counter()
                output = trainer.train()
                seconds = time.perf_counter() - started
                results[name].append(
                    {"seconds": round(seconds, 2), "tokens_per_s": round(real_tokens / seconds, 1),
                     "train_loss": round(float(output.training_loss), 5)}
                )
                print(name, results[name][-1], flush=True)
                base = model.unload()  # the bare base model again, for the next fresh adapter

    summary = {
        name: {"best_tokens_per_s": max(r["tokens_per_s"] for r in runs), "runs": runs} for name, runs in results.items()
    }
    speedup = summary["CompletionLossTrainer"]["best_tokens_per_s"] / summary["Trainer (all positions)"]["best_tokens_per_s"]
    device = "cuda" if torch.cuda.is_available() and not training.use_cpu else "cpu"
    record = {
        "command": "python bench/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
        "config": args.config,
        "model": config.model.name,
        "optimizer_steps": args.steps,
        "batch_size": training.batch_size,
        "rows": len(rows),
        "real_tokens": real_tokens,
        "labelled_share": round(labelled / real_tokens, 3),
        "precision": resolve_precision(training),
        "variants": summary,
        "speedup": round(speedup, 3),
        "machine": {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "cpu_model": cpu_model(),
                    "python": platform.python_version()},
        "versions": {name: version(name) for name in ("torch", "transformers", "peft", "accelerate")},
    }
    out_file = REPO / "bench" / "results" / f"training-throughput-{device}.json"
    out_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"speedup {speedup:.2f}x, labelled share {record['labelled_share']:.0%} -> {out_file}")


if __name__ == "__main__":
    main()

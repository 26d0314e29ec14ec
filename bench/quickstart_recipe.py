"""Train the quickstart with changed settings and score the adapter on its 100 test rows.

The quickstart pipeline's training and evaluation, without ZenML, one variant per
process run: what a recipe change buys in mean field accuracy and costs in time.
Each variant is a JSON object of section -> settings laid over configs/quickstart.yaml.

    python bench/quickstart_recipe.py '{}' '{"training": {"learning_rate": 0.002}}'

Appends one record per variant to bench/results/quickstart-recipes-cpu.json.
Times are only comparable between runs on a quiet machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "quickstart-recipes-cpu.json"


def run_variant(overrides: dict, workdir: Path) -> dict:
    """Prepare, train and evaluate one variant; returns its record."""
    from llm_lora.config import RunConfig, load_config
    from llm_lora.data_preparation import prepare_splits
    from llm_lora.evaluation import evaluate_model, generation_cap
    from llm_lora.model_loading import context_window, default_device, load_model, load_tokenizer
    from llm_lora.training import load_adapter, train_lora

    raw = load_config(REPO / "configs" / "quickstart.yaml").model_dump()
    for section, values in overrides.items():
        raw[section].update(values)
    config = RunConfig.model_validate(raw)
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_splits(config.data, tokenizer, context_window(config.model))
    started = time.perf_counter()
    trained = train_lora(config, prepared.splits["train"], prepared.splits["validation"], workdir, tokenizer=tokenizer)
    train_s = time.perf_counter() - started
    model = load_adapter(load_model(config.model, device=default_device()), trained.adapter_dir, merge=True)
    completions = [row["completion"] for rows in prepared.splits.values() for row in rows]
    cap = generation_cap(config.evaluation.max_new_tokens, tokenizer, completions)
    started = time.perf_counter()
    result = evaluate_model(model, tokenizer, prepared.splits["test"], config.data.system_prompt, config.evaluation,
                            cap.tokens)
    return {
        "overrides": overrides,
        "train_rows": len(prepared.splits["train"]),
        "optimizer_steps": trained.metrics["optimizer_steps"],
        "train_seconds": round(train_s, 1),
        "train_tokens_per_s": trained.metrics["train_tokens_per_s"],
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "max_new_tokens": cap.tokens,
        "metrics": {name: round(value, 4) for name, value in result.metrics.items() if isinstance(value, float)},
    }


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        with tempfile.TemporaryDirectory(prefix="recipe-") as workdir:
            print(json.dumps(run_variant(json.loads(sys.argv[2]), Path(workdir))))
        return
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    for variant in sys.argv[1:] or ["{}"]:
        # A process per variant: no state (threads, caches, seeds) carries from one to the next.
        done = subprocess.run([sys.executable, __file__, "--one", variant], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
        record = json.loads(done.stdout.strip().splitlines()[-1]) | {"commit": commit.strip()}
        print(json.dumps(record))
        records.append(record)
        RESULTS.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()

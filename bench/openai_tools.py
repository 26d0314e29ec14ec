"""An OpenAI function-calling file through the quickstart, with only `data:` changed, and a recorded baseline.

Runs, against one fresh ZenML store, as someone leaving OpenAI fine-tuning would:

1. `configs/quickstart.yaml` with its `data:` section pointed at `data/store_tools` (OpenAI's chat
   format: tools, tool calls, tool results, weight-0 turns), nothing else changed;
2. a second model of the same base trained on 120 of those rows (another registry name), whose answers on
   the test rows, given by batch inference, are written as a recorded-answers file with their token
   counts: the stand-in for a hosted fine-tune's recorded answers, which cannot be fetched here;
3. run 1's config again with `baselines.recorded` naming that file (priced at
   `--recorded-prices`, by default fine-tuned gpt-4o-mini's list prices per million tokens) and
   `cost.price_per_million_completion_tokens`: the steps that read nothing new come from the cache.

Writes every run's printout, wall time, metrics, promotion decision and worth-it report, with the
machine's facts, to bench/results/openai-tools-cpu.json.

    python bench/openai_tools.py     # about 40 minutes on 2 CPU cores
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
from importlib.metadata import version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from quickstart import cpu_flags, cpu_has_native_bf16, cpu_model  # noqa: E402

DATA = REPO / "data" / "store_tools"
STANDIN_ROWS = 120


def data_section(train_rows: int) -> dict:
    """The quickstart's data keys, pointed at the function-calling files (the rows carry their system prompt)."""
    return {
        "train_file": str(DATA / "train.jsonl"),
        "validation_file": str(DATA / "validation.jsonl"),
        "test_file": str(DATA / "test.jsonl"),
        "max_train_rows": train_rows,
        "max_validation_rows": 24,
        "max_test_rows": 100,
        "max_seq_length": "auto",
        "seed": 42,
    }


def write_config(path: Path, **changes) -> Path:
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for section, values in changes.items():
        config[section] = values if section == "data" else {**config.get(section, {}), **values}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(command: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result, wall


def read_last_run(env: dict) -> dict:
    read = subprocess.run([sys.executable, str(REPO / "bench" / "quickstart.py"), "--read-last-run"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    if read.returncode != 0:
        sys.exit(f"could not read the run back:\n{read.stderr[-3000:]}")
    return json.loads(read.stdout.strip().splitlines()[-1])


def finetune(config: Path, env: dict) -> dict:
    result, wall = run([sys.executable, "run.py", "--config", str(config)], env)
    record = read_last_run(env)
    record.update(printout=result.stdout.strip().splitlines(), wall_seconds=round(wall, 1), config=str(config.name))
    return record


def unanswered(rows: list[dict]) -> list[dict]:
    """Each test row without its final answer: what a client sends the model."""
    return [{**row, "messages": row["messages"][:-1]} for row in rows]


def recorded_line(row: dict, prediction: dict) -> dict:
    """A test row with the model's answer as its last message, as OpenAI's API returns one, plus usage."""
    calls = prediction.get("tool_calls")
    if calls:
        message = {"role": "assistant", "content": prediction.get("content") or None, "tool_calls": [
            {"id": f"call_{i + 1}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
            for i, call in enumerate(calls)]}
    else:
        message = {"role": "assistant", "content": prediction["output"]}
    return {**row, "messages": [*row["messages"][:-1], message],
            "usage": {"prompt_tokens": prediction["prompt_tokens"], "completion_tokens": prediction["new_tokens"]},
            "latency_s": prediction["latency_s"]}


def main(prices: tuple[float, float], completion_price: float) -> None:
    load_before = os.getloadavg()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="openai-tools-bench-") as home:
        home = Path(home)
        env = dict(os.environ, ZENML_CONFIG_PATH=str(home / "zenml"), ZENML_ANALYTICS_OPT_IN="false")
        started = time.perf_counter()
        # 1. The quickstart with only data: changed.
        main_config = write_config(home / "quickstart-store-tools.yaml", data=data_section(480))
        results["finetune"] = finetune(main_config, env)
        # 2. The stand-in for a hosted fine-tune, and its answers on the test rows.
        standin = write_config(home / "standin.yaml", data=data_section(STANDIN_ROWS),
                               registry={"model_name": "store-tools-standin", "tags": ["stand-in"]})
        results["standin"] = finetune(standin, env)
        test_rows = [json.loads(line) for line in (DATA / "test.jsonl").read_text().splitlines()]
        inputs = home / "test-inputs.jsonl"
        inputs.write_text("".join(json.dumps(row) + "\n" for row in unanswered(test_rows)))
        predictions = home / "standin-predictions.jsonl"
        predict = home / "predict.yaml"
        predict.write_text(yaml.safe_dump({"kind": "predict", "inference": {
            "model_name": "store-tools-standin", "version": "1", "input_file": str(inputs),
            "output_file": str(predictions), "batch_size": 50}}))
        _, predict_wall = run([sys.executable, "run.py", "--config", str(predict)], env)
        answers = [json.loads(line) for line in predictions.read_text().splitlines()]
        recorded = REPO / "bench" / "results" / "openai-tools-recorded-answers.jsonl"
        recorded.write_text("".join(json.dumps(recorded_line(row, answer)) + "\n"
                                    for row, answer in zip(test_rows, answers)))
        results["standin_answers"] = {"file": str(recorded.relative_to(REPO)), "rows": len(answers),
                                      "wall_seconds": round(predict_wall, 1)}
        # 3. Run 1 again, with the recorded answers as a baseline.
        with_recorded = write_config(
            home / "quickstart-store-tools-recorded.yaml", data=data_section(480),
            baselines={"recorded": [{"name": "hosted-ft", "answers_file": str(recorded),
                                     "price_per_million_prompt_tokens": prices[0],
                                     "price_per_million_completion_tokens": prices[1]}]},
            cost={"price_per_million_completion_tokens": completion_price})
        results["with_recorded"] = finetune(with_recorded, env)
        total = time.perf_counter() - started
    record = {
        "command": "python bench/openai_tools.py",
        "configs": {
            "finetune": "configs/quickstart.yaml with data: pointed at data/store_tools (480/24/100 rows)",
            "standin": f"the same with data.max_train_rows {STANDIN_ROWS} and registry.model_name store-tools-standin",
            "with_recorded": ("the first config plus baselines.recorded (hosted-ft: the stand-in's answers,"
                              f" priced {prices[0]} / {prices[1]} per million prompt / completion tokens) and"
                              f" cost.price_per_million_completion_tokens {completion_price}"),
        },
        "total_wall_seconds": round(total, 1),
        **results,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "native_bf16": cpu_has_native_bf16(),
            "cpu_flags": cpu_flags(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "versions": {name: version(name) for name in ("torch", "transformers", "peft", "accelerate", "zenml")},
    }
    out = REPO / "bench" / "results" / "openai-tools-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    tuned, base = results["finetune"]["finetuned"], results["finetune"]["base"]
    print(f"tool_call_accuracy base {base['tool_call_accuracy']:.3f} -> finetuned {tuned['tool_call_accuracy']:.3f};"
          f" promoted {results['finetune']['promotion']['promote']}; {total:.0f} s -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recorded-prices", type=float, nargs=2, default=(0.30, 1.20),
                        metavar=("PROMPT", "COMPLETION"),
                        help="the recorded model's price per million prompt and completion tokens")
    parser.add_argument("--completion-price", type=float, default=0.10,
                        help="cost.price_per_million_completion_tokens of the finetuned model")
    arguments = parser.parse_args()
    main(tuple(arguments.recorded_prices), arguments.completion_price)

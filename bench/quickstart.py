"""Time the quickstart end to end and record what it produced.

Runs `python run.py --config configs/quickstart.yaml` against a fresh ZenML
store (a temporary ZENML_CONFIG_PATH), the way a newcomer's first run goes,
and writes wall time, peak memory, training throughput and base vs finetuned
metrics to bench/results/quickstart-cpu.json.

    python bench/quickstart.py            # about 6 to 11 minutes on 2 CPU cores
    python bench/quickstart.py --runs 2   # twice, each against its own fresh store; every run recorded

The GGUF model conversion is cached outside the store (~/.cache/llm_lora);
run the quickstart once before benchmarking to leave it out of the figure.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = "configs/quickstart.yaml"


def run_once() -> dict:
    """The quickstart against a fresh ZenML store: its outputs, printout and wall time."""
    with tempfile.TemporaryDirectory(prefix="quickstart-bench-") as home:
        env = dict(os.environ, ZENML_CONFIG_PATH=str(Path(home) / "zenml"), ZENML_ANALYTICS_OPT_IN="false")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "run.py", "--config", CONFIG], cwd=REPO, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"quickstart failed:\n{result.stderr[-3000:]}")
        # Read the run back in a fresh process against the same store.
        read = subprocess.run(
            [sys.executable, __file__, "--read-last-run"], cwd=REPO, env=env, capture_output=True, text=True
        )
        if read.returncode != 0:
            sys.exit(f"could not read the run back:\n{read.stderr[-3000:]}")
        record = json.loads(read.stdout.strip().splitlines()[-1])
        record["printout"] = result.stdout.strip().splitlines()
        record["wall_seconds"] = round(wall, 1)
        return record


def main(runs: int = 1) -> None:
    load_before = os.getloadavg()[0]
    records = [run_once() for _ in range(runs)]
    load_after = os.getloadavg()[0]
    record = records[-1]
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # Every run's time and headline numbers; the rest of the file is the last run's.
    record["runs"] = [
        {"wall_seconds": r["wall_seconds"], "train_runtime_s": round(r["training"]["train_runtime_s"], 1),
         "mean_field_accuracy": r["finetuned"]["mean_field_accuracy"], "step_seconds": r["step_seconds"]}
        for r in records
    ]
    import yaml

    record.update(
        model=yaml.safe_load((REPO / CONFIG).read_text())["model"]["name"],
        command=f"python run.py --config {CONFIG}",
        peak_rss_gib=round(peak_kb / 2**20, 2),  # largest child process (Linux reports KiB)
        machine={
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "native_bf16": cpu_has_native_bf16(),  # AVX512-BF16 or AMX: training.precision auto picks bf16
            "python": platform.python_version(),
            # Other work on the machine shares the cores: 1-minute load average before and after.
            "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        },
        # What the figures were measured under, read here rather than written by hand.
        conditions={
            "training_precision": record["training"]["precision"],
            "runs": runs,
            "each_run": "against a fresh ZenML store (GGUF conversion cached outside it)",
        },
        versions={name: version(name) for name in ("torch", "transformers", "peft", "accelerate", "zenml")},
    )
    out = REPO / "bench" / "results" / "quickstart-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    tuned, base = record["finetuned"], record["base"]
    print(
        f"wall {record['wall_seconds']:.0f} s, peak {record['peak_rss_gib']} GiB, "
        f"mean_field_accuracy base {base['mean_field_accuracy']:.3f} -> finetuned {tuned['mean_field_accuracy']:.3f}, "
        f"valid JSON {tuned['valid_json_rate']:.3f}, promoted {record['promotion']['promote']}\n-> {out}"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> list[str]:
    """The CPU's vector-unit flags (avx*, amx*): what decides fp32 or bf16 training and llama.cpp's kernels."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(flag for flag in line.split(":", 1)[1].split() if flag.startswith(("avx", "amx")))
    except OSError:
        pass
    return []


def cpu_has_native_bf16() -> bool:
    sys.path.insert(0, str(REPO))
    from llm_lora.training import cpu_has_native_bf16 as check

    return check()


def read_last_run() -> None:
    """Print the last finetune run's outputs as one JSON line (run in the benchmark's store)."""
    sys.path.insert(0, str(REPO))  # the typed reports load as the project's classes
    from zenml.client import Client

    run = Client().get_pipeline("finetune").last_run

    def output(step: str, name: str):
        return run.steps[step].outputs[name][0].load()

    record = {
        "base": output("evaluate_base", "metrics"),
        "finetuned": output("evaluate_finetuned", "metrics"),
        "training": output("train_lora", "training_metrics"),
        "promotion": output("promote_model", "promotion_decision").as_metadata(),
        "comparison": output("compare_models", "comparison_summary").as_metadata(),
        "few_shot": output("evaluate_few_shot", "metrics") if "evaluate_few_shot" in run.steps else None,
        "recorded": output("evaluate_recorded", "recorded_metrics") if "evaluate_recorded" in run.steps else None,
        "worth_it": output("worth_it_report", "worth_it").model_dump(mode="json")
        if "worth_it_report" in run.steps else None,
        "step_seconds": {
            name: round((step.end_time - step.start_time).total_seconds(), 1) for name, step in run.steps.items()
        },
    }
    print(json.dumps(record))


def summary(record: dict) -> str:
    """README's sentence on the conditions and times, from a results file."""
    machine, runs = record["machine"], record["runs"]
    flags = ", ".join(machine.get("cpu_flags") or ["its vector flags not recorded"])
    load = machine.get("load_average_1m")
    precision = record["training"]["precision"]
    walls = " and ".join(f"{run['wall_seconds']:.0f} s" for run in runs)
    trains = sorted(run["train_runtime_s"] for run in runs)
    steps = runs[-1]["step_seconds"]
    return (f"On a {machine['cpu_count']}-core {machine['cpu_model']} ({flags}; native bf16: "
            f"{'yes' if machine['native_bf16'] else 'no'}, so `precision: auto` trained in {precision})"
            + (f", at a load average of {load[0]} before," if load else "") + f" the command took **{walls}** "
            f"({len(runs)} run{'s' if len(runs) > 1 else ''}, each against a fresh store; training "
            f"{trains[0]:.0f} to {trains[-1]:.0f} s at {record['training']['train_tokens_per_s']:.0f} tokens/s, "
            f"evaluations {steps['evaluate_base']:.0f} s zero-shot, {steps.get('evaluate_few_shot', 0):.0f} s 2-shot, "
            f"{steps['evaluate_finetuned']:.0f} s finetuned; {record['peak_rss_gib']} GiB peak), reaching "
            f"{record['finetuned']['mean_field_accuracy']:.3f} mean field accuracy.")


if __name__ == "__main__":
    if sys.argv[1:] == ["--read-last-run"]:
        read_last_run()
    elif sys.argv[1:] == ["--summary"]:
        print(summary(json.loads((REPO / "bench" / "results" / "quickstart-cpu.json").read_text())))
    else:
        main(int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 1)

"""Time the quickstart end to end and record what it produced.

Runs `python run.py --config configs/quickstart.yaml` against a fresh ZenML
store (a temporary ZENML_CONFIG_PATH), the way a newcomer's first run goes,
and writes wall time, peak memory, training throughput and base vs finetuned
metrics to bench/results/quickstart-cpu.json.

    python bench/quickstart.py            # about 6 to 11 minutes on 2 CPU cores
    python bench/quickstart.py --runs 2   # twice, each against its own fresh store; every run recorded
    python bench/quickstart.py --summary  # README's sentences, from the results file
    python bench/quickstart.py --printout # README's printout block, from the results file

The GGUF model conversion is cached outside the store (~/.cache/llm_lora), so
the runs leave it out; it is timed once on its own, into an empty cache. After
the last run, the same config with a price and a promotion threshold changed
runs again in that run's store: what ZenML's cache leaves to re-run.
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


# The cached re-run's changes: a price (read by the worth-it report) and a threshold (read by promotion).
RERUN_CHANGES = {"cost": {"price_per_million_prompt_tokens": 0.5}, "promotion": {"min_gain_over_base": 0.1}}


def _timed_run(config: str | Path, env: dict) -> dict:
    """`python run.py --config CONFIG` in the store `env` names, then read back from that store."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{config} failed:\n{result.stderr[-3000:]}")
    read = subprocess.run(  # in a fresh process against the same store
        [sys.executable, __file__, "--read-last-run"], cwd=REPO, env=env, capture_output=True, text=True
    )
    if read.returncode != 0:
        sys.exit(f"could not read the run back:\n{read.stderr[-3000:]}")
    record = json.loads(read.stdout.strip().splitlines()[-1])
    record["printout"] = result.stdout.strip().splitlines()
    record["wall_seconds"] = round(wall, 1)
    return record


def run_once(rerun: bool = False) -> dict:
    """The quickstart against a fresh ZenML store: its outputs, printout and wall time; with `rerun`, also the
    same config with RERUN_CHANGES run after it in the same store (under "cached_rerun")."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="quickstart-bench-") as home:
        env = dict(os.environ, ZENML_CONFIG_PATH=str(Path(home) / "zenml"), ZENML_ANALYTICS_OPT_IN="false")
        record = _timed_run(CONFIG, env)
        if rerun:
            config = yaml.safe_load((REPO / CONFIG).read_text())
            for section, values in RERUN_CHANGES.items():
                config.setdefault(section, {}).update(values)
            changed = Path(home) / "quickstart-changed.yaml"
            changed.write_text(yaml.safe_dump(config, sort_keys=False))
            again = _timed_run(changed, env)
            record["cached_rerun"] = {
                "changes": RERUN_CHANGES, "wall_seconds": again["wall_seconds"],
                "pipeline_seconds": again["pipeline_seconds"], "steps_run": again["steps_run"],
                "steps_cached": again["steps_cached"],
            }
        return record


def time_dequantization() -> dict:
    """The quickstart GGUF's one-time conversion to float32 safetensors, into an empty cache, in a fresh Python
    (imports included: that is what the first run pays)."""
    with tempfile.TemporaryDirectory(prefix="quickstart-bench-cache-") as cache:
        code = ("import sys, time; from pathlib import Path; sys.path.insert(0, '.');"
                "from llm_lora.model_loading import convert_gguf, resolve_model_source;"
                "import yaml; name = yaml.safe_load(open(sys.argv[1]))['model']['name'];"
                "started = time.perf_counter(); convert_gguf(Path(resolve_model_source(name).location));"
                "print(round(time.perf_counter() - started, 1))")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code, CONFIG], cwd=REPO, capture_output=True, text=True,
                                env=dict(os.environ, LLM_LORA_CACHE=cache))
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"the GGUF conversion failed:\n{result.stderr[-3000:]}")
        return {"convert_seconds": float(result.stdout.split()[-1]), "process_seconds": round(wall, 1)}


def main(runs: int = 1) -> None:
    load_before = os.getloadavg()[0]
    dequantization = time_dequantization()
    records = [run_once(rerun=index == runs - 1) for index in range(runs)]
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
        dequantization=dequantization,
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
        "pipeline_seconds": round((run.end_time - run.start_time).total_seconds(), 1),
        "steps_run": sorted(name for name, step in run.steps.items() if step.status.value == "completed"),
        "steps_cached": sorted(name for name, step in run.steps.items() if step.status.value == "cached"),
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


def printout(record: dict) -> str:
    """README's block: the last run's printout from its metric table to its run name (the name's date left out)."""
    lines = record["printout"]
    start = next(i for i, line in enumerate(lines) if line.startswith("metric "))
    end = next(i for i, line in enumerate(lines) if line.startswith("run:"))
    return "\n".join([*lines[start:end], "run:      finetune-<date>-<time>"])


def cache_summary(record: dict) -> str:
    """README's sentences on the cached re-run and the GGUF conversion, from a results file."""
    rerun, dequantization = record["cached_rerun"], record["dequantization"]
    changes = " and ".join(f"`{section}.{key}: {value}`" for section, values in rerun["changes"].items()
                           for key, value in values.items())
    return (f"In the same run's store the quickstart took {record['wall_seconds']:.0f} s; the same config with "
            f"{changes} then took {rerun['wall_seconds']:.0f} s (the pipeline itself {rerun['pipeline_seconds']} s): "
            f"{', '.join(rerun['steps_run'])} ran, the other {len(rerun['steps_cached'])} steps came from the cache.\n"
            f"The GGUF model is de-quantized once ({dequantization['convert_seconds']:.0f} s, "
            f"{dequantization['process_seconds']:.0f} s with the imports of a fresh process)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--read-last-run"]:
        read_last_run()
    elif sys.argv[1:] == ["--printout"]:
        print(printout(json.loads((REPO / "bench" / "results" / "quickstart-cpu.json").read_text())))
    elif sys.argv[1:] == ["--summary"]:
        record = json.loads((REPO / "bench" / "results" / "quickstart-cpu.json").read_text())
        print(summary(record))
        print(cache_summary(record))
    else:
        main(int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 1)

"""The quickstart with every export on: each file's score in its own engine beside the PyTorch evaluation.

Runs `python run.py --config <quickstart + export>` against a fresh ZenML store, the
quickstart's config with

    export: {formats: [merged, gguf], dtype: float32, gguf_types: [f16, q8_0, q4_0, q4_k_m]}

and writes what the export steps measured (score, difference, identical answers,
tokenizer agreement, tokens/s, size, bits per weight) to bench/results/export-parity-cpu.json.

    python bench/export_parity.py     # about 12 minutes on 2 CPU cores
"""

from __future__ import annotations

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
CONFIG = REPO / "configs" / "quickstart.yaml"
EXPORT = {"formats": ["merged", "gguf"], "dtype": "float32", "gguf_types": ["f16", "q8_0", "q4_0", "q4_k_m"]}
RESULT = REPO / "bench" / "results" / "export-parity-cpu.json"


def read_last_run() -> None:
    """Print the last finetune run's export report and step times as one JSON line (run in the bench's store)."""
    from zenml.client import Client

    run = Client().get_pipeline("finetune").last_run
    report = run.steps["export_gguf"].outputs["export_report"][0].load()
    seconds = {name: round((step.end_time - step.start_time).total_seconds(), 1)
               for name, step in run.steps.items() if step.end_time and step.start_time}
    print(json.dumps({"report": report.model_dump(), "step_seconds": seconds,
                      "finetuned": run.steps["evaluate_finetuned"].outputs["metrics"][0].load()}))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="export-bench-") as home:
        config = yaml.safe_load(CONFIG.read_text())
        config["export"] = EXPORT
        config_path = Path(home) / "quickstart-export.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = dict(os.environ, ZENML_CONFIG_PATH=str(Path(home) / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
                   PYTHONPATH=str(REPO))
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "run.py", "--config", str(config_path)], cwd=REPO, env=env,
                                capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"run failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        read = subprocess.run([sys.executable, __file__, "--read-last-run"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if read.returncode != 0:
            sys.exit(f"could not read the run back:\n{read.stderr[-3000:]}")
        record = json.loads(next(line for line in reversed(read.stdout.splitlines()) if line.startswith("{")))
    record.update(
        command="python bench/export_parity.py",
        config=f"configs/quickstart.yaml with export: {json.dumps(EXPORT)}",
        wall_seconds=round(wall, 1),
        machine={"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version()},
        versions={name: version(name) for name in ("llama-cpp-python", "torch", "transformers", "gguf")},
        printout=result.stdout.strip().splitlines(),
    )
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    report = record["report"]
    print(f"PyTorch evaluation: {report['metric']} {report['pytorch_score']:.3f} on {report['rows']} rows")
    for check in report["checks"]:
        print(f"{check['format']:7} {check['type']:8} {check['engine']:12} {check['score']:.3f} "
              f"({check['difference']:+.3f}) same answers {check['same_answers']}/{report['rows']} "
              f"{check['tokens_per_second']:.1f} tokens/s {check['size_mb']} MB"
              + (f" {check['bits_per_weight']} bits/weight" if check["bits_per_weight"] else ""))
    print(f"wrote {RESULT.relative_to(REPO)} ({wall:.0f} s)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--read-last-run"]:
        read_last_run()
    else:
        main()

"""Time the quickstart end to end and record what it produced.

Runs `python run.py --config configs/quickstart.yaml` against a fresh ZenML
store (a temporary ZENML_CONFIG_PATH), the way a newcomer's first run goes,
and writes wall time, peak memory, training throughput and base vs finetuned
metrics to bench/results/quickstart-cpu.json.

    python bench/quickstart.py            # about 8 minutes on 2 CPU cores

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


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="quickstart-bench-") as home:
        env = dict(os.environ, ZENML_CONFIG_PATH=str(Path(home) / "zenml"), ZENML_ANALYTICS_OPT_IN="false")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "run.py", "--config", CONFIG], cwd=REPO, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if result.returncode != 0:
            sys.exit(f"quickstart failed:\n{result.stderr[-3000:]}")
        env_script = (
            "from zenml.client import Client\n"
            "import json\n"
            "run = Client().get_pipeline(name_id_or_prefix='finetune').last_run\n"
            "out = lambda s, n: run.steps[s].outputs[n][0].load()\n"
            "print(json.dumps({'base': out('evaluate_base', 'metrics'),"
            " 'finetuned': out('evaluate_finetuned', 'metrics'),"
            " 'training': out('train_lora', 'training_metrics'),"
            " 'promotion': out('promote_model', 'promotion_decision'),"
            " 'step_seconds': {s.name: (s.end_time - s.start_time).total_seconds() for s in run.steps.values()}}))\n"
        )
        read = subprocess.run([sys.executable, "-c", env_script], cwd=REPO, env=env, capture_output=True, text=True)
        if read.returncode != 0:
            sys.exit(f"could not read the run back:\n{read.stderr[-3000:]}")
        record = json.loads(read.stdout.strip().splitlines()[-1])
    record.update(
        command=f"python run.py --config {CONFIG}",
        wall_seconds=round(wall, 1),
        peak_rss_gib=round(peak_kb / 2**20, 2),  # largest child process (Linux reports KiB)
        machine={
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
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


if __name__ == "__main__":
    main()

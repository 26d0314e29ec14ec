"""Time the command line's answers that load no model: `run.py --help` and a dry run of the quickstart config.

Each command is timed as a whole process (a fresh Python, as a user's shell starts it), several runs after one
warm-up, against a ZenML store of its own. With `--before REF`, the same commands from a checkout of that git
revision run in turn with this tree's (A B A B ...), so both sides see the same machine; the median of each
and the ratio per pair go to bench/results/cli-startup-cpu.json with the machine's facts.

    python bench/cli_startup.py --before b3d9497      # about a minute on 2 cores
    python bench/cli_startup.py --summary             # README's sentence, from the results file
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import cpu_flags, cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "cli-startup-cpu.json"
COMMANDS = {
    "help": ["run.py", "--help"],
    "dry_run_quickstart": ["run.py", "--config", "configs/quickstart.yaml", "--dry-run"],
}
HEAVY = ("torch", "transformers", "evaluate", "datasets", "zenml", "peft")


def timed(tree: Path, args: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} in {tree} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def heavy_imports(tree: Path, args: list[str], env: dict) -> list[str]:
    """The heavy libraries the command imports (from `python -X importtime`)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=tree, env=env, capture_output=True,
                            text=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in imported]


def measure(trees: dict[str, Path], runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as home:
        env = dict(os.environ, ZENML_CONFIG_PATH=str(Path(home) / "zenml"), ZENML_ANALYTICS_OPT_IN="false")
        figures = {}
        for name, args in COMMANDS.items():
            for tree in trees.values():  # warm-up: the file cache, and .pyc files written once
                timed(tree, args, env)
            seconds = {side: [] for side in trees}
            for _ in range(runs):
                for side, tree in trees.items():
                    seconds[side].append(timed(tree, args, env))
            figures[name] = {
                "command": "python " + " ".join(args),
                **{side: {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
                          "max_s": round(max(values), 3), "runs_s": [round(v, 3) for v in values],
                          "heavy_imports": heavy_imports(trees[side], args, env)}
                   for side, values in seconds.items()},
            }
            if len(trees) == 2:
                ratios = [before / after for before, after in zip(seconds["before"], seconds["after"])]
                figures[name]["before_over_after_median"] = round(statistics.median(ratios), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also time the same commands at this git revision")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--summary", action="store_true", help="print README's sentence from the results file")
    options = parser.parse_args()
    if options.summary:
        print(summary(json.loads(RESULTS.read_text())))
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cli-bench-tree-") as scratch:
        trees = {"after": REPO}
        revision = None
        if options.before:
            before = Path(scratch) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(before), options.before], cwd=REPO, check=True,
                           capture_output=True)
            revision = subprocess.run(["git", "rev-parse", "--short", options.before], cwd=REPO, check=True,
                                      capture_output=True, text=True).stdout.strip()
            trees = {"before": before, "after": REPO}
        try:
            figures = measure(trees, options.runs)
        finally:
            if options.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["before"])], cwd=REPO)
    after = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    record = {
        "what": "whole-process wall time of run.py answers that load no model; a fresh Python each run",
        "runs": options.runs,
        "before_revision": revision,
        "after_revision": after.stdout.strip() + (" with uncommitted changes" if dirty else ""),
        "figures": figures,
        "machine": {
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
            "load_average_1m_before": round(load_before[0], 2), "load_average_1m_after": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "versions": {name: version(name) for name in ("torch", "transformers", "zenml", "click", "pydantic")},
        },
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(summary(record))


def summary(record: dict) -> str:
    """README's sentence, from the results file."""
    machine, figures = record["machine"], record["figures"]

    def side(name: str, which: str) -> str:
        figure = figures[name][which]
        loaded = ", ".join(figure["heavy_imports"]) or "none of torch, transformers, ZenML"
        return f"{figure['median_s']:.2f} s (imports: {loaded})"

    parts = []
    for name, label in (("help", "`python run.py --help`"), ("dry_run_quickstart", "a dry run of the quickstart config")):
        text = f"{label} answers in {side(name, 'after')}"
        if "before" in figures[name]:
            text += (f", against {side(name, 'before')} at {record['before_revision']}"
                     f" ({figures[name]['before_over_after_median']}x)")
        parts.append(text)
    return (f"On a {machine['cpu_count']}-core {machine['cpu_model']} (load average"
            f" {machine['load_average_1m_before']} before), median of {record['runs']} runs each: "
            + "; ".join(parts) + ".")


if __name__ == "__main__":
    main()

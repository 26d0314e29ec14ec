"""A finetune run started from a step: `run.py` in a process of its own, and what its promotion gate decided."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from zenml.client import Client
from zenml.logger import get_logger

from llm_lora.monitoring import RetrainResult

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def run_finetune(config_file: Path) -> RetrainResult:
    """Run `python run.py --config <config_file>` and read its run's promotion decision from the store.

    A process of its own: ZenML does not run a pipeline inside another pipeline's step, and run.py
    is what a person would run (the same checks, the same stack: the environment is passed on).
    Its output goes to this step's log as it comes.
    """
    command = [sys.executable, str(REPO_ROOT / "run.py"), "--config", str(config_file)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    tail: deque[str] = deque(maxlen=200)
    for line in process.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        logger.info("finetune | %s", line)
    process.wait()
    names = [match.group(1) for line in tail if (match := re.match(r"run:\s+(\S+)$", line))]
    if process.returncode != 0:
        error = next((line for line in reversed(tail) if line.strip()), f"exit status {process.returncode}")
        return RetrainResult(started=True, run=names[-1] if names else None, error=error.removeprefix("Error: "))
    if not names:
        return RetrainResult(started=True, error="run.py finished without naming its run")
    run = Client().get_pipeline_run(names[-1])
    record = run.steps["promote_model"].outputs["promotion_decision"][0].load()
    return RetrainResult(started=True, run=run.name, version=run.model_version.name if run.model_version else None,
                         stage=record.new_stage, promotion=record.reason)

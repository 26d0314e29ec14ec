"""Schedules: refused in one line on the local orchestrator, handed to an orchestrator that can schedule."""

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
ZENML = str(Path(sys.executable).parent / "zenml")
pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("zenml-schedule")
    return dict(os.environ, ZENML_CONFIG_PATH=str(home / "config"), ZENML_ANALYTICS_OPT_IN="false", COLUMNS="200",
                PYTHONPATH=str(REPO))


@pytest.fixture
def config(tmp_path, tiny_model_dir, support_rows):
    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 8), ("validation", 2), ("test", 2)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in support_rows[split][:count]))
    return write_config(tmp_path / "run.yaml", tiny_model_dir, data, registry={"model_name": "weekly"})


def _run(args, env):
    command = args if args[0] == ZENML else [sys.executable, *args]
    return run_tree(command, cwd=REPO, env=env, timeout=600)


def test_local_orchestrator_cannot_schedule(config, env):
    result = _run(["run.py", "--config", str(config), "--schedule", "0 3 * * 1"], env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: --schedule: stack 'default' runs on orchestrator 'default' (flavor local)")
    assert "kubernetes, vertex, sagemaker" in last and "Traceback" not in result.stdout + result.stderr


def test_malformed_cron_is_named(config, env):
    result = _run(["run.py", "--config", str(config), "--schedule", "every monday"], env)
    assert result.returncode == 1
    assert "Error: --schedule: 'every monday' is not a cron expression" in result.stderr.strip().splitlines()[-1]


def test_unknown_stack_is_named(config, env):
    result = _run(["run.py", "--config", str(config), "--stack", "nope"], env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: --stack: no ZenML stack 'nope' (zenml stack list)"


def test_dry_run_checks_the_stack_and_the_schedule_too(config, env):
    """A dry run answers for everything the real command would refuse before running: a stack that does
    not exist, a cron that is not one, an orchestrator that cannot schedule."""
    for args, expected in (
        (["--stack", "nope"], "Error: --stack: no ZenML stack 'nope'"),
        (["--schedule", "every monday"], "Error: --schedule: 'every monday' is not a cron expression"),
        (["--schedule", "0 3 * * 1"], "Error: --schedule: stack 'default' runs on orchestrator 'default'"),
    ):
        result = _run(["run.py", "--config", str(config), "--dry-run", *args], env)
        assert result.returncode == 1, result.stdout
        assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-500:]
    result = _run(["run.py", "--config", str(config), "--dry-run", "--stack", "default"], env)
    assert result.returncode == 0 and "valid (dry run: config, model files, stack, data rows checked" in result.stdout


def test_schedule_reaches_a_scheduling_orchestrator(config, env, tmp_path):
    record = tmp_path / "submitted.jsonl"
    for command in (
        [ZENML, "orchestrator", "flavor", "register", "tests.recording_orchestrator.RecordingOrchestratorFlavor"],
        [ZENML, "orchestrator", "register", "recorder", "--flavor=recording", f"--path={record}"],
        [ZENML, "stack", "register", "weekly-stack", "-o", "recorder", "-a", "default"],
    ):
        done = _run(command, env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = _run(["run.py", "--config", str(config), "--schedule", "0 3 * * 1", "--stack", "weekly-stack"], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Scheduled: finetune" in result.stdout and "on stack 'weekly-stack'" in result.stdout
    (submitted,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert submitted["cron"] == "0 3 * * 1" and submitted["pipeline"] == "finetune"
    assert submitted["stack"] == "weekly-stack" and "train_lora" in submitted["steps"]
    assert submitted["schedule_name"] == "weekly-0 3 * * 1"
    # --stack applied to this command only: the active stack is still the default one.
    active = _run([ZENML, "stack", "describe"], env)
    assert "'default' stack (ACTIVE)" in active.stdout + active.stderr

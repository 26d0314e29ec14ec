"""The monitor pipeline on a real ZenML store: an unchanged window is nothing to do; planted drift and a
planted regression retrain, the finetune run starts and its promotion decision is recorded.

The production version is the tiny model taught one constant answer (`{"ok": true}`), so its promoted
score is 1.0 and new labelled rows that want another answer are a regression it surely has. The request
records are the deployment's (`request_record`), their prompt lengths counted as the deployment counts them.
"""

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from llm_lora.config import load_config
from llm_lora.inference import inference_prompts
from llm_lora.serving import append_request_log, request_record
from tests.conftest import run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "monitored"
pytestmark = pytest.mark.pipeline

STATE = """
import json, sys
from zenml.client import Client
client = Client()
runs = client.list_pipeline_runs(sort_by="asc:created", size=100).items
versions = {str(v.number): {"stage": v.stage, "metadata": {k: v.run_metadata.get(k) for k in
            ("promotion", "monitor", "monitor_retrain")}, "artifacts": sorted(v.data_artifact_ids)}
            for v in client.list_model_versions(sys.argv[1]).items}
print(json.dumps({"runs": [[r.pipeline.name, r.name, str(r.status)] for r in runs], "versions": versions}))
"""


def _run(args, env, timeout=900):
    return run_tree([sys.executable, *args], cwd=REPO, env=env, timeout=timeout)


def _state(env) -> dict:
    result = _run(["-c", STATE, MODEL_NAME], env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rows(rows, answer):
    return "".join(json.dumps({"prompt": row["prompt"], "completion": answer}) + "\n" for row in rows)


@pytest.fixture(scope="module")
def emails():
    with (REPO / "data" / "support_emails" / "test.jsonl").open() as handle:
        return [json.loads(line) for line in handle][:200]


@pytest.fixture(scope="module")
def production(tmp_path_factory, tiny_model_dir, zenml_env, emails):
    """A finetune config whose version 1 answers `{"ok": true}` to every email, promoted to production."""
    folder = tmp_path_factory.mktemp("monitored")
    data = folder / "data"
    data.mkdir()
    for split, rows in (("train", emails[:40]), ("validation", emails[40:44]), ("test", emails[44:56])):
        (data / f"{split}.jsonl").write_text(_rows(rows, '{"ok": true}'))
    config = write_config(folder / "finetune.yaml", tiny_model_dir, data, registry={"model_name": MODEL_NAME},
                          training={"max_steps": 30, "batch_size": 8, "learning_rate": 1e-2, "precision": "fp32",
                                    "logging_steps": 10})
    result = _run(["run.py", "--config", str(config)], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage production (promoted)" in result.stdout, result.stdout[-2000:]
    return config


def _monitor_config(folder: Path, finetune: Path, log: Path, labelled: Path) -> Path:
    path = folder / "monitor.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "monitor",
        "monitor": {"model_name": MODEL_NAME, "request_log": str(log), "window_hours": 24},
        "new_rows": {"path": str(labelled)},
        "thresholds": {"min_score_rows": 8, "min_new_rows": 1000, "drift_min_inputs": 30},
        "retrain": {"finetune_config": str(finetune), "data_folder": str(folder / "retrain")},
    }))
    return path


def _write_requests(log: Path, finetune: Path, tokenizer, texts: list[str], parsed) -> None:
    """One deployment record per text, its prompt counted in tokens as the deployment counts it."""
    config = load_config(finetune)
    prompts = inference_prompts(tokenizer, [("", None, (("user", text),)) for text in texts], config)
    now = datetime.now(timezone.utc)
    for i, prompt in enumerate(prompts):
        ok = parsed(i)
        record = request_record({
            "model_version": f"{MODEL_NAME} 1 (production)", "latency_s": 0.3, "queue_s": 0.0, "parsed_rate": float(ok),
            "results": [{"parsed": ok, "hit_cap": False,
                         "prompt_tokens": len(tokenizer(prompt, add_special_tokens=False)["input_ids"])}],
        })
        record["time"] = (now - timedelta(minutes=i)).isoformat(timespec="milliseconds")
        append_request_log(log, record)


def test_an_unchanged_window_is_nothing_to_do(production, zenml_env, tokenizer, emails, tmp_path):
    # Emails like the training rows, all answered with JSON; new labelled rows the version gets right.
    log = tmp_path / "requests.jsonl"
    _write_requests(log, production, tokenizer, [row["prompt"] for row in emails[100:160]], parsed=lambda i: True)
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "batch-001.jsonl").write_text(_rows(emails[160:170], '{"ok": true}'))
    before = _state(zenml_env)

    result = _run(["run.py", "--config", str(_monitor_config(tmp_path, production, log, labelled))], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\ndecision: nothing to do: 60 requests (60 inputs), 0 refused" in result.stdout, result.stdout[-3000:]
    assert "score:    mean_field_accuracy 1.0000 on the new rows vs 1.0000" in result.stdout
    assert "no input-length drift" in result.stdout and "retrain:" not in result.stdout
    after = _state(zenml_env)
    finetunes = [run for run in after["runs"] if run[0] == "finetune"]
    assert finetunes == [run for run in before["runs"] if run[0] == "finetune"]  # no training run
    version = after["versions"]["1"]
    assert version["metadata"]["monitor"]["action"] == "nothing" and version["metadata"]["monitor_retrain"] is None
    assert {"monitor_report", "monitor_decision", "traffic_check", "score_check"} <= set(version["artifacts"])


def test_drift_and_a_regression_retrain(production, zenml_env, tokenizer, emails, tmp_path):
    # Planted drift: every input three emails long, and half the answers do not parse.
    log = tmp_path / "requests.jsonl"
    long_texts = ["\n\n".join(row["prompt"] for row in emails[i:i + 3]) for i in range(100, 160)]
    _write_requests(log, production, tokenizer, long_texts, parsed=lambda i: i % 2 == 0)
    # Planted regression: new labelled rows whose answer is not the one the version gives.
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "batch-001.jsonl").write_text(_rows(emails[170:180], '{"ok": false}'))

    result = _run(["run.py", "--config", str(_monitor_config(tmp_path, production, log, labelled))], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "\ndecision: retrain: mean_field_accuracy 0.0000 on 10 new rows vs 1.0000" in out, out[-3000:]
    assert "parse rate 0.500 is below 0.950" in out and "input lengths drifted" in out
    retrain = next(line for line in out.splitlines() if line.startswith("retrain:  finetune run finetune-"))
    assert ": version 2, stage " in retrain
    state = _state(zenml_env)
    finetunes = [run for run in state["runs"] if run[0] == "finetune"]
    assert len(finetunes) == 2 and finetunes[-1][2] == "completed" and finetunes[-1][1] in retrain
    promotion = state["versions"]["2"]["metadata"]["promotion"]
    assert promotion["reason"] in retrain and promotion["new_stage"] in ("production", "staging", "none")
    watched = state["versions"]["1"]["metadata"]
    assert watched["monitor"]["action"] == "retrain" and watched["monitor_retrain"]["run"] == finetunes[-1][1]
    # The retrain trained on the new rows first, then the finetune config's own.
    (written,) = (tmp_path / "retrain").iterdir()
    train = [json.loads(line) for line in (written / "train.jsonl").read_text().splitlines()]
    assert len(train) == 50 and train[0]["messages"][-1]["content"] == '{"ok": false}'


def test_bad_monitor_input_is_one_line(production, zenml_env, emails, tmp_path):
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    log = tmp_path / "requests.jsonl"
    config = _monitor_config(tmp_path, production, log, labelled)

    def error(config_path) -> str:
        result = _run(["run.py", "--config", str(config_path), "--dry-run"], zenml_env, timeout=300)
        assert result.returncode == 1, result.stdout[-2000:]
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr
        return lines[-1]

    assert error(config).startswith(f"Error: monitor.request_log: {log} not found; set the deployment's")
    old = {"time": (datetime.now(timezone.utc) - timedelta(days=3)).isoformat(), "route": "chat", "status": 200,
           "model_version": "m", "inputs": 1, "latency_s": 1.0, "queue_s": 0.0, "parsed": 1, "parsed_rate": 1.0,
           "hit_cap": 0}
    log.write_text(json.dumps(old) + "\n")
    assert error(config).startswith(f"Error: {log}: no requests between ")
    old["time"] = datetime.now(timezone.utc).isoformat()
    log.write_text(json.dumps(old) + "\n")
    (labelled / "batch-001.jsonl").write_text(json.dumps({"email": "Kettle broke", "fields": "{}"}) + "\n")
    assert error(config).startswith(f"Error: {labelled / 'batch-001.jsonl'}:1: cannot tell the format")
    other = yaml.safe_load(config.read_text())
    other["monitor"]["model_name"] = "never-trained"
    config.write_text(yaml.safe_dump(other))
    assert error(config) == ("Error: monitor.version: model 'never-trained' has no version 'production'; run the"
                             " finetune pipeline first (python run.py --config configs/quickstart.yaml)")


def test_the_monitor_is_scheduled_like_the_finetune_pipeline(production, zenml_env, tmp_path):
    """--schedule hands the monitor pipeline to an orchestrator that can schedule, on the named stack; the
    request log and the new rows are read when it fires (they need not exist yet)."""
    zenml = str(Path(sys.executable).parent / "zenml")
    record = tmp_path / "submitted.jsonl"
    env = dict(zenml_env, PYTHONPATH=str(REPO))
    for command in (
        [zenml, "orchestrator", "flavor", "register", "tests.recording_orchestrator.RecordingOrchestratorFlavor"],
        [zenml, "orchestrator", "register", "monitor-recorder", "--flavor=recording", f"--path={record}"],
        [zenml, "stack", "register", "hourly", "-o", "monitor-recorder", "-a", "default"],
    ):
        done = run_tree(command, cwd=REPO, env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    config = _monitor_config(tmp_path, production, tmp_path / "requests.jsonl", tmp_path / "labelled")
    result = _run(["run.py", "--config", str(config), "--schedule", "0 * * * *", "--stack", "hourly"], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Scheduled: monitor" in result.stdout and "on stack 'hourly'" in result.stdout
    (submitted,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert submitted["cron"] == "0 * * * *" and submitted["pipeline"] == "monitor"
    assert submitted["steps"] == ["check_traffic", "decide_action", "rescore_production", "retrain_model"]

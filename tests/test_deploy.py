"""The production model behind HTTP: deploy with the local deployer, call it, stop it.

Finetunes the real SmolLM2 on a tiny slice (two steps, forced into production)
against a throw-away ZenML store, deploys `online_inference` on a free loopback
port the way users do (`run.py --config <deploy yaml>`), sends good and bad
requests over real HTTP, and tears the deployment down.
"""

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUICKSTART_MODEL, free_loopback_port, run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
ZENML_CLI = str(Path(sys.executable).parent / "zenml")
MODEL_NAME = "deploy-test"
pytestmark = pytest.mark.pipeline


def _run(args, env, timeout=1200):
    command = args if args[0] == ZENML_CLI else [sys.executable, *args]
    return run_tree(command, cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def production_version(tmp_path_factory, zenml_env):
    config = write_config(
        tmp_path_factory.mktemp("run") / "run.yaml", QUICKSTART_MODEL, REPO / "data" / "support_emails",
        data={"max_train_rows": 16, "max_validation_rows": 4, "max_test_rows": 4},
        training={"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "precision": "fp32"},
        evaluation={"batch_size": 4, "max_new_tokens": 48},
        baselines={"few_shot_k": 0},
        registry={"model_name": MODEL_NAME},
        # A GGUF export for the llama.cpp deployment (its parity with PyTorch is tested elsewhere).
        export={"formats": ["gguf"], "dtype": "float32", "gguf_types": ["f32"], "verify_rows": 0,
                "tolerance": 1.0},
    )
    result = _run(["run.py", "--config", str(config), "--force-promote"], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return MODEL_NAME


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def error_messages(payload: dict) -> str:
    """FastAPI's validation errors as one string: location and message of each."""
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in payload["detail"])


def test_deploy_call_and_stop(production_version, zenml_env, tmp_path):
    port = free_loopback_port()
    request_log = tmp_path / "requests.jsonl"
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"deploy": {
        "model_name": production_version, "deployment_name": "deploy-test", "port": port,
        "batch_size": 4, "request_log": str(request_log), "timeout_s": 300,
    }}))
    try:
        deployed = _run(["run.py", "--config", str(config)], zenml_env, timeout=600)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        assert f"Serving:  {url}" in deployed.stdout
        assert "Stop:     zenml deployment delete deploy-test -y" in deployed.stdout

        emails = [json.loads(line)["prompt"]
                  for line in (REPO / "data" / "support_emails" / "new_emails.jsonl").read_text().splitlines()[:2]]
        # One input, then a batch; every answer carries the version that produced it.
        status, one = post(f"{url}/invoke", {"parameters": {"inputs": emails[0]}})
        assert status == 200 and one["success"], one
        answers = one["outputs"]["answers"]
        assert answers["model_version"] == f"{production_version} 1 (production)"
        assert len(answers["results"]) == 1
        status, batch = post(f"{url}/invoke", {"parameters": {"inputs": emails}})
        assert status == 200 and batch["success"], batch
        results = batch["outputs"]["answers"]["results"]
        assert len(results) == 2 and batch["outputs"]["answers"]["model_version"] == answers["model_version"]
        for result in results:
            assert isinstance(result["output"], str) and result["output"]
            assert result["parsed"] == isinstance(result["json"], dict)
        # Greedy and formatted the same way: the single answer is the batch's first.
        assert results[0]["output"] == answers["results"][0]["output"]

        bad = {
            "empty input": ({"parameters": {"inputs": "   "}}, "inputs.0: String should have at least 1 character"),
            "no inputs": ({"parameters": {"inputs": []}}, "inputs: Value should have at least 1 item after validation, not 0"),
            "over-long input": ({"parameters": {"inputs": ["x" * 4001]}}, "inputs.0: String should have at most 4000"),
            "too many inputs": ({"parameters": {"inputs": ["hi"] * 17}}, "inputs: Value should have at most 16 items after validation, not 17"),
            "wrong type": ({"parameters": {"inputs": 5}}, "inputs: Input should be a valid list"),
            "wrong item type": ({"parameters": {"inputs": [5]}}, "inputs.0: Input should be a valid string"),
            "unknown key": ({"parameters": {"inputs": ["hi"], "temperature": 1}}, "temperature: Extra inputs"),
            "missing inputs": ({"parameters": {}}, "inputs: Field required"),
            "malformed JSON": (b'{"parameters": {"inputs": ["hi"', "JSON decode error"),
        }
        for case, (body, expected) in bad.items():
            status, payload = post(f"{url}/invoke", body)
            assert status == 422, (case, status, payload)
            assert expected in error_messages(payload), (case, payload)

        # Still serving after the bad requests.
        status, again = post(f"{url}/invoke", {"parameters": {"inputs": [emails[1]]}})
        assert status == 200 and again["success"]
        assert again["outputs"]["answers"]["results"][0]["output"] == results[1]["output"]

        # One log line per answered request (bad ones never reach the model), no texts.
        records = [json.loads(line) for line in request_log.read_text().splitlines()]
        assert [r["inputs"] for r in records] == [1, 2, 1]
        for record in records:
            assert record["model_version"] == answers["model_version"]
            assert record["latency_s"] > 0 and 0 <= record["parsed_rate"] <= 1
            assert set(record) == {"time", "model_version", "inputs", "latency_s", "queue_s", "parsed", "parsed_rate",
                                   "hit_cap"}
    finally:
        stopped = _run([ZENML_CLI, "deployment", "delete", "deploy-test", "-y"], zenml_env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    deadline = time.monotonic() + 30
    while port_is_open(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_is_open(port)


def test_deploy_the_gguf_export_in_llama_cpp(production_version, zenml_env, tmp_path):
    """engine: llama.cpp serves the version's GGUF; its answers are batch inference's from the same file.

    (The two-step adapter rambles on free text, where f32 llama.cpp and batched transformers part at
    near-ties after dozens of tokens; the trained quickstart's exports answer identically, see
    bench/export_parity.py.)
    """
    emails = [json.loads(line) for line in (REPO / "data" / "support_emails" / "new_emails.jsonl").read_text()
              .splitlines()[:2]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": row["prompt"]}) + "\n" for row in emails))
    predict_yaml = tmp_path / "predict.yaml"
    predict_yaml.write_text(yaml.safe_dump({"kind": "predict", "inference": {
        "model_name": production_version, "input_file": str(tmp_path / "in.jsonl"),
        "output_file": str(tmp_path / "out.jsonl"), "batch_size": 2, "engine": "llama.cpp", "gguf_type": "f32"}}))
    predicted = _run(["run.py", "--config", str(predict_yaml)], zenml_env, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    expected = [json.loads(line)["output"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    port = free_loopback_port()
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"kind": "deploy", "deploy": {
        "model_name": production_version, "deployment_name": "deploy-gguf", "port": port, "timeout_s": 300,
        "engine": "llama.cpp", "gguf_type": "f32", "gguf_context": 1024,
    }}))
    try:
        deployed = _run(["run.py", "--config", str(config)], zenml_env, timeout=600)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        status, batch = post(f"http://127.0.0.1:{port}/invoke",
                             {"parameters": {"inputs": [row["prompt"] for row in emails]}})
        assert status == 200 and batch["success"], batch
        answers = batch["outputs"]["answers"]
        assert answers["model_version"] == f"{production_version} 1 (production, {production_version}-f32.gguf)"
        assert [result["output"] for result in answers["results"]] == expected
    finally:
        stopped = _run([ZENML_CLI, "deployment", "delete", "deploy-gguf", "-y"], zenml_env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]

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
from concurrent.futures import ThreadPoolExecutor
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
        # A GGUF export for the llama.cpp deployment (its parity with PyTorch is tested elsewhere). q8_0:
        # quantized weights answer the same in a batch as alone (float weights can part at near-ties).
        export={"formats": ["gguf"], "dtype": "float32", "gguf_types": ["q8_0"], "verify_rows": 0,
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


def records_in(log: Path, count: int, timeout_s: float = 30) -> list[dict]:
    """The request log once it holds `count` lines (records are written off the request's path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)


def served_requests(env: dict, model_name: str) -> list[dict]:
    """Metadata of the `served_requests` artifacts linked to the model's version 1, read from the store."""
    script = ("import json; from zenml.client import Client; "
              f"v = Client().get_model_version({model_name!r}, 1); "
              "links = v.get_artifact('served_requests'); "
              "print(json.dumps([] if links is None else "
              "[a.run_metadata for a in Client().list_artifact_versions(artifact='served_requests', size=50).items]))")
    result = run_tree([sys.executable, "-c", script], cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def error_messages(payload: dict) -> str:
    """FastAPI's validation errors as one string: location and message of each."""
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in payload["detail"])


def test_deploy_call_and_stop(production_version, zenml_env, tmp_path):
    port = free_loopback_port()
    request_log = tmp_path / "requests.jsonl"
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"deploy": {
        "model_name": production_version, "deployment_name": "deploy-test", "port": port,
        "batch_size": 4, "request_log": str(request_log), "timeout_s": 300, "record_every_s": 1,
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

        # OpenAI's own client, unchanged: the same answer as /invoke gives for the same email.
        from openai import OpenAI, UnprocessableEntityError

        client = OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
        completion = client.chat.completions.create(model="anything", messages=[{"role": "user", "content": emails[1]}])
        assert completion.choices[0].message.content == results[1]["output"]
        assert completion.model == answers["model_version"]
        assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.prompt_tokens > 20
        assert [model.id for model in client.models.list()] == [answers["model_version"]]
        # Streamed, the same answer arrives in pieces.
        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": emails[1]}],
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == results[1]["output"]
        with pytest.raises(UnprocessableEntityError, match="the last message is the user's to answer"):
            client.chat.completions.create(model="m", messages=[{"role": "assistant", "content": "hi"}])

        # One log line per answered request (bad ones never reach the model), no texts.
        records = records_in(request_log, 5)
        assert [(r["route"], r["inputs"]) for r in records] == [("invoke", 1), ("invoke", 2), ("invoke", 1),
                                                                ("chat", 1), ("chat", 1)]
        assert [(r.get("stream"), r.get("tool_calls")) for r in records[3:]] == [(False, 0), (True, 0)]
        for record in records:
            assert record["model_version"] == answers["model_version"] and record["status"] == 200
            assert record["latency_s"] > 0 and record["queue_s"] >= 0 and 0 <= record["parsed_rate"] <= 1
            chat = {"stream", "tool_calls"} if record["route"] == "chat" else set()
            assert set(record) == {"time", "route", "status", "model_version", "inputs", "input_tokens", "latency_s",
                                   "queue_s", "parsed", "parsed_rate", "hit_cap", *chat}
            assert len(record["input_tokens"]) == record["inputs"] and all(n > 0 for n in record["input_tokens"])
        # And in ZenML, in batches: served_requests artifacts linked to the version, counting all five.
        deadline = time.monotonic() + 60
        while sum(m.get("requests", 0) for m in served_requests(zenml_env, production_version)) < 5:
            assert time.monotonic() < deadline, served_requests(zenml_env, production_version)
            time.sleep(2)
    finally:
        stopped = _run([ZENML_CLI, "deployment", "delete", "deploy-test", "-y"], zenml_env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    deadline = time.monotonic() + 30
    while port_is_open(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_is_open(port)


@pytest.fixture(scope="module")
def gguf_batch_answers(production_version, zenml_env, tmp_path_factory):
    """Four new emails and batch inference's answers to them from the version's q8_0 GGUF in llama.cpp: what
    each deployment engine must answer (one batch run serves both engines' tests)."""
    folder = tmp_path_factory.mktemp("gguf-predict")
    emails = [json.loads(line) for line in (REPO / "data" / "support_emails" / "new_emails.jsonl").read_text()
              .splitlines()[:4]]
    (folder / "in.jsonl").write_text("".join(json.dumps({"prompt": row["prompt"]}) + "\n" for row in emails))
    predict_yaml = folder / "predict.yaml"
    predict_yaml.write_text(yaml.safe_dump({"kind": "predict", "inference": {
        "model_name": production_version, "input_file": str(folder / "in.jsonl"),
        "output_file": str(folder / "out.jsonl"), "batch_size": 2, "engine": "llama.cpp", "gguf_type": "q8_0"}}))
    predicted = _run(["run.py", "--config", str(predict_yaml)], zenml_env, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    return emails, [json.loads(line)["output"] for line in (folder / "out.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("engine", ["llama.cpp", pytest.param("llama-server", marks=pytest.mark.slow)])
def test_deploy_the_gguf_export_in_llama_cpp(production_version, zenml_env, tmp_path, engine, request):
    """engine: llama.cpp (in the deployment's process) and engine: llama-server (llama.cpp's own server,
    started by the deployment) serve the version's GGUF with continuous batching.

    Concurrent requests get the answers they get one at a time, which are batch inference's from the
    same file; past the queue's limit a request gets 503 with Retry-After, and the server goes on.
    """
    if engine == "llama-server":
        request.getfixturevalue("llama_server_binary")  # skips at once where llama-server is not built
    emails, expected = request.getfixturevalue("gguf_batch_answers")
    port = free_loopback_port()
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"kind": "deploy", "deploy": {
        "model_name": production_version, "deployment_name": "deploy-gguf", "port": port, "timeout_s": 300,
        "engine": engine, "gguf_type": "q8_0", "gguf_context": 1024, "batch_size": 2, "max_queue": 4,
        "record_every_s": 0,
        # Every prompt read whole: an answer is then the same alone or in company (a slot's kept prompt start,
        # computed beside other requests, can tip a near-tie; tests/test_llama_batching.py shows both).
        "prompt_cache": False,
    }}))
    url = f"http://127.0.0.1:{port}"

    def chat(text: str) -> tuple[int, dict, str | None]:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read()), None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), error.headers.get("Retry-After")

    try:
        deployed = _run(["run.py", "--config", str(config)], zenml_env, timeout=600)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        status, batch = post(f"{url}/invoke", {"parameters": {"inputs": [row["prompt"] for row in emails]}})
        assert status == 200 and batch["success"], batch
        answers = batch["outputs"]["answers"]
        assert answers["model_version"] == f"{production_version} 1 (production, {production_version}-q8_0.gguf)"
        assert [result["output"] for result in answers["results"]] == expected

        alone = [chat(row["prompt"])[1]["choices"][0]["message"]["content"] for row in emails]
        assert alone == expected
        with ThreadPoolExecutor(4) as pool:  # 2 generating + 2 waiting: within max_queue
            together = list(pool.map(lambda row: chat(row["prompt"]), emails))
        assert [status for status, _, _ in together] == [200] * 4, together
        assert [body["choices"][0]["message"]["content"] for _, body, _ in together] == alone

        with ThreadPoolExecutor(16) as pool:  # far past max_queue: refusals, at once, with Retry-After
            flood = list(pool.map(lambda i: chat(emails[i % 4]["prompt"]), range(16)))
        refused = [(body, retry) for status, body, retry in flood if status == 503]
        answered = [(i, body) for i, (status, body, _) in enumerate(flood) if status == 200]
        assert refused and answered and len(refused) + len(answered) == 16, [s for s, _, _ in flood]
        for body, retry in refused:
            assert body["error"]["code"] == "queue_full" and int(retry) >= 1, (body, retry)
        for i, body in answered:
            assert body["choices"][0]["message"]["content"] == alone[i % 4]
        status, body, _ = chat(emails[0]["prompt"])  # still serving
        assert status == 200 and body["choices"][0]["message"]["content"] == alone[0]
        _openai_client_on_the_deployment(url, emails[0]["prompt"], alone[0])
    finally:
        stopped = _run([ZENML_CLI, "deployment", "delete", "deploy-gguf", "-y"], zenml_env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]


def _openai_client_on_the_deployment(url: str, email: str, whole: str) -> None:
    """OpenAI's client, unchanged apart from base_url, on the deployed llama.cpp engine: a tools request that
    asks for a call gets tool_calls, a streamed answer joins to the whole one, a JSON schema is kept, and a
    client that leaves mid-stream does not stop the server."""
    import jsonschema
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    tool = {"type": "function", "function": {"name": "open_ticket", "description": "Open a support ticket.",
                                             "parameters": {"type": "object", "properties": {
                                                 "order_id": {"type": "string", "maxLength": 12},
                                                 "priority": {"type": "string", "enum": ["low", "high"]}},
                                                 "required": ["order_id", "priority"], "additionalProperties": False}}}
    messages = [{"role": "user", "content": email}]
    called = client.chat.completions.create(model="m", messages=messages, tools=[tool], tool_choice="required")
    (call,) = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "open_ticket"
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])

    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    schema = {"type": "object", "properties": {"issue": {"type": "string", "enum": ["damaged", "late", "other"]},
                                               "urgent": {"type": "boolean"}},
              "required": ["issue", "urgent"], "additionalProperties": False}
    shaped = client.chat.completions.create(model="m", messages=messages, response_format={
        "type": "json_schema", "json_schema": {"name": "fields", "schema": schema}})
    jsonschema.validate(json.loads(shaped.choices[0].message.content), schema)

    with client.chat.completions.create(model="m", messages=messages, stream=True) as stream:
        next(iter(stream))  # the role chunk; then the client goes away
    again = client.chat.completions.create(model="m", messages=messages)
    assert again.choices[0].message.content == whole

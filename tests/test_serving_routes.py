"""The deployment's own routes on a real FastAPI app: the OpenAI chat route and the /invoke queue gate.

The served version is the tiny model behind a real batcher, put where the deployment's init hook puts
it (ZenML's run context); the full deployment is tests/test_deploy.py.
"""

import json
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from zenml.steps.step_context import RunContext, get_or_create_run_context

from llm_lora.config import ModelConfig, RunConfig
from llm_lora.model_loading import load_model
from llm_lora.serving import RequestRecorder, answer, serve_transformers
from pipelines.serving_routes import CHAT_ROUTE, MODELS_ROUTE, QueueGate, chat_completions, list_models


@pytest.fixture()
def app_with(tiny_model_dir, tokenizer, tmp_path):
    """A FastAPI app with the routes and gate, serving the tiny model; yields (client, served)."""
    config = RunConfig(model={"name": str(tiny_model_dir)},
                       data={"train_file": "train.jsonl", "system_prompt": "Extract JSON."})
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    served = []

    def make(**options):
        recorder = RequestRecorder(tmp_path / "requests.jsonl", flush_s=3600)
        one = serve_transformers(model, tokenizer, config, "m 2 (production)", recorder=recorder,
                                 **{"batch_size": 2, "max_new_tokens": 8, **options})
        served.append(one)
        RunContext._clear()
        get_or_create_run_context().initialize(one)
        app = FastAPI()
        app.post(CHAT_ROUTE)(chat_completions)
        app.get(MODELS_ROUTE)(list_models)
        app.post("/invoke")(lambda: {"ran": True})
        app.add_middleware(QueueGate)
        return TestClient(app), one

    yield make
    RunContext._clear()
    for one in served:
        one.close()


def test_chat_answers_as_the_served_version_does(app_with, support_rows):
    client, served = app_with()
    email = support_rows["test"][0]["prompt"]
    response = client.post(CHAT_ROUTE, json={"model": "x", "messages": [{"role": "user", "content": email}],
                                             "temperature": 0.9})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "m 2 (production)" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == answer(served, [email])["results"][0]["output"]
    assert client.get(MODELS_ROUTE).json()["data"][0]["id"] == "m 2 (production)"
    refused = client.post(CHAT_ROUTE, json={"messages": [{"role": "user", "content": "hi"}], "n": 3})
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "n" and "n: Input should be less than or equal to 1" in \
        refused.json()["error"]["message"]
    assert refused.json()["detail"][0]["loc"] == ["body", "n"]
    malformed = client.post(CHAT_ROUTE, content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422 and "Invalid JSON" in malformed.json()["error"]["message"]


def test_a_full_queue_turns_requests_away_with_retry_after(app_with, support_rows):
    client, served = app_with(max_queue=1, window_s=0.0, batch_size=1)
    release = threading.Event()
    generate = served.batcher.generate
    served.batcher.generate = lambda prompts, cap: release.wait(60) and generate(prompts, cap)
    emails = [row["prompt"] for row in support_rows["test"][:2]]
    try:
        generating = served.batcher.submit(["first"])  # the worker takes it and blocks
        while served.batcher.waiting:
            time.sleep(0.01)
        waiting = served.batcher.submit(["second"])  # fills the queue of 1
        chat = client.post(CHAT_ROUTE, json={"messages": [{"role": "user", "content": emails[0]}]})
        invoke = client.post("/invoke", json={"parameters": {"inputs": [emails[1]]}})
        release.set()
        generating.result(60), waiting.result(60)
    finally:
        release.set()
    assert chat.status_code == 503 and int(chat.headers["Retry-After"]) >= 1
    assert chat.json()["error"]["code"] == "queue_full"
    assert invoke.status_code == 503 and int(invoke.headers["Retry-After"]) >= 1
    assert "(limit 1)" in invoke.json()["detail"]
    # Room again: both routes go through.
    assert client.post(CHAT_ROUTE, json={"messages": [{"role": "user", "content": emails[0]}]}).status_code == 200
    assert client.post("/invoke", json={}).json() == {"ran": True}
    served.recorder.close()
    records = [json.loads(line) for line in served.recorder.path.read_text().splitlines()]
    assert [(r["route"], r["status"]) for r in records] == [("chat", 503), ("invoke", 503), ("chat", 200)]

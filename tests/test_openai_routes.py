"""OpenAI's chat API as its clients use it, on every engine: tools, tool_choice, streaming, JSON mode, disconnect.

The served version is the tiny random-weight model (in transformers, and as a q8_0 GGUF in llama.cpp
in-process and in llama.cpp's own llama-server) behind the deployment's real routes on a real FastAPI
app; OpenAI's own Python client calls them. A random model's words mean nothing, so what is checked is what the API promises whatever the model says:
calls come back as tool_calls with arguments their schema allows, a streamed answer joins to the
whole one, constrained JSON fits its schema, a client that goes away frees its slot.
"""

import json
import threading
import time
import urllib.request

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from zenml.steps.step_context import RunContext, get_or_create_run_context

from llm_lora.config import ModelConfig, RunConfig
from llm_lora.metrics import parse_tool_calls
from llm_lora.model_loading import load_model
from llm_lora.serving import RequestRecorder, serve_gguf, serve_llama_server, serve_transformers
from pipelines.serving_routes import CHAT_ROUTE, MODELS_ROUTE, CallFilter, chat_completions, list_models
from tests.conftest import llama_server_or_skip

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs requirements-export.txt")

TRACK = {"type": "function", "function": {"name": "track_package", "description": "Track a parcel.", "parameters": {
    "type": "object", "properties": {"tracking_number": {"type": "string", "maxLength": 12},
                                     "express": {"type": "boolean"}},
    "required": ["tracking_number"], "additionalProperties": False}}}
REFUND = {"type": "function", "function": {"name": "refund", "description": "Refund an order.", "parameters": {
    "type": "object", "properties": {"order": {"type": "integer"}}, "required": ["order"],
    "additionalProperties": False}}}
ASK = [{"role": "system", "content": "You are a shop's assistant."},
       {"role": "user", "content": "Where is my parcel 1Z4F8K2M9Q?"}]
SCHEMA = {"type": "object", "properties": {"order_id": {"type": "string", "maxLength": 10}, "urgent": {"type": "boolean"}},
          "required": ["order_id", "urgent"], "additionalProperties": False}


class Served(dict):
    """Served versions by engine, each made when a test first asks for it (llama-server needs its build)."""

    def __init__(self, makers):
        super().__init__()
        self.makers = makers

    def __missing__(self, engine):
        self[engine] = self.makers[engine]()
        return self[engine]

    def close(self):
        RunContext._clear()
        for one in self.values():
            one.close()


# llama-server is built once (minutes) and started per module: its tests are the slow tier.
GGUF_ENGINES = ["llama.cpp", pytest.param("llama-server", marks=pytest.mark.slow)]
ENGINES = ["transformers", *GGUF_ENGINES]


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tiny_q8, tokenizer, tmp_path_factory):
    """One served version per engine, each behind the routes on a FastAPI app."""
    config = RunConfig(model={"name": str(tiny_model_dir)}, data={"train_file": "train.jsonl"})
    folder = tmp_path_factory.mktemp("records")
    served = Served({
        "transformers": lambda: serve_transformers(
            load_model(ModelConfig(name=str(tiny_model_dir))), tokenizer, config, "tiny 1 (production)", batch_size=2,
            max_new_tokens=64, recorder=RequestRecorder(folder / "transformers.jsonl", flush_s=3600)),
        "llama.cpp": lambda: serve_gguf(tiny_q8, tokenizer, config, "tiny 1 (production)", slots=2, context=512,
                                        max_new_tokens=64, threads=2,
                                        recorder=RequestRecorder(folder / "llama.jsonl", flush_s=3600)),
        "llama-server": lambda: serve_llama_server(
            tiny_q8, tokenizer, config, "tiny 1 (production)", slots=2, context=512, max_new_tokens=64, threads=2,
            binary=llama_server_or_skip(),
            recorder=RequestRecorder(folder / "llama-server.jsonl", flush_s=3600)),
    })
    yield served
    served.close()


def _app():
    app = FastAPI()
    app.post(CHAT_ROUTE)(chat_completions)
    app.get(MODELS_ROUTE)(list_models)
    return app


def _client(engines, engine):
    """OpenAI's client on the routes, with `engine`'s version where the deployment's init hook puts it."""
    RunContext._clear()
    get_or_create_run_context().initialize(engines[engine])
    http = TestClient(_app(), base_url="http://testserver")
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


CALL = {"name": "track_package", "arguments": {"tracking_number": "1Z4F8K2M9Q"}}


@pytest.fixture(scope="module")
def taught(tiny_model_dir, tokenizer, tmp_path_factory):
    """The tiny model trained until it answers ASK, offered TRACK, with CALL: a version trained on a tool call.

    Trained on the prompt the route renders and the call in the version's rendering, as the finetune
    pipeline trains tool rows; served by both engines (the llama.cpp one from its q8_0 export).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from llm_lora.gguf_export import convert, converter_dir
    from llm_lora.inference import inference_prompts
    from llm_lora.openai_api import ChatCompletionRequest
    from llm_lora.prompt_formatting import format_completion
    from llm_lora.tool_calls import calls_text

    config = RunConfig(model={"name": str(tiny_model_dir)}, data={"train_file": "train.jsonl"})
    row = ChatCompletionRequest.model_validate({"model": "x", "messages": ASK, "tools": [TRACK]}).row()
    prompt = tokenizer(inference_prompts(tokenizer, [row], config)[0], add_special_tokens=False)["input_ids"]
    answer = tokenizer(format_completion(tokenizer, calls_text([CALL])), add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids, labels = torch.tensor([prompt + answer]), torch.tensor([[-100] * len(prompt) + answer])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < 0.02:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("taught")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    gguf = convert(folder, tmp_path_factory.mktemp("taught-gguf") / "taught-q8_0.gguf", "q8_0", converter_dir())
    model.eval()
    served = Served({
        "transformers": lambda: serve_transformers(load_model(ModelConfig(name=str(folder))), tokenizer, config,
                                                   "taught 1 (production)", batch_size=2, max_new_tokens=64),
        "llama.cpp": lambda: serve_gguf(gguf, tokenizer, config, "taught 1 (production)", slots=2, context=512,
                                        max_new_tokens=64, threads=2),
        "llama-server": lambda: serve_llama_server(gguf, tokenizer, config, "taught 1 (production)", slots=2,
                                                   context=512, max_new_tokens=64, threads=2,
                                                   binary=llama_server_or_skip()),
    })
    yield served
    served.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_version_trained_on_a_call_answers_with_tool_calls(taught, engine):
    """tool_choice auto, nothing forced: the call the version writes comes back as tool_calls, whole and streamed."""
    client = _client(taught, engine)
    answer = client.chat.completions.create(model="x", messages=ASK, tools=[TRACK])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (CALL["name"], CALL["arguments"])
    chunks = list(client.chat.completions.create(model="x", messages=ASK, tools=[TRACK], stream=True))
    streamed = [tc for chunk in chunks for c in chunk.choices for tc in (c.delta.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in streamed] == [
        (call.function.name, call.function.arguments)]
    assert not any(c.delta.content for chunk in chunks for c in chunk.choices)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Without tools the same version is asked a plain question, and its answer is text.
    plain = client.chat.completions.create(model="x", messages=ASK)
    assert plain.choices[0].message.tool_calls is None


@pytest.mark.parametrize("engine", GGUF_ENGINES)
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "refund"}}])
def test_a_call_the_request_asks_for_comes_back_as_tool_calls_with_arguments_its_schema_allows(engines, choice, engine):
    client = _client(engines, engine)
    answer = client.chat.completions.create(model="x", messages=ASK, tools=[TRACK, REFUND], tool_choice=choice)
    choice_ = answer.choices[0]
    assert choice_.finish_reason == "tool_calls" and choice_.message.tool_calls, choice_
    (call,) = choice_.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    tool = {"track_package": TRACK, "refund": REFUND}[call.function.name]
    if isinstance(choice, dict):
        assert call.function.name == "refund"
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    # The same call, streamed.
    chunks = list(client.chat.completions.create(model="x", messages=ASK, tools=[TRACK, REFUND], tool_choice=choice,
                                                 stream=True))
    streamed = [tc for chunk in chunks for c in chunk.choices for tc in (c.delta.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in streamed] == [
        (call.function.name, call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("engine", ENGINES)
def test_an_answer_that_does_not_parse_as_a_call_comes_back_as_text(engines, engine):
    """tool_choice auto: the random model writes no call, so the answer is its text, never a broken call."""
    client = _client(engines, engine)
    answer = client.chat.completions.create(model="x", messages=ASK, tools=[TRACK])
    message = answer.choices[0].message
    assert parse_tool_calls(message.content) is None and message.tool_calls is None
    assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_streamed_answer_joins_to_the_whole_answer(engines, engine):
    client = _client(engines, engine)
    whole = client.chat.completions.create(model="x", messages=ASK)
    stream = client.chat.completions.create(model="x", messages=ASK, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert whole.model == "tiny 1 (production)" and all(c.model == whole.model for c in chunks)
    if engine != "transformers":  # token by token: the answer arrives in many pieces
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3


@pytest.mark.parametrize("engine", GGUF_ENGINES)
def test_json_mode_on_a_gguf_engine_gives_json_its_schema_allows(engines, engine):
    client = _client(engines, engine)
    answer = client.chat.completions.create(model="x", messages=ASK, response_format={
        "type": "json_schema", "json_schema": {"name": "fields", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)
    anything = client.chat.completions.create(model="x", messages=ASK, response_format={"type": "json_object"},
                                              max_tokens=24)
    if anything.choices[0].finish_reason == "stop":  # a random model may fill the cap with one long string
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    else:
        assert anything.choices[0].message.content.startswith("{")


def test_json_mode_on_transformers_names_the_engine_that_has_it(engines):
    client = _client(engines, "transformers")
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(model="x", messages=ASK, response_format={"type": "json_object"})
    assert "the llama.cpp engine" in str(error.value) and "deploy.engine: llama.cpp" in str(error.value)


@pytest.mark.parametrize("body, message", [
    ({"messages": ASK, "tool_choice": "required"}, "tool_choice: needs tools"),
    ({"messages": ASK, "tools": [TRACK], "tool_choice": {"type": "function", "function": {"name": "fly"}}},
     "'fly' is not one of the tools"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "shipped"}], "tools": [TRACK]},
     "tool_call_id 'call_9' answers no earlier tool call"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "track_package", "arguments": "{nope"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "x"}],
      "tools": [TRACK]}, "arguments is not valid JSON"),
    ({"messages": ASK, "tools": [TRACK], "response_format": {"type": "json_object"}}, "not both"),
    ({"messages": ASK, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}]}, "is not valid JSON Schema"),
])
def test_bad_requests_are_refused_in_openais_shape_naming_the_field(engines, body, message):
    RunContext._clear()
    get_or_create_run_context().initialize(engines["llama.cpp"])
    response = TestClient(_app()).post(CHAT_ROUTE, json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"], response.json()


def test_a_conversation_with_a_tool_result_is_answered(engines):
    """The call the client made and its result go back in, as the client's own assistant message dumps them."""
    client = _client(engines, "llama.cpp")
    first = client.chat.completions.create(model="x", messages=ASK, tools=[TRACK], tool_choice="required")
    made = first.choices[0].message
    messages = [*ASK, made.model_dump(exclude_none=False),
                {"role": "tool", "tool_call_id": made.tool_calls[0].id, "content": '{"status": "shipped"}'}]
    answer = client.chat.completions.create(model="x", messages=messages, tools=[TRACK], tool_choice="none")
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content


@pytest.mark.parametrize("engine", GGUF_ENGINES)
def test_streamed_and_tool_call_answers_are_recorded(engines, engine):
    served = engines[engine]
    client = _client(engines, engine)
    before = len(served.recorder.path.read_text().splitlines()) if served.recorder.path.exists() else 0
    client.chat.completions.create(model="x", messages=ASK, tools=[TRACK], tool_choice="required")
    list(client.chat.completions.create(model="x", messages=ASK, stream=True))
    deadline = time.monotonic() + 30  # records are written off the request's path
    while len(served.recorder.path.read_text().splitlines()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = [json.loads(line) for line in served.recorder.path.read_text().splitlines()][before:]
    assert [(r["route"], r["stream"], r["tool_calls"], r["parsed"]) for r in records] == [
        ("chat", False, 1, 1), ("chat", True, 0, 0)]
    assert all(r["input_tokens"][0] > 0 for r in records)


def _answering(served) -> int:
    """Slots generating now: in this process's engine, or as llama-server's own /slots page says."""
    if served.engine == "llama-server":
        with urllib.request.urlopen(f"{served.batcher.server.url}/slots", timeout=10) as response:
            return sum(bool(slot["is_processing"]) for slot in json.load(response))
    return served.batcher.engine.slots - served.batcher.engine.free_slots


@pytest.mark.parametrize("engine", GGUF_ENGINES)
def test_a_client_that_disconnects_mid_stream_frees_its_slot(tiny_q8, tokenizer, engine):
    """Over a real server: the slot is free again before the answer would have ended, and the next
    request is answered."""
    import httpx2 as httpx  # the HTTP client OpenAI's own client is built on
    import uvicorn

    config = RunConfig(model={"name": "tiny"}, data={"train_file": "train.jsonl"})
    if engine == "llama.cpp":
        served = serve_gguf(tiny_q8, tokenizer, config, "tiny 1 (production)", slots=1, context=512,
                            max_new_tokens=400, threads=2)
    else:
        served = serve_llama_server(tiny_q8, tokenizer, config, "tiny 1 (production)", slots=1, context=512,
                                    max_new_tokens=400, threads=2, binary=llama_server_or_skip())
    RunContext._clear()
    get_or_create_run_context().initialize(served)
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}{CHAT_ROUTE}"
        with httpx.stream("POST", url, json={"messages": ASK, "stream": True, "max_tokens": 400}, timeout=60) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]  # the role chunk, blank lines, the first pieces
            assert _answering(served) == 1 and any(line.startswith("data: {") for line in received)
        closed = time.perf_counter()
        # The connection is closed: the slot comes back at the next decode step, the request is forgotten.
        while (_answering(served) or served.batcher._requests) and time.perf_counter() - closed < 10:
            time.sleep(0.01)
        assert _answering(served) == 0 and not served.batcher._requests, "the slot was not freed"
        answer = httpx.post(url, json={"messages": ASK, "max_tokens": 8}, timeout=60).json()
        assert answer["choices"][0]["message"]["content"] is not None
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        RunContext._clear()
        served.close()


@pytest.mark.parametrize("pieces, tools, sent", [
    (["Hello", " world"], False, "Hello world"),
    (["Let me check.", "\n<tool", "_call>{\"name\""], True, "Let me check.\n"),
    (["{\"name\": \"f\"", ", \"parameters\": {}}"], True, ""),
    (["<tool_ca"], True, ""),
])
def test_text_goes_out_while_the_answer_cannot_be_a_call(pieces, tools, sent):
    gate = CallFilter(tools)
    assert "".join(gate.add(piece) for piece in pieces) == sent

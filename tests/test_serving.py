"""Online inference without the server: the request schema, batched answers, the queue, what is recorded."""

import json
import threading
import time

import pytest
from pydantic import TypeAdapter, ValidationError

from llm_lora.batching import QueueFull, WindowBatcher
from llm_lora.config import ModelConfig, RunConfig
from llm_lora.generation import Generation
from llm_lora.inference import inference_prompts, predict
from llm_lora.model_loading import load_model
from llm_lora.serving import (
    EXAMPLE_INPUTS, MAX_INPUT_CHARS, MAX_INPUTS, Inputs, RequestRecorder, answer, append_request_log,
    render_requests_html, request_record, serve_transformers, summarize_requests,
)

INPUTS = TypeAdapter(Inputs)


def test_one_text_is_a_batch_of_one_and_texts_are_stripped():
    assert INPUTS.validate_python("  hello ") == ["hello"]
    assert INPUTS.validate_python(["a", " b"]) == ["a", "b"]
    assert INPUTS.validate_python(EXAMPLE_INPUTS) == EXAMPLE_INPUTS


@pytest.mark.parametrize("value, message", [
    ("   ", "at least 1 character"),
    ([], "at least 1 item"),
    (["x" * (MAX_INPUT_CHARS + 1)], f"at most {MAX_INPUT_CHARS} characters"),
    (["hi"] * (MAX_INPUTS + 1), f"at most {MAX_INPUTS} items"),
    (5, "valid list"),
    ([5], "valid string"),
    (None, "valid list"),
])
def test_bad_inputs_are_refused_with_the_reason(value, message):
    with pytest.raises(ValidationError, match=message):
        INPUTS.validate_python(value)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tokenizer):
    config = RunConfig(model={"name": str(tiny_model_dir)},
                       data={"train_file": "train.jsonl", "system_prompt": "Extract JSON."})
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    served = serve_transformers(model, tokenizer, config, "m 3 (production)", batch_size=2, max_new_tokens=8,
                                window_s=0.2)
    served.model = model  # for the tests' own batch inference
    yield served
    served.close()


def test_answers_carry_the_version_and_match_batch_inference(served, support_rows):
    texts = [row["prompt"] for row in support_rows["test"][:3]]
    response = answer(served, texts)
    assert response["model_version"] == "m 3 (production)"
    rows = [(str(i), None, (("user", text),)) for i, text in enumerate(texts)]
    expected = predict(served.model, served.tokenizer, rows, served.config, 2, 8)
    assert [r["output"] for r in response["results"]] == [e["output"] for e in expected]
    for result in response["results"]:
        assert set(result) == {"output", "parsed", "json", "hit_cap", "prompt_tokens"}
        assert result["parsed"] == (result["json"] is not None) and result["prompt_tokens"] > 0
    assert response["latency_s"] > 0 and 0 <= response["parsed_rate"] <= 1


def test_concurrent_requests_share_batches_and_get_their_own_answers(served, support_rows):
    """Requests sent together are generated together, and each gets the answer it gets alone."""
    texts = [row["prompt"] for row in support_rows["test"][:4]]
    alone = [answer(served, [text])["results"][0]["output"] for text in texts]
    calls = []
    generate_batch = served.batcher.generate
    served.batcher.generate = lambda prompts, cap: calls.append(len(prompts)) or generate_batch(prompts, cap)
    together = [None] * len(texts)
    start = threading.Barrier(len(texts))

    def call(i):
        start.wait()
        together[i] = answer(served, [texts[i]])["results"][0]["output"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        served.batcher.generate = generate_batch
    assert together == alone
    assert sum(calls) == 4 and max(calls) == 2, calls  # batches of batch_size 2, not one request per call
    assert served.tokenizer.padding_side == "right"


def test_a_full_queue_refuses_at_once_and_says_when_to_come_back():
    release = threading.Event()

    def slow(prompts, cap):
        release.wait(30)
        return [Generation(text=p.upper(), new_tokens=1, prompt_tokens=1, latency_s=0.0) for p in prompts]

    batcher = WindowBatcher(slow, max_batch=1, window_s=0.0, max_new_tokens=4, max_queue=2)
    try:
        first = batcher.submit(["a"])
        deadline = time.monotonic() + 10
        while batcher.waiting and time.monotonic() < deadline:  # the worker took "a" and is generating
            time.sleep(0.01)
        queued = batcher.submit(["b", "c"])
        with pytest.raises(QueueFull, match=r"2 prompts are waiting \(limit 2\); retry in \d+ s") as refused:
            batcher.submit(["d"])
        assert refused.value.retry_after_s >= 1
        release.set()
        assert [g.text for g in first.result(30).generations] == ["A"]
        assert [g.text for g in queued.result(30).generations] == ["B", "C"]
        assert [g.text for g in batcher.submit(["d"]).result(30).generations] == ["D"]  # room again
    finally:
        release.set()
        batcher.close()


def test_a_failing_batch_fails_its_requests_and_the_next_is_answered():
    def flaky(prompts, cap):
        if "boom" in prompts:
            raise RuntimeError("out of memory")
        return [Generation(text=p, new_tokens=1, prompt_tokens=1, latency_s=0.0) for p in prompts]

    batcher = WindowBatcher(flaky, max_batch=4, window_s=0.0, max_new_tokens=4, max_queue=8)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.submit(["boom"]).result(30)
        assert [g.text for g in batcher.submit(["fine"]).result(30).generations] == ["fine"]
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(["late"])


def test_a_lower_cap_per_request_shortens_only_that_answer(served, support_rows):
    text = support_rows["test"][0]["prompt"]
    rows = [("0", None, (("user", text),))]
    from llm_lora.serving import submit
    short = submit(served, rows, max_new_tokens=3).result(60).generations[0]
    full = submit(served, rows).result(60).generations[0]
    higher = submit(served, rows, max_new_tokens=500).result(60).generations[0]
    assert short.new_tokens <= 3 and full.new_tokens <= 8 and higher.text == full.text
    assert full.text.startswith(short.text)


def test_the_request_record_keeps_no_text(served, tmp_path):
    response = answer(served, ["Order ORD-123 is broken", "where is my parcel"])
    record = request_record(response)
    assert record["inputs"] == 2 and record["model_version"] == "m 3 (production)"
    assert record["parsed"] == sum(r["parsed"] for r in response["results"])
    assert record["hit_cap"] == sum(r["hit_cap"] for r in response["results"])
    # Each prompt's length in tokens (what input-length drift is measured on), the text itself not kept.
    prompts = inference_prompts(served.tokenizer, [("", None, (("user", text),)) for text in
                                                   ["Order ORD-123 is broken", "where is my parcel"]], served.config)
    assert record["input_tokens"] == [len(served.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert "ORD-123" not in json.dumps(record)
    log = tmp_path / "logs" / "requests.jsonl"
    append_request_log(log, record)
    append_request_log(log, record)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [record, record]


def test_the_recorder_writes_every_record_and_hands_batches_to_its_sink(tmp_path):
    batches, failures = [], []
    fail_once = [True]

    def sink(records):
        if fail_once[0]:
            fail_once[0] = False
            raise ConnectionError("store unreachable")
        batches.append(list(records))

    log = tmp_path / "requests.jsonl"
    recorder = RequestRecorder(log, sink=sink, flush_s=0.2, on_error=failures.append)
    records = [{"time": f"t{i}", "route": "chat", "status": 200, "model_version": "m 1", "inputs": 1,
                "latency_s": 0.1 * (i + 1), "queue_s": 0.0, "parsed": 1, "parsed_rate": 1.0, "hit_cap": 0}
               for i in range(5)]
    for record in records[:3]:
        recorder.record(record)
    deadline = time.monotonic() + 10
    while not batches and time.monotonic() < deadline:
        time.sleep(0.05)
    for record in records[3:]:
        recorder.record(record)
    recorder.close()
    assert [json.loads(line) for line in log.read_text().splitlines()] == records
    assert [type(e).__name__ for e in failures] == ["ConnectionError"]
    assert [r for batch in batches for r in batch] == records  # the failed flush's records came again


def test_the_request_summary_and_page():
    records = [{"time": "t1", "route": "invoke", "status": 200, "model_version": "m 1", "inputs": 2,
                "latency_s": 1.0, "queue_s": 0.5, "parsed": 1, "parsed_rate": 0.5, "hit_cap": 1},
               {"time": "t2", "route": "chat", "status": 503, "model_version": "m 1", "reason": "queue full"}]
    summary = summarize_requests(records)
    assert summary["requests"] == 2 and summary["answered"] == 1 and summary["refused"] == 1
    assert summary["inputs"] == 2 and summary["parsed_rate"] == 0.5 and summary["hit_cap"] == 1
    assert summary["latency_s_p50"] == 1.0 and summary["routes"] == ["chat", "invoke"]
    page = render_requests_html(records, summary)
    assert 'id="requests"' in page and "queue full" in page and "m 1" in page

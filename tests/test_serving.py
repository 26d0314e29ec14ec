"""Online inference without the server: the request schema, answers, and what is recorded per request."""

import json
import threading

import pytest
from pydantic import TypeAdapter, ValidationError

from llm_lora.config import ModelConfig, RunConfig
from llm_lora.inference import predict
from llm_lora.model_loading import load_model
from llm_lora.serving import (
    EXAMPLE_INPUTS, MAX_INPUT_CHARS, MAX_INPUTS, Inputs, ServedModel, answer, append_request_log, request_record,
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
    return ServedModel(model=model, tokenizer=tokenizer, config=config, version="m 3 (production)",
                       batch_size=2, max_new_tokens=8)


def test_answers_carry_the_version_and_match_batch_inference(served, support_rows):
    texts = [row["prompt"] for row in support_rows["test"][:3]]
    response = answer(served, texts)
    assert response["model_version"] == "m 3 (production)"
    rows = [(str(i), None, (("user", text),)) for i, text in enumerate(texts)]
    expected = predict(served.model, served.tokenizer, rows, served.config, 2, 8)
    assert [r["output"] for r in response["results"]] == [e["output"] for e in expected]
    for result in response["results"]:
        assert set(result) == {"output", "parsed", "json", "hit_cap"} and result["parsed"] == (result["json"] is not None)
    assert response["latency_s"] > 0 and 0 <= response["parsed_rate"] <= 1


def test_concurrent_requests_queue_and_get_their_own_answers(served, support_rows):
    texts = [row["prompt"] for row in support_rows["test"][:4]]
    alone = [answer(served, [text])["results"][0]["output"] for text in texts]
    together = [None] * len(texts)

    def call(i):
        together[i] = answer(served, [texts[i]])["results"][0]["output"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    assert served.tokenizer.padding_side == "right"


def test_the_request_record_keeps_no_text(served, tmp_path):
    response = answer(served, ["Order ORD-123 is broken", "where is my parcel"])
    record = request_record(response)
    assert record["inputs"] == 2 and record["model_version"] == "m 3 (production)"
    assert record["parsed"] == sum(r["parsed"] for r in response["results"])
    assert record["hit_cap"] == sum(r["hit_cap"] for r in response["results"])
    assert "ORD-123" not in json.dumps(record)
    log = tmp_path / "logs" / "requests.jsonl"
    append_request_log(log, record)
    append_request_log(log, record)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [record, record]

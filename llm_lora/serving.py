"""Online inference: one loaded model version answers requests, and each request is recorded.

The HTTP layer (a ZenML pipeline deployment) validates a request against
`Inputs` before any model code runs; `answer` formats each input with the same
function as training and evaluation, generates and parses.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BeforeValidator, Field, StringConstraints
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_lora.config import RunConfig
from llm_lora.inference import predict, predict_with_engine

if TYPE_CHECKING:
    from llm_lora.gguf_export import LlamaCppEngine

# Limits of one request, part of the HTTP schema (a request over them gets a 422).
MAX_INPUTS = 16  # a request holds the model for its whole batch; bigger jobs: batch inference
MAX_INPUT_CHARS = 4000  # about 1,000 tokens, well over the support emails (max_seq_length 256)


def _one_or_many(value: object) -> object:
    # A single text is a batch of one.
    return [value] if isinstance(value, str) else value


# Shown as the example request on the server's /docs page (a request must send its own inputs).
EXAMPLE_INPUTS = ["Hello, order ORD-724652 arrived with a cracked screen. Please send a replacement soon."]

InputText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_INPUT_CHARS)]
Inputs = Annotated[list[InputText], BeforeValidator(_one_or_many), Field(min_length=1, max_length=MAX_INPUTS)]


@dataclass
class ServedModel:
    """A model version loaded once for the life of a server.

    Attributes:
        model: Base model with the version's adapter (None when `engine` answers).
        tokenizer: Its tokenizer (formats the prompts for either).
        config: The version's training run configuration (system prompt, template).
        version: Which version answers, e.g. "support-email-extractor 3 (production)".
        batch_size: Inputs per generation batch.
        max_new_tokens: Cap on each answer.
        request_log: JSONL file that gets one line per request (None: no file).
    """

    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    config: RunConfig
    version: str
    batch_size: int
    max_new_tokens: int
    request_log: Path | None = None
    engine: LlamaCppEngine | None = None  # answers instead of `model`: the version's GGUF in llama.cpp
    # Generation flips the tokenizer's padding side and two requests would share the
    # CPU cores anyway: one request generates at a time, the others queue.
    lock: threading.Lock = field(default_factory=threading.Lock)


def answer(served: ServedModel, texts: list[str]) -> dict:
    """Answer a batch of inputs with the served version.

    Args:
        served: The loaded model version.
        texts: Validated inputs (see `Inputs`), each a user message.

    Returns:
        The answering version, and per input: the raw text, whether it parsed as a
        JSON object, the object (None when it did not parse) and whether the cap
        stopped it; plus the
        request's latency and parse rate.
    """
    rows = [(f"input {i}", None, (("user", text),)) for i, text in enumerate(texts)]
    started = time.perf_counter()
    with served.lock:
        waited = time.perf_counter() - started
        if served.engine is not None:
            results = predict_with_engine(served.engine, served.tokenizer, rows, served.config, served.max_new_tokens)
        else:
            results = predict(served.model, served.tokenizer, rows, served.config, served.batch_size,
                              served.max_new_tokens)
    latency = time.perf_counter() - started
    return {
        "model_version": served.version,
        "results": [{"output": r["output"], "parsed": r["valid_json"], "json": r["json"], "hit_cap": r["hit_cap"]}
                    for r in results],
        "latency_s": round(latency, 4),
        "queue_s": round(waited, 4),
        "parsed_rate": sum(r["valid_json"] for r in results) / len(results),
    }


def request_record(response: dict) -> dict:
    """What is kept per request: time, version, size, latency and parse success (no texts)."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "model_version": response["model_version"],
        "inputs": len(response["results"]),
        "latency_s": response["latency_s"],
        "queue_s": response["queue_s"],
        "parsed": sum(r["parsed"] for r in response["results"]),
        "parsed_rate": response["parsed_rate"],
        # Answers stopped by max_new_tokens: a rising count is drift toward inputs the cap was not set for.
        "hit_cap": sum(r["hit_cap"] for r in response["results"]),
    }


_log_lock = threading.Lock()


def append_request_log(path: Path, record: dict) -> None:
    """Append one request's record as a JSON line (folders created as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _log_lock, path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")

"""Online inference: one loaded model version answers requests, and each request is recorded.

The HTTP layer (a ZenML pipeline deployment) validates a request against
`Inputs` before any model code runs; `answer` formats each input with the same
function as training and evaluation, generates and parses.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

from pydantic import BeforeValidator, Field, StringConstraints

from llm_lora.batching import Answers, Batcher, ContinuousBatcher, WindowBatcher
from llm_lora.config import RunConfig
from llm_lora.generation import Generation, generate
from llm_lora.inference import inference_prompts, prediction_records

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
    """A model version loaded once for the life of a server, behind its request queue.

    Attributes:
        tokenizer: The version's tokenizer (formats the prompts for either engine).
        config: The version's training run configuration (system prompt, template).
        version: Which version answers, e.g. "support-email-extractor 3 (production)".
        max_new_tokens: Cap on each answer.
        batcher: The queue and what generates (see `serve_transformers`, `serve_gguf`, `serve_llama_server`).
        engine: "transformers", "llama.cpp" or "llama-server".
        recorder: Where each request's record goes, off the request's path (None: nowhere).
    """

    tokenizer: PreTrainedTokenizerBase
    config: RunConfig
    version: str
    max_new_tokens: int
    batcher: Batcher
    engine: str = "transformers"
    recorder: RequestRecorder | None = None

    def close(self) -> None:
        """Stop generating (queued requests fail) and write the records still pending."""
        self.batcher.close()
        if isinstance(self.batcher, ContinuousBatcher):
            self.batcher.engine.close()
        if self.recorder is not None:
            self.recorder.close()


def serve_transformers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: RunConfig, version: str, batch_size: int,
    max_new_tokens: int, window_s: float = 0.01, max_queue: int = 64, recorder: RequestRecorder | None = None,
) -> ServedModel:
    """Base model + adapter in transformers: requests that arrive within `window_s` generate as one batch.

    One padded batch ends when its longest answer does (each answer is cut at its own
    end-of-turn); `batch_size` bounds a batch.
    """

    def generate_batch(prompts: list[str], cap: int) -> list[Generation]:
        return generate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=cap)

    batcher = WindowBatcher(generate_batch, max_batch=batch_size, window_s=window_s, max_new_tokens=max_new_tokens,
                            max_queue=max_queue)
    return ServedModel(tokenizer=tokenizer, config=config, version=version, max_new_tokens=max_new_tokens,
                       batcher=batcher, recorder=recorder)


def serve_gguf(
    path: Path, tokenizer: PreTrainedTokenizerBase, config: RunConfig, version: str, slots: int, context: int,
    max_new_tokens: int, max_queue: int = 64, recorder: RequestRecorder | None = None, threads: int | None = None,
    prompt_cache: bool = True,
) -> ServedModel:
    """The version's GGUF export in llama.cpp with continuous batching over `slots` sequences of `context` tokens
    (`prompt_cache`: slots reuse the start a new prompt shares with the one they held)."""
    from llm_lora.llama_slots import LlamaCppSlots

    engine = LlamaCppSlots(path, context=context, slots=slots, threads=threads, prompt_cache=prompt_cache)
    return ServedModel(tokenizer=tokenizer, config=config, version=version, max_new_tokens=max_new_tokens,
                       batcher=ContinuousBatcher(engine, max_new_tokens=max_new_tokens, max_queue=max_queue),
                       engine="llama.cpp", recorder=recorder)


def serve_llama_server(
    path: Path, tokenizer: PreTrainedTokenizerBase, config: RunConfig, version: str, slots: int, context: int,
    max_new_tokens: int, binary: Path, max_queue: int = 64, recorder: RequestRecorder | None = None,
    threads: int | None = None, prompt_cache: bool = True, log: Path | None = None,
) -> ServedModel:
    """The version's GGUF export in llama.cpp's own server (`llm_lora.llama_server.ServerBatcher`), started and
    supervised here, with this module's formatting, parsing, queue gate and records in front."""
    from llm_lora.llama_server import ServerBatcher

    batcher = ServerBatcher(binary, path, slots=slots, context=context, max_new_tokens=max_new_tokens,
                            max_queue=max_queue, threads=threads, prompt_cache=prompt_cache, log=log)
    return ServedModel(tokenizer=tokenizer, config=config, version=version, max_new_tokens=max_new_tokens,
                       batcher=batcher, engine="llama-server", recorder=recorder)


def submit(served: ServedModel, rows: list[tuple[str, str | None, tuple]], max_new_tokens: int | None = None) -> Future:
    """Queue rows (source, system prompt, turns) formatted as the version's training run did; the future gives `Answers`.

    Raises:
        QueueFull: The queue is full (the caller should answer 503 with Retry-After).
    """
    return served.batcher.submit(inference_prompts(served.tokenizer, rows, served.config), max_new_tokens)


def answer(served: ServedModel, texts: list[str]) -> dict:
    """Answer a batch of inputs with the served version, waiting for the queue.

    Args:
        served: The loaded model version.
        texts: Validated inputs (see `Inputs`), each a user message.

    Returns:
        The answering version, and per input: the raw text, whether it parsed as a
        JSON object, the object (None when it did not parse), whether the cap
        stopped it and its prompt's length in tokens; plus the request's latency, its
        time in the queue and its parse rate.

    Raises:
        QueueFull: The queue is full.
    """
    rows = [(f"input {i}", None, (("user", text),)) for i, text in enumerate(texts)]
    started = time.perf_counter()
    answers: Answers = submit(served, rows).result()
    latency = time.perf_counter() - started
    results = prediction_records(rows, answers.generations)
    return {
        "model_version": served.version,
        "results": [{"output": r["output"], "parsed": r["valid_json"], "json": r["json"], "hit_cap": r["hit_cap"],
                     "prompt_tokens": generation.prompt_tokens}
                    for r, generation in zip(results, answers.generations)],
        "latency_s": round(latency, 4),
        "queue_s": round(answers.queue_s, 4),
        "parsed_rate": sum(r["valid_json"] for r in results) / len(results),
    }


def request_record(response: dict, route: str = "invoke") -> dict:
    """What is kept per request: time, route, version, size, prompt lengths, latency and parse success (no texts)."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "route": route,
        "status": 200,
        "model_version": response["model_version"],
        "inputs": len(response["results"]),
        # Each input's formatted prompt in the version's tokens: what input-length drift is measured on
        # (`llm_lora.monitoring`) without keeping any text.
        "input_tokens": [r["prompt_tokens"] for r in response["results"]],
        "latency_s": response["latency_s"],
        "queue_s": response["queue_s"],
        "parsed": sum(r["parsed"] for r in response["results"]),
        "parsed_rate": response["parsed_rate"],
        # Answers stopped by max_new_tokens: a rising count is drift toward inputs the cap was not set for.
        "hit_cap": sum(r["hit_cap"] for r in response["results"]),
        # The chat route's answers: streamed or whole, and how many calls they made.
        **{key: response[key] for key in ("stream", "tool_calls") if key in response},
    }


def refusal_record(version: str, route: str, status: int, reason: str) -> dict:
    """A request refused before generating (a full queue: 503; an input too long for the model: 422)."""
    return {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "route": route,
            "status": status, "model_version": version, "reason": reason}


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def summarize_requests(records: list[dict]) -> dict:
    """Counts and latency percentiles of a run of request records (what a dashboard shows of them)."""
    answered = [r for r in records if r.get("status") == 200]
    latencies = [r["latency_s"] for r in answered]
    inputs = sum(r["inputs"] for r in answered)
    return {
        "from": records[0]["time"] if records else None,
        "to": records[-1]["time"] if records else None,
        "requests": len(records),
        "answered": len(answered),
        "refused": len(records) - len(answered),
        "inputs": inputs,
        "latency_s_p50": _percentile(latencies, 0.5),
        "latency_s_p95": _percentile(latencies, 0.95),
        "latency_s_p99": _percentile(latencies, 0.99),
        "queue_s_p50": _percentile([r["queue_s"] for r in answered], 0.5),
        "parsed_rate": round(sum(r["parsed"] for r in answered) / inputs, 4) if inputs else None,
        "hit_cap": sum(r["hit_cap"] for r in answered),
        "routes": sorted({r.get("route", "invoke") for r in records}),
    }


_log_lock = threading.Lock()


def append_request_log(path: Path, *records: dict) -> None:
    """Append request records as JSON lines, in one write (folders created as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _log_lock, path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))


_STOP = object()
MAX_UNSENT = 10_000  # records kept for a sink that keeps failing (the JSONL file has them all)


class RequestRecorder:
    """Request records kept off the request's path: `record` only queues.

    A thread appends each record to the JSONL file at `path`, and every `flush_s`
    seconds hands the records since its last call to `sink` (the deployment stores
    them in ZenML there). A failing sink is reported through `on_error` and its
    records are offered again at the next flush.

    Args:
        path: JSONL file, one line per request (None: no file).
        sink: Called with a list of new records, from the recorder's thread (None: none).
        flush_s: Seconds between calls to `sink`.
        on_error: Called with the exception when `sink` fails.
    """

    def __init__(self, path: Path | None, sink: Callable[[list[dict]], None] | None = None, flush_s: float = 60.0,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.path = path
        self.sink = sink
        self.flush_s = flush_s
        self.on_error = on_error
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="request-recorder", daemon=True)
        self._thread.start()

    def record(self, record: dict) -> None:
        """Queue one request's record (never blocks)."""
        self._queue.put(record)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued, hand the rest to the sink, stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        unsent: list[dict] = []
        last_flush = time.monotonic()
        stopping = False
        while not stopping:
            wait = max(0.05, self.flush_s - (time.monotonic() - last_flush))
            batch: list[dict] = []
            try:
                item = self._queue.get(timeout=wait)
                while True:  # everything queued now goes out in one write
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if batch and self.path is not None:
                append_request_log(self.path, *batch)
            unsent.extend(batch)
            if self.sink is not None and unsent and (stopping or time.monotonic() - last_flush >= self.flush_s):
                last_flush = time.monotonic()
                try:
                    self.sink(unsent)
                    unsent = []
                except Exception as exc:  # the file has the records; the sink gets them at the next flush
                    unsent = unsent[-MAX_UNSENT:]
                    if self.on_error is not None:
                        self.on_error(exc)
            elif self.sink is None:
                unsent = []
            if not unsent and time.monotonic() - last_flush >= self.flush_s:
                last_flush = time.monotonic()  # nothing to send: the next flush is a full period away


def render_requests_html(records: list[dict], summary: dict) -> str:
    """A page of request records: the summary figures, then one row per request (newest first, no texts)."""
    from llm_lora.html_pages import escape, number, page, table

    figures = table([
        ["requests", summary["requests"]], ["answered", summary["answered"]], ["refused", summary["refused"]],
        ["inputs", summary["inputs"]], ["latency p50 (s)", number(summary["latency_s_p50"])],
        ["latency p95 (s)", number(summary["latency_s_p95"])], ["latency p99 (s)", number(summary["latency_s_p99"])],
        ["queue p50 (s)", number(summary["queue_s_p50"])], ["parsed rate", number(summary["parsed_rate"])],
        ["answers cut by the cap", summary["hit_cap"]],
    ], ["", ""], css="figures", element_id="request-summary")
    rows = [[r["time"], r.get("route", "invoke"), r["status"], r.get("inputs", ""),
             number(r.get("latency_s")), number(r.get("queue_s")), r.get("parsed", ""), r.get("hit_cap", ""),
             r.get("reason", "")] for r in reversed(records)]
    listing = table(rows, ["time", "route", "status", "inputs", "latency s", "queue s", "parsed", "cut by cap", "reason"],
                    css="figures", element_id="requests")
    version = records[0]["model_version"] if records else ""
    body = (f"<h2>Requests served</h2><p>{escape(version)}, {escape(summary['from'])} to {escape(summary['to'])}</p>"
            + figures + "<h3>Each request</h3>" + listing)
    return page("Requests served", body)

"""HTTP routes the deployment adds next to ZenML's /invoke: OpenAI's chat completions, and a queue gate.

`POST /v1/chat/completions` answers from the loaded version straight through its request
queue, without a pipeline run per request (tools, streaming and JSON mode as
`llm_lora.openai_api` describes them): the request's record goes to the deployment's
recorder (the JSONL request log, and every `deploy.record_every_s` one `served_requests`
artifact in ZenML). `GET /v1/models` names the served version. Both sit behind the
deployment's auth key when it has one, as /invoke does.

`QueueGate` answers a POST /invoke with 503 and Retry-After while the queue is full, before
ZenML creates the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llm_lora.batching import QueueFull
from llm_lora.data_formats import RowError
from llm_lora.generation import Generation
from llm_lora.inference import inference_prompts, prediction_records
from llm_lora.metrics import parse_tool_calls, text_before_calls
from llm_lora.openai_api import ChatCompletionRequest, ChunkWriter, chat_completion, error_body, json_schema_grammar
from llm_lora.prompt_formatting import TemplateError, call_layout
from llm_lora.tool_calls import call_grammar
from llm_lora.serving import ServedModel, refusal_record, request_record

CHAT_ROUTE = "/v1/chat/completions"
MODELS_ROUTE = "/v1/models"


def served_model() -> ServedModel | None:
    """The version the deployment's init hook loaded (None before it has)."""
    from zenml.steps.step_context import get_or_create_run_context

    context = get_or_create_run_context()
    state = context.state if context.initialized else None
    return state if isinstance(state, ServedModel) else None


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(status_code=503, content=error_body(message, "service_unavailable"), headers={"Retry-After": "5"})


def _record(served: ServedModel, record: dict) -> None:
    if served.recorder is not None:
        served.recorder.record(record)


def _invalid(detail: list[dict]) -> JSONResponse:
    """422 in both shapes: OpenAI's `error` (what its clients show) and FastAPI's `detail` (as /invoke)."""
    fields = [".".join(str(part) for part in e["loc"][1:]) for e in detail]
    body = error_body("; ".join(f"{field or 'body'}: {e['msg']}" for field, e in zip(fields, detail)),
                      "invalid_request_error")
    body["error"]["param"] = fields[0] or None
    return JSONResponse(status_code=422, content={**body, "detail": detail})


class CallFilter:
    """What of a streamed answer may go out as text while it might still turn into a function call.

    With tools offered, text goes out as it comes until a call begins (a `<tool_call>` block, in the
    fallback rendering), holding back what could be the start of one; an answer that starts as JSON
    (a call in Llama 3.1's or Mistral's rendering) is held whole. The end of the answer decides.
    """

    MARKER = "<tool_call>"

    def __init__(self, tools: bool) -> None:
        self.tools = tools
        self.text = ""
        self.sent = 0
        self.held = False

    def add(self, piece: str) -> str:
        """The text that may go out now."""
        self.text += piece
        if not self.tools:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out
        if self.held or self.text.lstrip().startswith(("{", "[", "```")):
            self.held = True
            return ""
        end = self.text.find(self.MARKER)
        if end < 0:  # keep back a tail that could be the marker's start
            end = len(self.text)
            for size in range(min(len(self.MARKER) - 1, len(self.text)), 0, -1):
                if self.MARKER.startswith(self.text[-size:]):
                    end -= size
                    break
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out


def _answer(served: ServedModel, body: ChatCompletionRequest, row: tuple, prefill: str, generation: Generation
            ) -> tuple[Generation, list[dict] | None, str]:
    """The answer with the started call put back in front, its calls when it makes any, and its text beside them."""
    if prefill:
        generation = replace(generation, text=(prefill + generation.text).strip())
    if not body.offered_tools:
        return generation, None, ""
    calls = parse_tool_calls(generation.text)
    if calls and body.parallel_tool_calls is False:
        calls = calls[:1]
    return generation, calls, text_before_calls(generation.text) if calls else ""


def _record_answer(served: ServedModel, body: ChatCompletionRequest, generation: Generation, calls, queue_s: float,
                   started: float) -> None:
    if body.offered_tools:
        parsed = calls is not None
    else:
        parsed = prediction_records([("chat", None, (("user", ""),))], [generation])[0]["valid_json"]
    _record(served, request_record({
        "model_version": served.version,
        "results": [{"parsed": parsed, "hit_cap": generation.hit_cap, "prompt_tokens": generation.prompt_tokens}],
        "latency_s": round(time.perf_counter() - started, 4),
        "queue_s": round(queue_s, 4),
        "parsed_rate": float(parsed),
        "stream": body.stream,
        "tool_calls": len(calls or []),
    }, route="chat"))


async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions: one greedy answer from the served version, whole or streamed.

    Body: OpenAI's, `{"messages": [...], "tools": [...], "stream": true, "response_format": {...}}`; the
    conversation ends with a user message or a tool result; `max_tokens` may lower the version's cap.
    Any OpenAI client works with `base_url=<deployment>/v1`.
    """
    try:
        body = ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid([{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                         for e in exc.errors(include_url=False, include_context=False, include_input=False)])
    served = served_model()
    if served is None:
        return _unavailable("the model is still loading")
    try:
        row = body.row()
    except RowError as exc:
        return _invalid([{"loc": ["body", "messages"], "msg": str(exc), "type": "value_error"}])
    grammar = None
    if body.json_mode:
        if not served.batcher.supports_grammar:
            return _invalid([{"loc": ["body", "response_format"], "type": "value_error", "msg": (
                f"{body.response_format.type} needs constrained decoding, which the llama.cpp engine has;"
                f" this deployment serves with {served.engine} (deploy.engine: llama.cpp)")}])
        try:
            grammar = json_schema_grammar(body.response_format)
        except ValueError as exc:
            return _invalid([{"loc": ["body", "response_format"], "msg": str(exc), "type": "value_error"}])
    prompt = inference_prompts(served.tokenizer, [row], served.config)[0]
    prefill = ""
    if body.offered_tools and (body.tool_choice == "required" or body.forced_function):
        # The answer is started as a call in the version's own rendering; in llama.cpp a grammar keeps the
        # rest of it a call of an offered function with arguments its parameters' schema allows.
        try:
            layout = call_layout(served.tokenizer, row[2], row[1] if row[1] is not None else
                                 served.config.data.system_prompt, row[3], served.config.data.plain_template)
            prefill = layout.prefill(body.forced_function)
            if served.batcher.supports_grammar:
                grammar = call_grammar(body.offered_tools, layout.middle, layout.suffix, body.forced_function)
        except (TemplateError, ValueError) as exc:
            return _invalid([{"loc": ["body", "tool_choice"], "msg": str(exc), "type": "value_error"}])
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue | None = asyncio.Queue() if body.stream else None

    def on_text(_: int, piece: str) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    started = time.perf_counter()
    try:
        future = served.batcher.submit([prompt + prefill], body.cap, grammar=grammar,
                                       on_text=on_text if body.stream else None)
    except QueueFull as exc:
        _record(served, refusal_record(served.version, "chat", 503, "queue full"))
        return JSONResponse(status_code=503, content=error_body(str(exc), "overloaded", "queue_full"),
                            headers={"Retry-After": str(exc.retry_after_s)})
    except RuntimeError as exc:  # shutting down
        return _unavailable(str(exc))
    if body.stream:
        return StreamingResponse(_stream(served, body, row, prefill, future, pieces, started),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        answers = await asyncio.wrap_future(future)
    except ValueError as exc:  # the prompt does not fit the engine's context
        _record(served, refusal_record(served.version, "chat", 422, "prompt too long"))
        return _invalid([{"loc": ["body", "messages"], "msg": str(exc), "type": "value_error"}])
    except RuntimeError as exc:
        return _unavailable(str(exc))
    finally:
        if not future.done():  # the client went away while its answer was generated
            served.batcher.cancel(future)
    generation, calls, content = _answer(served, body, row, prefill, answers.generations[0])
    _record_answer(served, body, generation, calls, answers.queue_s, started)
    return JSONResponse(chat_completion(served.version, generation, calls, content))


async def _stream(served: ServedModel, body: ChatCompletionRequest, row: tuple, prefill: str, future,
                  pieces: asyncio.Queue, started: float):
    """The server-sent events of one answer; a client that disconnects gives its slot back at once."""
    writer = ChunkWriter(served.version)
    done = asyncio.wrap_future(future)
    gate = CallFilter(bool(body.offered_tools))
    if prefill:
        gate.add(prefill)
    try:
        yield writer.start()
        while True:
            waiting = asyncio.ensure_future(pieces.get())
            finished, _ = await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting in finished:
                text = gate.add(waiting.result())
                if text:
                    yield writer.text(text)
                continue
            waiting.cancel()
            break
        while not pieces.empty():  # pieces that came with the last step
            text = gate.add(pieces.get_nowait())
            if text:
                yield writer.text(text)
        try:
            answers = done.result()
        except ValueError as exc:
            _record(served, refusal_record(served.version, "chat", 422, "prompt too long"))
            yield writer.error(str(exc), "invalid_request_error")
            yield writer.done()
            return
        except RuntimeError as exc:
            yield writer.error(str(exc), "service_unavailable")
            yield writer.done()
            return
        generation, calls, content = _answer(served, body, row, prefill, answers.generations[0])
        sent = gate.text[:gate.sent]
        final = content if calls else generation.text
        rest = final[len(sent):] if final.startswith(sent) else ""
        if calls:
            yield writer.calls(calls, rest)
            yield writer.finish("tool_calls")
        else:
            if rest:
                yield writer.text(rest)
            yield writer.finish("length" if generation.hit_cap else "stop")
        if body.stream_options is not None and body.stream_options.include_usage:
            yield writer.usage(generation)
        yield writer.done()
        _record_answer(served, body, generation, calls, answers.queue_s, started)
    finally:
        if not future.done():  # the client disconnected mid-answer
            served.batcher.cancel(future)


async def list_models() -> JSONResponse:
    """OpenAI's model list: the one version this deployment serves."""
    served = served_model()
    if served is None:
        return _unavailable("the model is still loading")
    return JSONResponse({"object": "list", "data": [
        {"id": served.version, "object": "model", "created": 0, "owned_by": "llm-lora"}]})


class QueueGate:
    """ASGI middleware: a POST to /invoke while the queue is full gets 503 with Retry-After at once."""

    def __init__(self, app, **_: object) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/invoke"):
            served = served_model()
            batcher = served.batcher if served is not None else None
            if batcher is not None and batcher.waiting >= batcher.max_queue:
                retry = batcher.drain_time()
                _record(served, refusal_record(served.version, "invoke", 503, "queue full"))
                response = JSONResponse(
                    status_code=503, headers={"Retry-After": str(retry)},
                    content={"detail": f"{batcher.waiting} inputs are waiting (limit {batcher.max_queue}); "
                                       f"retry in {retry} s"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def deployment_settings():
    """The DeploymentSettings that add these routes and the gate to the deployment's app."""
    from zenml.config import DeploymentSettings, EndpointMethod, EndpointSpec, MiddlewareSpec

    return DeploymentSettings(
        custom_endpoints=[
            # The body is validated in the handler, so that errors come in OpenAI's shape too.
            EndpointSpec(path=CHAT_ROUTE, method=EndpointMethod.POST, handler=chat_completions),
            EndpointSpec(path=MODELS_ROUTE, method=EndpointMethod.GET, handler=list_models),
        ],
        custom_middlewares=[MiddlewareSpec(middleware=QueueGate)],
    )

"""HTTP routes the deployment adds next to ZenML's /invoke: OpenAI's chat completions, and a queue gate.

`POST /v1/chat/completions` answers from the loaded version straight through its request
queue, without a pipeline run per request: the request's record goes to the deployment's
recorder (the JSONL request log, and every `deploy.record_every_s` one `served_requests`
artifact in ZenML). `GET /v1/models` names the served version. Both sit behind the
deployment's auth key when it has one, as /invoke does.

`QueueGate` answers a POST /invoke with 503 and Retry-After while the queue is full, before
ZenML creates the run.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from llm_lora.batching import QueueFull
from llm_lora.inference import prediction_records
from llm_lora.openai_api import ChatCompletionRequest, chat_completion, error_body
from llm_lora.serving import ServedModel, refusal_record, request_record, submit

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


async def chat_completions(request: Request) -> JSONResponse:
    """OpenAI's chat completions (non-streaming): one greedy answer from the served version.

    Body: `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`, ending with
    a user message; `max_tokens` may lower the version's cap. Any OpenAI client works with
    `base_url=<deployment>/v1`.
    """
    try:
        body = ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid([{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                         for e in exc.errors(include_url=False, include_context=False, include_input=False)])
    served = served_model()
    if served is None:
        return _unavailable("the model is still loading")
    row = body.row()
    started = time.perf_counter()
    try:
        future = submit(served, [row], body.cap)
    except QueueFull as exc:
        _record(served, refusal_record(served.version, "chat", 503, "queue full"))
        return JSONResponse(status_code=503, content=error_body(str(exc), "overloaded", "queue_full"),
                            headers={"Retry-After": str(exc.retry_after_s)})
    except RuntimeError as exc:  # shutting down
        return _unavailable(str(exc))
    try:
        answers = await asyncio.wrap_future(future)
    except ValueError as exc:  # the prompt does not fit the engine's context
        _record(served, refusal_record(served.version, "chat", 422, "prompt too long"))
        return _invalid([{"loc": ["body", "messages"], "msg": str(exc), "type": "value_error"}])
    except RuntimeError as exc:
        return _unavailable(str(exc))
    generation = answers.generations[0]
    result = prediction_records([row], [generation])[0]
    _record(served, request_record({
        "model_version": served.version,
        "results": [{"parsed": result["valid_json"], "hit_cap": result["hit_cap"],
                     "prompt_tokens": generation.prompt_tokens}],
        "latency_s": round(time.perf_counter() - started, 4),
        "queue_s": round(answers.queue_s, 4),
        "parsed_rate": float(result["valid_json"]),
    }, route="chat"))
    return JSONResponse(chat_completion(served.version, generation))


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

"""Init and cleanup hooks of the deployed inference pipeline: load a model version once, at server start."""

from pathlib import Path

from zenml.logger import get_logger

from llm_lora.model_loading import load_tokenizer
from llm_lora.serving import RequestRecorder, ServedModel, serve_gguf, serve_llama_server, serve_transformers
from steps.support.model_version import find_model_version, gguf_file, load_model_version, recorded_cap
from steps.support.request_records import log_sink_error, zenml_request_sink

logger = get_logger(__name__)


def load_served_model(
    model_name: str,
    version: str = "production",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    request_log: str | None = None,
    engine: str = "transformers",
    gguf_type: str | None = None,
    gguf_context: int = 2048,
    prompt_cache: bool = True,
    max_queue: int = 64,
    batch_window_ms: float = 10.0,
    record_every_s: float = 60.0,
    llama_server: str | None = None,
) -> ServedModel:
    """Load a registered version once; ZenML keeps the result as pipeline state.

    Runs once when the deployment starts (not per request); the `answer_request`
    step and the OpenAI route read it from the pipeline state.

    Args:
        model_name: The ZenML Model the finetune pipeline versions.
        version: A stage (production, staging), a version number, or a version name.
        batch_size: Inputs generated together (llama.cpp: its slots; transformers: its batch).
        max_new_tokens: Cap on each answer (None: the training run's evaluation setting).
        request_log: JSONL file for one line per request (None: none).
        engine: "transformers" (base model + adapter), "llama.cpp" (the version's GGUF export, in this
            process) or "llama-server" (the GGUF export in llama.cpp's own server, started here).
        gguf_type: With a GGUF engine: which exported type (None: the first the run exported).
        gguf_context: With a GGUF engine: tokens of prompt + answer each slot holds.
        prompt_cache: With a GGUF engine: a slot reuses the start a new prompt shares with one it read.
        max_queue: Inputs that may wait for the model; past it requests get 503 with Retry-After.
        batch_window_ms: With transformers: how long a request waits for others to share its batch.
        record_every_s: Seconds between `served_requests` artifacts in ZenML (0: none).
        llama_server: With llama-server: its binary (None: `llm_lora.llama_server.server_binary()`).

    Returns:
        The loaded version behind its request queue.
    """
    found, config = find_model_version(model_name, version, "deploy.version")
    recorder = RequestRecorder(
        Path(request_log) if request_log else None,
        sink=zenml_request_sink(found) if record_every_s > 0 else None,
        flush_s=record_every_s or 60.0, on_error=log_sink_error,
    )
    if engine == "llama-server":
        from llm_lora.llama_server import server_binary

        path = gguf_file(found, gguf_type, "deploy", engine)
        label = f"{model_name} {found.name} ({found.stage or 'no stage'}, {path.name})"
        binary = Path(llama_server) if llama_server else server_binary()
        logger.info("Serving %s in %s, %d slots of %d tokens", label, binary, batch_size, gguf_context)
        log = Path(request_log).with_suffix(".llama-server.log") if request_log else None
        return serve_llama_server(path, load_tokenizer(config.model), config, label, slots=batch_size,
                                  context=gguf_context, max_new_tokens=max_new_tokens or recorded_cap(found, config),
                                  binary=binary, max_queue=max_queue, recorder=recorder, prompt_cache=prompt_cache,
                                  log=log)
    if engine == "llama.cpp":
        path = gguf_file(found, gguf_type, "deploy")
        label = f"{model_name} {found.name} ({found.stage or 'no stage'}, {path.name})"
        logger.info("Serving %s in llama.cpp, %d slots of %d tokens", label, batch_size, gguf_context)
        return serve_gguf(path, load_tokenizer(config.model), config, label, slots=batch_size, context=gguf_context,
                          max_new_tokens=max_new_tokens or recorded_cap(found, config), max_queue=max_queue,
                          recorder=recorder, prompt_cache=prompt_cache)
    loaded = load_model_version(model_name, version, "deploy.version")
    loaded.model.eval()
    logger.info("Serving %s", loaded.label)
    return serve_transformers(loaded.model, loaded.tokenizer, loaded.config, loaded.label, batch_size=batch_size,
                              max_new_tokens=max_new_tokens or loaded.max_new_tokens,
                              window_s=batch_window_ms / 1000, max_queue=max_queue, recorder=recorder)


def close_served_model() -> None:
    """Cleanup hook: stop generating and store the request records still pending."""
    from zenml.steps.step_context import get_or_create_run_context

    context = get_or_create_run_context()
    served = context.state if context.initialized else None
    if isinstance(served, ServedModel):
        served.close()

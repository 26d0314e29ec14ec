"""Init hook of the deployed inference pipeline: load a model version once, at server start."""

from pathlib import Path

from zenml.logger import get_logger

from llm_lora.gguf_export import LlamaCppEngine
from llm_lora.model_loading import load_tokenizer
from llm_lora.serving import ServedModel
from steps.support.model_version import find_model_version, gguf_file, load_model_version, recorded_cap

logger = get_logger(__name__)


def load_served_model(
    model_name: str,
    version: str = "production",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    request_log: str | None = None,
    engine: str = "transformers",
    gguf_type: str | None = None,
    gguf_context: int = 4096,
) -> ServedModel:
    """Load a registered version once; ZenML keeps the result as pipeline state.

    Runs once when the deployment starts (not per request); the `answer_request`
    step reads it with `get_step_context().pipeline_state`.

    Args:
        model_name: The ZenML Model the finetune pipeline versions.
        version: A stage (production, staging), a version number, or a version name.
        batch_size: Inputs per generation batch.
        max_new_tokens: Cap on each answer (None: the training run's evaluation setting).
        request_log: JSONL file for one line per request (None: none).
        engine: "transformers" (base model + adapter) or "llama.cpp" (the version's GGUF export).
        gguf_type: With llama.cpp: which exported type (None: the first the run exported).
        gguf_context: With llama.cpp: tokens of prompt + answer the server holds.

    Returns:
        The loaded version.
    """
    log = Path(request_log) if request_log else None
    if engine == "llama.cpp":
        found, config = find_model_version(model_name, version, "deploy.version")
        path = gguf_file(found, gguf_type, "deploy")
        label = f"{model_name} {found.name} ({found.stage or 'no stage'}, {path.name})"
        logger.info("Serving %s in llama.cpp", label)
        return ServedModel(model=None, tokenizer=load_tokenizer(config.model), config=config, version=label,
                           batch_size=batch_size, max_new_tokens=max_new_tokens or recorded_cap(found, config),
                           request_log=log, engine=LlamaCppEngine(path, gguf_context))
    loaded = load_model_version(model_name, version, "deploy.version")
    model, tokenizer, config, label = loaded.model, loaded.tokenizer, loaded.config, loaded.label
    model.eval()
    logger.info("Serving %s", label)
    return ServedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        version=label,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or loaded.max_new_tokens,
        request_log=log,
    )

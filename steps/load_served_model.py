"""Init hook of the deployed inference pipeline: load a model version once, at server start."""

from pathlib import Path

from zenml.logger import get_logger

from llm_lora.serving import ServedModel
from steps.support.model_version import load_model_version

logger = get_logger(__name__)


def load_served_model(
    model_name: str,
    version: str = "production",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    request_log: str | None = None,
) -> ServedModel:
    """Load the base model and the adapter of a registered version; ZenML keeps the result as pipeline state.

    Runs once when the deployment starts (not per request); the `answer_request`
    step reads it with `get_step_context().pipeline_state`.

    Args:
        model_name: The ZenML Model the finetune pipeline versions.
        version: A stage (production, staging), a version number, or a version name.
        batch_size: Inputs per generation batch.
        max_new_tokens: Cap on each answer (None: the training run's evaluation setting).
        request_log: JSONL file for one line per request (None: none).

    Returns:
        The loaded version.
    """
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
        request_log=Path(request_log) if request_log else None,
    )

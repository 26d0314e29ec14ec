"""Init hook of the deployed inference pipeline: load a model version once, at server start."""

from pathlib import Path

from zenml.client import Client
from zenml.logger import get_logger

from llm_lora.config import RunConfig
from llm_lora.model_loading import default_device, load_model, load_tokenizer
from llm_lora.serving import ServedModel
from llm_lora.training import load_adapter
from steps.hub_token import apply_hub_token

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
    version_id = int(version) if version.isdigit() else version
    try:
        model_version = Client().get_model_version(model_name, version_id)
    except KeyError:
        raise ValueError(
            f"deploy.version: model {model_name!r} has no version {version!r}; "
            "run the finetune pipeline first (python run.py --config configs/quickstart.yaml)"
        ) from None
    config = RunConfig.from_json(model_version.run_metadata["run_config_json"])
    apply_hub_token(config.model)
    adapter = model_version.get_artifact("lora_adapter").load()
    tokenizer = load_tokenizer(config.model)
    model = load_adapter(load_model(config.model, device=default_device()), adapter.directory)
    model.eval()
    label = f"{model_name} {model_version.name} ({model_version.stage or 'no stage'})"
    logger.info("Serving %s", label)
    return ServedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        version=label,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or config.evaluation.max_new_tokens,
        request_log=Path(request_log) if request_log else None,
    )

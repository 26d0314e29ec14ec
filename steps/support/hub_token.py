"""The Hugging Face token for gated and private models: from the environment or a ZenML secret.

The token is put where huggingface_hub looks for it (HF_TOKEN in the step's
process) and nowhere else: not in the config, artifacts, metadata or logs.
"""

import os

from zenml.client import Client

from llm_lora.config import ModelConfig


def apply_hub_token(model: ModelConfig) -> str:
    """Make the configured token available to downloads in this process.

    Args:
        model: The model section; `token_secret` names a ZenML secret with a `token` key.

    Returns:
        Where the token came from (never the token itself).

    Raises:
        ValueError: The secret is missing or has no token.
    """
    if not model.token_secret:
        return "environment (HF_TOKEN)" if os.environ.get("HF_TOKEN") else "none"
    try:
        values = Client().get_secret(model.token_secret).secret_values
    except KeyError:
        raise ValueError(
            f"model.token_secret: no ZenML secret {model.token_secret!r}"
            f" (zenml secret create {model.token_secret} --token=<hf token>)"
        ) from None
    token = values.get("token") or values.get("HF_TOKEN")
    if not token:
        raise ValueError(f"model.token_secret: secret {model.token_secret!r} has no key 'token'")
    os.environ["HF_TOKEN"] = token
    return f"zenml secret {model.token_secret!r}"

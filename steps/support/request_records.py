"""Request records of a deployment, stored in ZenML in batches: one `served_requests` artifact per flush."""

from __future__ import annotations

from typing import Callable

from zenml import save_artifact
from zenml.logger import get_logger
from zenml.model.utils import link_artifact_version_to_model_version
from zenml.models import ModelVersionResponse
from zenml.types import HTMLString

from llm_lora.serving import render_requests_html, summarize_requests

logger = get_logger(__name__)

ARTIFACT_NAME = "served_requests"


def zenml_request_sink(model_version: ModelVersionResponse) -> Callable[[list[dict]], None]:
    """A recorder sink: each batch of records becomes a `served_requests` artifact version (a page of them,
    with the summary as metadata) linked to the model version that answered them."""

    def sink(records: list[dict]) -> None:
        summary = summarize_requests(records)
        artifact = save_artifact(
            HTMLString(render_requests_html(records, summary)), name=ARTIFACT_NAME,
            user_metadata={key: value for key, value in summary.items() if value is not None},
        )
        link_artifact_version_to_model_version(artifact, model_version)

    return sink


def log_sink_error(exc: Exception) -> None:
    logger.warning("request records not stored in ZenML yet (%s: %s); the next flush tries again, "
                   "and deploy.request_log has them all", type(exc).__name__, exc)

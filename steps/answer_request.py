"""Step: answer one HTTP request with the model version the deployment loaded at start-up."""

from typing import Annotated

from zenml import ArtifactConfig, get_step_context, log_metadata, step

from llm_lora.serving import ServedModel, answer, append_request_log, request_record


@step(enable_cache=False)
def answer_request(inputs: list[str]) -> Annotated[dict, ArtifactConfig(name="answers")]:
    """Format, generate and parse each input; record the request's latency and parse success.

    Args:
        inputs: The request's texts, already validated by the HTTP schema.

    Returns:
        The answering model version, and per input the raw text, whether it
        parsed and the parsed JSON object; the request's latency and parse rate.
    """
    served = get_step_context().pipeline_state
    if not isinstance(served, ServedModel):
        raise RuntimeError(
            "no model loaded: answer_request runs in a deployment (python run.py --config configs/deploy.yaml)"
        )
    response = answer(served, inputs)
    record = request_record(response)
    # On the run (dashboard, `zenml pipeline runs list`), and as a cheap line in a file.
    log_metadata(metadata=record)
    if served.request_log is not None:
        append_request_log(served.request_log, record)
    return response

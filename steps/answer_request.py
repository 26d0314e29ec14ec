"""Step: answer one HTTP request with the model version the deployment loaded at start-up."""

from typing import Annotated

from zenml import ArtifactConfig, get_step_context, log_metadata, step

from llm_lora.serving import ServedModel, answer, request_record


@step(enable_cache=False)
def answer_request(inputs: list[str]) -> Annotated[dict, ArtifactConfig(name="answers")]:
    """Format, generate and parse each input through the deployment's request queue; record the request.

    Concurrent requests share the model's batches (see `llm_lora.batching`).

    Args:
        inputs: The request's texts, already validated by the HTTP schema.

    Returns:
        The answering model version, and per input the raw text, whether it
        parsed and the parsed JSON object; the request's latency, queue time and parse rate.
    """
    served = get_step_context().pipeline_state
    if not isinstance(served, ServedModel):
        raise RuntimeError(
            "no model loaded: answer_request runs in a deployment (python run.py --config configs/deploy.yaml)"
        )
    response = answer(served, inputs)
    record = request_record(response, route="invoke")
    # On this request's run (the dashboard's run list), and with every route's records in the request log.
    log_metadata(metadata=record)
    if served.recorder is not None:
        served.recorder.record(record)
    return response

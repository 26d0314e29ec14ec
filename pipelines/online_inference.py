"""The production model behind HTTP: a pipeline built for `zenml pipeline deploy`."""

from zenml import pipeline

from llm_lora.serving import Inputs
from pipelines.serving_routes import deployment_settings
from steps.answer_request import answer_request


@pipeline(enable_cache=False, settings={"deployment": deployment_settings()})
def online_inference(inputs: Inputs) -> dict:
    """Answer one or a batch of inputs per HTTP request with a registered model version.

    Deployed (run.py with configs/deploy.yaml), the server runs the init hook
    `steps.load_served_model.load_served_model` once: it loads the version behind
    its request queue. `POST /v1/chat/completions` (OpenAI's API, see
    `pipelines.serving_routes`) answers through that queue without a run per
    request. Each POST /invoke runs:

    Steps:
        1. answer_request: format each input exactly as training did, generate,
           parse the JSON answer, record latency and parse success.

    Args:
        inputs: One text or a list of texts (1 to 16, each 1 to 4,000 characters).

    Returns:
        The answers and the model version that produced them.
    """
    return answer_request(inputs=inputs)

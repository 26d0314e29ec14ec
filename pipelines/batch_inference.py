"""Batch inference with a registered model version."""

from zenml import pipeline

from steps.batch_predict import batch_predict


@pipeline
def batch_inference(inference_json: str) -> None:
    """Answer a file of new rows with the production (or a named) model version.

    Steps:
        1. batch_predict: load the version's adapter, format each row exactly as
           its training run did, generate, write predictions (artifact and JSONL file).

    Args:
        inference_json: The inference configuration (InferenceConfig as JSON).
    """
    batch_predict(inference_json=inference_json)

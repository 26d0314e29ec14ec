"""ZenML pipelines."""

from pipelines.batch_inference import batch_inference
from pipelines.finetune import finetune

__all__ = ["batch_inference", "finetune"]

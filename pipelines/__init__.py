"""ZenML pipelines."""

from pipelines.batch_inference import batch_inference
from pipelines.finetune import finetune
from pipelines.online_inference import online_inference

__all__ = ["batch_inference", "finetune", "online_inference"]

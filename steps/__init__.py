"""ZenML steps: thin wrappers around the llm_lora package."""

from steps.evaluate_model import evaluate_model
from steps.preflight_report import preflight_report
from steps.prepare_data import prepare_data
from steps.promote_model import promote_model
from steps.train_lora import launch_with_accelerate, train_lora

__all__ = ["evaluate_model", "launch_with_accelerate", "preflight_report", "prepare_data", "promote_model", "train_lora"]

"""ZenML steps: thin wrappers around the llm_lora package."""

from steps.answer_request import answer_request
from steps.batch_predict import batch_predict
from steps.compare_models import compare_models
from steps.evaluate_model import evaluate_model
from steps.export_gguf import export_gguf
from steps.export_merged import export_merged
from steps.preflight_report import preflight_report
from steps.prepare_data import prepare_data
from steps.promote_model import promote_model
from steps.train_lora import launch_with_accelerate, train_lora
from steps.worth_it_report import worth_it_report

__all__ = [
    "answer_request", "batch_predict", "compare_models", "evaluate_model", "export_gguf", "export_merged", "launch_with_accelerate",
    "preflight_report", "prepare_data", "promote_model", "train_lora", "worth_it_report",
]

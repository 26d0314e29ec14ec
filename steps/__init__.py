"""ZenML steps: thin wrappers around the llm_lora package."""

from steps.answer_request import answer_request
from steps.batch_predict import batch_predict
from steps.check_traffic import check_traffic
from steps.compare_models import compare_models
from steps.decide_action import decide_action
from steps.evaluate_model import evaluate_model
from steps.evaluate_recorded import evaluate_recorded
from steps.export_gguf import export_gguf
from steps.export_merged import export_merged
from steps.preflight_report import preflight_report
from steps.prepare_data import prepare_data
from steps.promote_model import promote_model
from steps.rescore_production import rescore_production
from steps.retrain_model import retrain_model
from steps.train_lora import launch_with_accelerate, train_lora
from steps.worth_it_report import worth_it_report

__all__ = [
    "answer_request", "batch_predict", "check_traffic", "compare_models", "decide_action", "evaluate_model", "evaluate_recorded", "export_gguf",
    "export_merged", "launch_with_accelerate", "preflight_report", "prepare_data", "promote_model", "rescore_production",
    "retrain_model", "train_lora", "worth_it_report",
]

"""ZenML steps: thin wrappers around the llm_lora package, one step per module, named as the step.

Import a step from its module (`from steps.train_lora import train_lora`). This package imports nothing
itself: the command line's checks import `steps.support` helpers, and importing every step with them
would import torch, transformers and pandas for a config check.

    prepare_data, preflight_report, evaluate_model (evaluate_base, evaluate_few_shot, evaluate_reference,
    evaluate_finetuned), evaluate_recorded, train_lora (with launch_with_accelerate), compare_models,
    worth_it_report, export_merged, export_gguf, promote_model: the finetune pipeline
    batch_predict: batch inference; answer_request and load_served_model: the deployment
    check_traffic, rescore_production, decide_action, retrain_model: the monitor pipeline
"""

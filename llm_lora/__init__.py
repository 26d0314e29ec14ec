"""Core logic of the LoRA finetuning pipelines (no ZenML imports)."""

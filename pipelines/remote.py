"""ZenML settings for running the finetune pipeline on a remote stack, from the YAML's `remote` section."""

from __future__ import annotations

from llm_lora.config import RemoteConfig

MODEL_STEPS = (
    "evaluate_base", "evaluate_few_shot", "evaluate_reference", "evaluate_finetuned", "promote_model", "export_merged",
    "export_gguf",
)


def remote_options(remote: RemoteConfig) -> dict:
    """`with_options` arguments: the Docker image for every step, GPUs and retries where they matter.

    Args:
        remote: The YAML's `remote` section.

    Returns:
        `settings` (Docker), `retry`, and per-step `steps` configuration.
    """
    from zenml.config import DockerSettings, ResourceSettings
    from zenml.config.retry_config import StepRetryConfig

    docker = DockerSettings(
        parent_image=remote.parent_image,
        requirements=remote.requirements,
        apt_packages=remote.apt_packages,
        environment=remote.environment,
    )
    training: dict = {
        "settings": {"resources": ResourceSettings(gpu_count=remote.train_gpus, memory=remote.train_memory)}
    }
    if remote.training_step_operator:
        training["step_operator"] = remote.training_step_operator
    steps = {"train_lora": training}
    if remote.eval_gpus:
        for name in MODEL_STEPS:
            steps[name] = {"settings": {"resources": ResourceSettings(gpu_count=remote.eval_gpus)}}
    options: dict = {"settings": {"docker": docker}, "steps": steps}
    if remote.retries:
        options["retry"] = StepRetryConfig(max_retries=remote.retries, delay=remote.retry_delay_s, backoff=2)
    return options

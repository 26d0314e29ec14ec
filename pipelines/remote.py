"""ZenML settings for running the finetune pipeline on a remote stack, from the YAML's `remote` section."""

from __future__ import annotations

from pathlib import Path

from llm_lora.config import RemoteConfig

MODEL_STEPS = (
    "evaluate_base", "evaluate_few_shot", "evaluate_reference", "evaluate_finetuned", "promote_model", "export_merged",
    "export_gguf",
)


# What the image needs for GGUF export: llama-cpp-python builds from source there.
EXPORT_REQUIREMENTS = "requirements-export.txt"
REPO = Path(__file__).resolve().parent.parent
EXPORT_APT_PACKAGES = ("cmake", "g++")


def remote_options(remote: RemoteConfig, gguf_export: bool = False) -> dict:
    """`with_options` arguments: the Docker image for every step, GPUs and retries where they matter.

    Args:
        remote: The YAML's `remote` section.
        gguf_export: The run exports GGUF files: the image also gets requirements-export.txt and
            the toolchain its llama.cpp build needs.

    Returns:
        `settings` (Docker), `retry`, and per-step `steps` configuration.
    """
    from zenml.config import DockerSettings, ResourceSettings
    from zenml.config.retry_config import StepRetryConfig

    requirements: str | list[str] = remote.requirements
    apt_packages = list(remote.apt_packages)
    if gguf_export:
        # DockerSettings takes one requirements file or a package list: both files as one list.
        requirements = [line.split("#", 1)[0].strip() for name in (remote.requirements, EXPORT_REQUIREMENTS)
                        for line in (REPO / name).read_text().splitlines() if line.split("#", 1)[0].strip()]
        apt_packages += [name for name in EXPORT_APT_PACKAGES if name not in apt_packages]
    docker = DockerSettings(
        parent_image=remote.parent_image,
        requirements=requirements,
        apt_packages=apt_packages,
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

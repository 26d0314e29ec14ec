"""Checks of a finetune config against its model files and rows: what fails in a second, before any run."""

from __future__ import annotations

from llm_lora.config import ConfigError, RunConfig
from llm_lora.data_preparation import check_rows
from llm_lora.model_loading import check_model_files


def check_models(config: RunConfig) -> dict:
    """The model files (and the reference model's), and the LoRA rank against the model's hidden size.

    Returns:
        What the local files say about the model (`check_model_files`).

    Raises:
        ModelSourceError: A model path that is missing or a model file that is damaged.
        ConfigError: lora.rank above the model's hidden size.
    """
    facts = check_model_files(config.model.name, trust_remote_code=config.model.trust_remote_code)
    hidden = facts.get("hidden_size")
    if hidden and config.lora.rank > hidden:
        raise ConfigError(
            f"lora.rank: {config.lora.rank} is above the model's hidden size ({hidden}), the most a LoRA update"
            f" of its layers can use; choose at most {hidden} (8 to 64 is usual)"
        )
    reference = config.baselines.reference_model
    if reference is not None:
        check_model_files(reference.name, "baselines.reference_model.name", reference.trust_remote_code)
    return facts


def check_data(config: RunConfig) -> dict[str, int] | None:
    """Every local row read, converted and split as the pipeline will (`check_rows`), and enough for few-shot.

    Returns:
        Rows per split, or None for a hub dataset (read by the pipeline).

    Raises:
        DataError: A row or file the pipeline would refuse.
        ConfigError: baselines.few_shot_k above the train rows.
    """
    rows = check_rows(config.data)
    few_shot = config.baselines.few_shot_k
    if rows is not None and few_shot > rows["train"]:
        raise ConfigError(
            f"baselines.few_shot_k: {few_shot} examples asked for, but the train split has {rows['train']} rows;"
            " lower it (0 turns the few-shot baseline off)"
        )
    if rows is not None and config.baselines.recorded:  # every test row needs its recorded answer
        from llm_lora.data_preparation import split_examples
        from llm_lora.recorded import check_recorded

        test = split_examples(config.data).splits["test"][: config.data.max_test_rows]
        check_recorded(config.baselines.recorded, config.data, test)
    return rows


def check_export(config: RunConfig) -> None:
    """GGUF export possible here: llama-cpp-python built, and its converter knows the model's architecture.

    Raises:
        ConfigError: One line naming export.formats and the fix (a toolchain to install, or merged only).
    """
    if not config.export.gguf:
        return
    from llm_lora.gguf_export import ExportError, converter_dir, supported_architectures, toolchain_problem

    problem = toolchain_problem()
    if problem:
        raise ConfigError(problem)
    # Local model folders say their architecture; GGUF and hub models are checked by the converter itself.
    architectures = check_model_files(config.model.name, trust_remote_code=config.model.trust_remote_code).get(
        "architectures", [])
    if not architectures:
        return
    try:
        known = supported_architectures(converter_dir())
    except ExportError as error:
        raise ConfigError(str(error)) from None
    unknown = [name for name in architectures if name not in known]
    if unknown:
        raise ConfigError(
            f"export.formats: gguf: llama.cpp's converter does not know {unknown[0]}, the architecture of "
            f"model.name; export merged only (export.formats: [merged]) and serve it with transformers or vLLM"
        )

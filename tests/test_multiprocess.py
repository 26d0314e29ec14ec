"""Training with two Accelerate processes on the CPU, through the real train_lora step.

A pipeline of the real prepare_data and train_lora steps runs with
`training.num_processes: 2` and `use_cpu: true`, launched the way run.py
launches it (`launch_with_accelerate`, then ZenML's `accelerate launch`).
Each launched process carries an audit hook (a sitecustomize loaded only in
this test's subprocess) that records, at exit, the world size it trained in
and every folder and file it created, so the test sees what each rank did
rather than what the main process reports.

Not the whole finetune pipeline through run.py: its machine check refuses
more processes than GPUs even with use_cpu, and its evaluation steps would
take minutes on the CPU without touching the multi-process code.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llm_lora.config import load_config
from llm_lora.training import build_lora_config
from tests.conftest import SITECUSTOMIZE_PREAMBLE, run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pipeline

STEPS = 4
BATCH = 4

# Loaded by every Python process of the run; records only in processes torchrun started (RANK set).
WRITES_HOOK = SITECUSTOMIZE_PREAMBLE + '''
import atexit, hashlib, json

_LOG_DIR = os.environ.get("LLM_LORA_TEST_WRITES_DIR")
if _LOG_DIR and os.environ.get("RANK") is not None:
    _created = []
    _WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _record(event, args):
        try:
            if event not in ("open", "os.mkdir") or not isinstance(args[0], (str, bytes, os.PathLike)):
                return
            path = os.path.abspath(os.fsdecode(args[0]))
            if event == "os.mkdir" or args[2] & _WRITING:
                _created.append(path)
        except Exception:
            pass  # an audit hook that raises would fail the operation it watches

    sys.addaudithook(_record)

    @atexit.register
    def _dump():
        state = getattr(sys.modules.get("accelerate.state"), "PartialState", None)
        seen = dict(state._shared_state) if state is not None else {}
        report = {
            "process_index": seen.get("process_index"),
            "num_processes": seen.get("num_processes"),
            "distributed_type": str(seen.get("distributed_type")),
            "accelerate_use_cpu": os.environ.get("ACCELERATE_USE_CPU"),
            "created": list(_created),
            # The saved weights, hashed while they exist (the step's scratch folder goes once ZenML has
            # stored the outputs); safetensors writes them from Rust, which the hook does not see.
            "weights_sha256": {
                os.path.dirname(path): hashlib.sha256(open(weights, "rb").read()).hexdigest()
                for path in _created if os.path.basename(path) == "adapter_config.json"
                for weights in [os.path.join(os.path.dirname(path), "adapter_model.safetensors")]
                if os.path.exists(weights)
            },
        }
        with open(os.path.join(_LOG_DIR, "rank" + os.environ["RANK"] + ".json"), "w") as handle:
            json.dump(report, handle)
'''

TRAIN_ONLY = """
import json, sys
from zenml import Model, pipeline
from zenml.client import Client
from llm_lora.config import load_config
from steps.prepare_data import prepare_data
from steps.train_lora import launch_with_accelerate, train_lora

@pipeline(enable_cache=False)
def train_only(data_settings: str, training_settings: str) -> None:
    prepared_data, _, training_rows = prepare_data(settings=data_settings)
    train_lora(prepared_data=prepared_data, training_rows=training_rows, settings=training_settings)

config = load_config(sys.argv[1])
launch_with_accelerate(config.training)  # as run.py does
train_only.with_options(model=Model(name=config.registry.model_name))(
    data_settings=config.part(model=True, data=True),
    training_settings=config.part(model=True, lora=True, training=True, data=True, registry=("model_name",)))
outputs = Client().get_pipeline("train_only").last_run.steps["train_lora"].outputs
adapter = outputs["lora_adapter"][0]
print(json.dumps({
    "metrics": outputs["training_metrics"][0].load(),
    "loss_history": outputs["loss_history"][0].load(),
    "adapter_uri": adapter.uri,
    "adapter_metadata": {key: value for key, value in adapter.run_metadata.items()},
}, default=str))
"""


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_model_dir, zenml_env):
    root = tmp_path_factory.mktemp("two-processes").resolve()  # compared with paths the processes saw
    config_path = write_config(
        root / "run.yaml", tiny_model_dir, REPO / "data" / "support_emails",
        data={"max_train_rows": 32, "max_validation_rows": 8, "max_test_rows": 8},
        # Evaluations at steps 2 and 4, each saving a checkpoint, and keep_best loading the best one at the end.
        training={"num_processes": 2, "use_cpu": True, "max_steps": STEPS, "batch_size": BATCH,
                  "learning_rate": 5e-3, "precision": "fp32", "logging_steps": 1, "eval_steps": 2},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        registry={"model_name": "multiprocess-test"},
    )
    for name in ("hook", "scratch", "writes", "cwd"):
        (root / name).mkdir()
    (root / "hook" / "sitecustomize.py").write_text(WRITES_HOOK)
    (root / "train_only.py").write_text(TRAIN_ONLY)
    env = dict(
        zenml_env,
        # The steps' scratch folders land here, where the test can list them.
        TMPDIR=str(root / "scratch"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(root / "hook"), str(REPO), zenml_env.get("PYTHONPATH")])),
        LLM_LORA_TEST_WRITES_DIR=str(root / "writes"),
    )
    # Run outside the checkout: ZenML writes its launch script into the working directory.
    result = run_tree([sys.executable, str(root / "train_only.py"), str(config_path)],
                      cwd=root / "cwd", env=env, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    ranks = {int(path.stem.removeprefix("rank")): json.loads(path.read_text())
             for path in (root / "writes").glob("rank*.json")}
    return {
        "config": load_config(config_path),
        "step": json.loads(result.stdout.strip().splitlines()[-1]),
        "ranks": ranks,
        "left_in_scratch": sorted(path.name for path in (root / "scratch").iterdir()),
        "launch_dir": root / "cwd",
    }


def test_both_processes_train_in_one_group_of_two(two_processes):
    ranks = two_processes["ranks"]
    assert sorted(ranks) == [0, 1]
    for rank, seen in ranks.items():
        assert seen["num_processes"] == 2 and seen["process_index"] == rank
        assert seen["distributed_type"] == "DistributedType.MULTI_CPU"
        # Set before ZenML's launch script builds its Accelerator: where a GPU is present, that one
        # would otherwise open an NCCL process group that CPU training cannot use.
        assert seen["accelerate_use_cpu"] == "true"
    metrics = two_processes["step"]["metrics"]
    assert metrics["num_processes"] == 2 and metrics["device"].startswith("cpu")
    assert metrics["optimizer_steps"] == STEPS
    # Each optimizer step consumed a batch on each process.
    assert metrics["examples_seen"] == STEPS * BATCH * 2
    training_losses = [record for record in two_processes["step"]["loss_history"] if "loss" in record]
    assert [record["step"] for record in training_losses] == list(range(1, STEPS + 1))


def test_only_rank_zero_writes_the_adapter_and_the_step_outputs(two_processes):
    ranks = two_processes["ranks"]

    # Wherever the adapter goes (a folder per process or a shared one), rank 1 creates none of it.
    assert [path for path in ranks[1]["created"] if "adapter" in Path(path).parts] == []
    written = [Path(path) for path in ranks[0]["created"] if Path(path).parent.name == "adapter"]
    assert len({path.parent for path in written}) == 1
    # Once each (the weights and tokenizer.json are written by Rust code the hook does not see).
    for name in ("adapter_config.json", "tokenizer_config.json", "training_metrics.json", "adapter_facts.json"):
        assert [path.name for path in written].count(name) == 1, (name, written)
    # One scratch folder, made before the launch and shared by both ranks.
    scratch = written[0].parent.parent
    assert scratch.name.startswith("lora-training-") and scratch.parent.name == "scratch"
    assert [path for path in ranks[1]["created"] if Path(path).name.startswith("lora-training-")] == []
    # The step's return value, which ZenML turns into artifacts, is pickled by rank 0 alone.
    launch_dir = two_processes["launch_dir"]
    assert [Path(path).suffix for path in ranks[0]["created"] if Path(path).parent == launch_dir] == [".out"]
    assert [path for path in ranks[1]["created"] if Path(path).parent == launch_dir] == []


def test_the_artifact_is_rank_zeros_trained_adapter(two_processes, tiny_model_dir):
    step = two_processes["step"]
    artifact = Path(step["adapter_uri"])
    (saved,) = [folder for folder in two_processes["ranks"][0]["weights_sha256"] if Path(folder).name == "adapter"]
    stored = hashlib.sha256((artifact / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert stored == two_processes["ranks"][0]["weights_sha256"][saved]
    assert json.loads((artifact / "training_metrics.json").read_text())["num_processes"] == 2
    assert step["adapter_metadata"]["trainable_parameters"] == step["metrics"]["trainable_parameters"]

    # A fresh LoRA adapter starts with B = 0 (the base model unchanged); the trained one has moved.
    lora = build_lora_config(two_processes["config"].lora)
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    fresh_b = {name: value for name, value in fresh.state_dict().items() if "lora_B" in name}
    assert fresh_b and all(not value.any() for value in fresh_b.values())
    trained = load_file(artifact / "adapter_model.safetensors")
    trained_b = [value for name, value in trained.items() if "lora_B" in name]
    assert len(trained_b) == len(fresh_b) and all(value.abs().max() > 0 for value in trained_b)

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(artifact)).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        assert not torch.allclose(tuned(ids).logits, base_logits)


def test_both_ranks_checkpoint_into_the_shared_folder(two_processes):
    # Each evaluation saves a checkpoint: rank 0 the adapter, every rank its own state (rng_state_<rank>).
    # Rank 1 writes into the folder rank 0 checkpointed in, so keep_best and resuming find the same
    # checkpoint on every rank (in a folder of its own, rank 1 would keep its last weights).
    (adapter,) = {Path(path).parent for path in two_processes["ranks"][0]["created"]
                  if Path(path).parent.name == "adapter"}
    checkpoints = {adapter.parent / "trainer" / f"checkpoint-{step}" for step in (2, 4)}
    for rank, seen in two_processes["ranks"].items():
        assert checkpoints <= {Path(path) for path in seen["created"]}, rank
    assert two_processes["step"]["metrics"]["best_step"] in (2, 4)


def test_no_scratch_folder_outlives_the_run(two_processes):
    # prepare_data's rows and train_lora's adapter and checkpoints went to the temp directory;
    # ZenML copied what it keeps into the artifact store, and the folders went with the steps.
    # (torchrun leaves a torchelastic_* log folder of its own there, which is not the project's to remove.)
    assert [name for name in two_processes["left_in_scratch"] if not name.startswith("torchelastic_")] == []

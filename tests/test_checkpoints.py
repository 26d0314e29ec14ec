"""Resumable training: checkpoints are published whole or not at all, and a killed run continues."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_lora.checkpoints import MARKER, CheckpointStore
from tests.conftest import write_config

REPO = Path(__file__).resolve().parent.parent

TRAIN = """
import json, sys
from pathlib import Path
from llm_lora.checkpoints import CheckpointStore
from llm_lora.config import load_config
from llm_lora.data_preparation import prepare_splits
from llm_lora.model_loading import load_tokenizer
from llm_lora.training import train_lora

config = load_config(sys.argv[1])
tokenizer = load_tokenizer(config.model)
prepared = prepare_splits(config.data, tokenizer)
store = CheckpointStore(sys.argv[2])
if len(sys.argv) > 5:  # the run to be killed: hold still once this step is published, so the kill never misses
    import time
    hold_at, publish = int(sys.argv[5]), store.publish

    def publish_then_hold(*args, **kwargs):
        publish(*args, **kwargs)
        while store.latest() >= hold_at:
            time.sleep(1)

    store.publish = publish_then_hold
result = train_lora(config, prepared.splits["train"], prepared.splits["validation"], Path(sys.argv[3]), tokenizer,
                    checkpoints=store)
Path(sys.argv[4]).write_text(json.dumps({"metrics": result.metrics, "history": result.loss_history}))
"""


def _fake_checkpoint(folder: Path, step: int) -> Path:
    path = folder / f"checkpoint-{step}"
    (path / "sub").mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(os.urandom(64))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "best_model_checkpoint": None}))
    (path / "sub" / "nested.txt").write_text(str(step))
    return path


def test_store_publishes_with_marker_last_prunes_and_fetches(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    assert store.latest() is None
    for step in (5, 10, 15):
        store.publish(_fake_checkpoint(tmp_path / "local", step), keep={5})
    # Newest two plus the protected best; each complete.
    assert store.steps() == [5, 10, 15]
    store.publish(_fake_checkpoint(tmp_path / "local", 20))
    assert store.steps() == [15, 20]
    fetched = store.fetch(20, tmp_path / "again")
    assert (fetched / "sub" / "nested.txt").read_text() == "20" and not (fetched / MARKER).exists()
    assert (fetched / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "local" / "checkpoint-20" / "adapter_model.safetensors").read_bytes()


def test_half_written_checkpoint_is_never_used(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    store.publish(_fake_checkpoint(tmp_path / "local", 4))
    # A crash while copying step 8: files there, marker missing.
    half = _fake_checkpoint(tmp_path / "store", 8)
    assert half.exists() and store.latest() == 4
    store.publish(_fake_checkpoint(tmp_path / "local", 12))
    assert store.steps() == [4, 12] and not half.exists()  # pruned with the next publish


def _config(tmp_path, tiny_model_dir, support_rows):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, count in (("train", 48), ("validation", 4), ("test", 2)):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in support_rows[split][:count]))
    return write_config(
        tmp_path / "run.yaml", tiny_model_dir, data_dir,
        training={"max_steps": 36, "batch_size": 4, "learning_rate": 5e-3, "precision": "fp32", "logging_steps": 1,
                  "checkpoint_steps": 6, "warmup_ratio": 0.1, "lr_scheduler": "cosine"},
        lora={"rank": 4, "alpha": 8, "dropout": 0.1},
    )


def _train(script, config, store, out, result, env, hold_at=None):
    """Start a training process; its stderr goes to <result>.err (a pipe nobody reads could fill and stall it)."""
    hold = [] if hold_at is None else [str(hold_at)]
    with open(_stderr_file(result), "w") as stderr:
        return subprocess.Popen([sys.executable, str(script), str(config), str(store), str(out), str(result), *hold],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _stderr_file(result: Path) -> Path:
    return result.with_suffix(".err")


def _stderr_tail(result: Path) -> str:
    return _stderr_file(result).read_text()[-3000:]


@pytest.mark.cli
def test_killed_training_resumes_from_the_last_checkpoint(tmp_path, tiny_model_dir, support_rows):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    config = _config(tmp_path, tiny_model_dir, support_rows)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

    whole = _train(script, config, tmp_path / "store-whole", tmp_path / "out-whole", tmp_path / "whole.json", env)
    assert whole.wait(timeout=600) == 0, _stderr_tail(tmp_path / "whole.json")
    uninterrupted = json.loads((tmp_path / "whole.json").read_text())
    assert not (tmp_path / "store-whole").exists()  # a finished run leaves nothing to resume

    store = CheckpointStore(str(tmp_path / "store"))
    victim = _train(script, config, store.root, tmp_path / "out-1", tmp_path / "first.json", env, hold_at=12)
    deadline = time.time() + 600
    while (store.latest() or 0) < 12 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, _stderr_tail(tmp_path / "first.json")  # not ended on its own
    last_complete = store.latest()
    assert last_complete == 12 and not (tmp_path / "first.json").exists()

    again = _train(script, config, store.root, tmp_path / "out-2", tmp_path / "resumed.json", env)
    assert again.wait(timeout=600) == 0, _stderr_tail(tmp_path / "resumed.json")
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    # Resumed from the newest complete checkpoint: at most one interval of work lost.
    assert resumed["metrics"]["resumed_from_step"] == last_complete
    assert resumed["metrics"]["optimizer_steps"] == uninterrupted["metrics"]["optimizer_steps"] == 36
    # Tokens/s counts only the batches trained since resuming, as the runtime only times those.
    assert 0 < resumed["metrics"]["train_tokens"] < uninterrupted["metrics"]["train_tokens"]
    # Optimizer, scheduler, RNG and data position restored: the loss curve continues the uninterrupted one.
    whole_losses = {r["step"]: r["loss"] for r in uninterrupted["history"] if "loss" in r}
    resumed_losses = {r["step"]: r["loss"] for r in resumed["history"] if "loss" in r}
    assert min(resumed_losses) == last_complete + 1 and max(resumed_losses) == 36
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(whole_losses[step], rel=1e-4, abs=1e-4), step
    assert not Path(store.root).exists()

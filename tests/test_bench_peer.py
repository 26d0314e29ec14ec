"""bench/gpu_vs_unsloth.py on a CPU: the harness trains the same rows with every lever, records what it
measured, and a tool that cannot run (unsloth needs CUDA and its own packages) is recorded, not fatal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.cli
def test_peer_harness_trains_the_same_rows_for_every_variant(tmp_path):
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_vs_unsloth.py"), "--tiny", "--device", "cpu",
         "--tools", "project", "unsloth", "--methods", "qlora", "--levers", "as shipped", "all three",
         "--rows-per-step", "2", "--row-length", "96", "--steps", "1", "--warmup", "1", "--lengths", "128", "256",
         "--unsloth-path", str(tmp_path / "nothing-here"), "--workdir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads(out.read_text())
    project = [run for run in record["runs"] if run["tool"] == "project" and "variant" in run and "longest" not in run]
    assert [run["variant"] for run in project] == ["as shipped", "all three"]
    for run in project:
        # 2 rows of 96 tokens a step; loss on each row's last 30% (28 tokens, the first of them predicted
        # from the prompt's last token): the same for every variant and for the peer
        assert run["real_tokens_per_step"] == 192 and run["labelled_per_step"] == 56, run
        assert run["real_tokens_per_s"] > 0 and run["train_loss"] > 0
    assert project[1]["settings"] | {"method": None} == {
        "method": None, "gradient_checkpointing": True, "chunked_loss": True, "offload_activations": True,
        "optimizer": "adamw_8bit"}
    longest = next(run for run in record["runs"] if "longest" in run)
    assert [entry["length"] for entry in longest["longest"] if entry["trained"]] == [128, 256]
    failed = [run for run in record["runs"] if run["tool"] == "unsloth"]
    assert failed and failed[-1]["error"].startswith("exit status")
    assert "unsloth" in completed.stdout + completed.stderr
    assert not list(tmp_path.glob("tmp*"))  # the model folder and rows are removed at the end

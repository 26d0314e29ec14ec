"""Each step is given only the parts of the config it reads: changing a price and a promotion threshold
re-runs the steps that read them, and data preparation, evaluation and training come from ZenML's cache.
Promotion is never cached: an unchanged re-run decides for its own new version."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_tree, step_statuses, write_config

REPO = Path(__file__).resolve().parent.parent

@pytest.mark.pipeline
def test_a_price_and_a_threshold_change_rerun_only_their_steps(tmp_path, tiny_model_dir, support_rows, zenml_env):
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in support_rows.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:12]))
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, training={"max_steps": 2, "batch_size": 4},
                          cost={"price_per_million_prompt_tokens": 0.5})
    first = run_tree([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=zenml_env, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    assert set(step_statuses(zenml_env).values()) == {"completed"}

    changed = yaml.safe_load(config.read_text())
    changed["cost"]["price_per_million_prompt_tokens"] = 2.0
    changed.setdefault("promotion", {})["min_gain_over_base"] = 0.2
    config.write_text(yaml.safe_dump(changed))
    second = run_tree([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=zenml_env, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    statuses = step_statuses(zenml_env)
    for step in ("prepare_data", "preflight_report", "evaluate_base", "train_lora", "evaluate_finetuned",
                 "compare_models"):
        assert statuses[step] == "cached", statuses
    for step in ("worth_it_report", "promote_model"):
        assert statuses[step] == "completed", statuses
    assert "train_lora has started" not in second.stdout + second.stderr
    # The reports read the new settings.
    assert "+0.2000" in second.stdout

    # The same config again: everything else is cached, promotion decides for version 3 itself, and the
    # printed stage is the one the registry holds (a cached decision would name an earlier version's).
    third = run_tree([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=zenml_env, timeout=1200)
    assert third.returncode == 0, third.stderr[-3000:]
    statuses = step_statuses(zenml_env)
    assert statuses["promote_model"] == "completed" and statuses["train_lora"] == "cached", statuses
    line = re.search(r"model: +\S+ version (\d+), stage (\w+) \((promoted|not promoted to production)\)",
                     third.stdout)
    assert line, third.stdout[-2000:]
    assert line.group(1) == "3" and (line.group(2) == "production") == (line.group(3) == "promoted"), line.group(0)

"""run.py's `main(config, options)`, called in-process as a library would, and the configs' `kind:`."""

import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import run  # noqa: E402
from pipelines.commands import CommandError, Options  # noqa: E402


def test_main_checks_a_finetune_config_without_running_it(tmp_path, tiny_model_dir, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, REPO / "data" / "support_emails")
    run.main(config, Options(dry_run=True))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"model     {tiny_model_dir}")
    assert out[-1] == f"{config}: valid (dry run: config, model files, data rows checked, no model loaded)"


def test_main_raises_one_line_naming_the_key(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, REPO / "data" / "support_emails",
                          lora={"rank": 64})
    with pytest.raises(CommandError, match=rf"^{tmp_path}/run.yaml: lora.rank: 64 is above the model's hidden size"):
        run.main(config, Options(dry_run=True))
    with pytest.raises(CommandError, match="^--stack: empty value"):
        run.main(config, Options(dry_run=True, stack_name=" "))


def test_kind_picks_the_schema(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, REPO / "data" / "support_emails")
    loaded = yaml.safe_load(config.read_text())
    # A finetune config named as a prediction is read with the prediction schema, which it does not fit.
    config.write_text(yaml.safe_dump({"kind": "predict", **loaded}))
    with pytest.raises(CommandError, match=r"run.yaml: inference: required key is missing \(and \d+ more problems\)"):
        run.main(config, Options(dry_run=True))
    config.write_text(yaml.safe_dump({"kind": "train", **loaded}))
    with pytest.raises(CommandError, match=r"run.yaml: kind: 'train' is not one of finetune, predict, deploy, monitor$"):
        run.main(config, Options(dry_run=True))
    config.write_text(yaml.safe_dump({"kind": "finetune", **loaded}))
    run.main(config, Options(dry_run=True))


def test_every_shipped_config_names_its_kind():
    from llm_lora.config import CONFIG_KINDS

    for path in sorted((REPO / "configs").rglob("*.yaml")):
        kind = yaml.safe_load(path.read_text()).get("kind")
        assert kind in CONFIG_KINDS, f"{path.relative_to(REPO)}: kind {kind!r}"

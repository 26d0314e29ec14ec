"""Two runs promoting at the same moment leave one production version, the better one."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pipeline

SETUP = """
from zenml import log_metadata
from zenml.client import Client

client = Client()
client.create_model(name="race")
for name, score, fingerprint in (("old", 0.5, "older-test-rows"), ("a", 0.8, "rows"), ("b", 0.9, "rows")):
    client.create_model_version(model_name_or_id="race", name=name)
    log_metadata(metadata={"finetuned": {"mean_field_accuracy": score, "evaluation_fingerprint": fingerprint}},
                 model_name="race", model_version=name)
client.get_model_version("race", "old").set_stage("production")
"""

RACER = """
import sys, time
from llm_lora.config import PromotionConfig
from llm_lora.promotion import run_gate
from steps.support.registry import ZenMLRegistry

name, score, start_at = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
registry = ZenMLRegistry("race")
version = registry.version(name)

def reevaluate(production):
    # Production was scored on other rows: re-scoring it takes a while (here: 2 s).
    time.sleep(2)
    return production.metrics

time.sleep(max(0.0, start_at - time.time()))
record = run_gate(registry, version, "mean_field_accuracy", score, base=0.0, fingerprint="rows",
                  reevaluate=reevaluate, promotion=PromotionConfig(min_gain_over_base=0.05))
print(record.model_dump_json())
"""

STAGES = """
from zenml.client import Client
versions = Client().list_model_versions(model_name_or_id="race", size=50).items
print(" ".join(f"{v.name}={v.stage}" for v in sorted(versions, key=lambda v: v.name)))
print(len(Client().list_models(name="race--promotion-lock").items))
"""


def test_simultaneous_promotions_keep_the_better_version(tmp_path):
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               PYTHONPATH=str(REPO))

    def script(name, text):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    setup = subprocess.run([sys.executable, script("setup.py", SETUP)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert setup.returncode == 0, setup.stderr[-3000:]
    racer = script("racer.py", RACER)
    start_at = time.time() + 20  # both import ZenML first, then start together
    racers = [subprocess.Popen([sys.executable, racer, name, score, str(start_at)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for name, score in (("a", "0.8"), ("b", "0.9"))]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    for racer, (out, err) in zip(racers, outputs):
        assert racer.returncode == 0, err[-3000:]
    assert time.time() > start_at
    stages = subprocess.run([sys.executable, script("stages.py", STAGES)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert stages.returncode == 0, stages.stderr[-3000:]
    listing, locks = stages.stdout.strip().splitlines()[-2:]
    found = dict(item.split("=") for item in listing.split())
    assert [name for name, stage in found.items() if stage == "production"] == ["b"], listing
    assert found["a"] in ("staging", "archived"), listing  # beat the base model, not the better version
    assert locks == "0"  # the lock is released

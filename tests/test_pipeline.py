"""The real finetune pipeline, end to end, on the real SmolLM2 model and a small slice.

Runs `run.py` the way users do, against a throw-away ZenML store (its own
ZENML_CONFIG_PATH), twice: the first run is promoted, the second (same data,
same seed, --no-cache) ties and stays out of production, saying why.
"""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUICKSTART_MODEL, run_tree, step_statuses, write_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def config_path(tmp_path_factory, tiny_model_dir):
    path = tmp_path_factory.mktemp("run") / "run.yaml"
    return write_config(
        path, QUICKSTART_MODEL, REPO / "data" / "support_emails",
        data={"max_train_rows": 64, "max_validation_rows": 8, "max_test_rows": 12},
        # fp32: bf16 autocast is emulated, and some 50x slower, on CPUs without AVX512-BF16.
        # Four steps at the quickstart's learning rate: valid JSON and most fields beat the base model's none.
        training={"max_steps": 4, "batch_size": 8, "learning_rate": 2e-3, "logging_steps": 2, "precision": "fp32"},
        evaluation={"batch_size": 12, "max_new_tokens": "auto"},
        # The tiny random model stands in for a larger reference model: any loadable model works.
        baselines={"few_shot_k": 2, "reference_model": {"name": str(tiny_model_dir)}},
        preflight={"price_per_gpu_hour": 0.10},
        cost={"price_per_million_prompt_tokens": 0.10},
        registry={"model_name": "pipeline-test"},
    )


ZENML_CLI = str(Path(sys.executable).parent / "zenml")


def _run(args, env):
    command = args if args[0] == ZENML_CLI else [sys.executable, *args]
    return run_tree(command, cwd=REPO, env=env, timeout=1200)


@pytest.fixture(scope="module")
def first_run(config_path, zenml_env):
    return _run(["run.py", "--config", str(config_path)], zenml_env)


READ_WORTH_IT = """
import json
from zenml.client import Client
# The run that made version 1 (other tests' runs may have come after it).
(run,) = Client().get_model_version("pipeline-test", 1).pipeline_runs.values()
artifact = run.steps["worth_it_report"].outputs["worth_it_report"][0]
print(json.dumps({
    "steps": sorted(run.steps),
    "report": run.steps["worth_it_report"].outputs["worth_it"][0].load().model_dump(mode="json"),
    "page": str(artifact.load()),
    "visualizations": [str(v.type) for v in artifact.visualizations or []],
    "metadata": Client().get_model_version("pipeline-test", 1).run_metadata["worth_it"],
}))
"""


def test_first_run_trains_evaluates_and_promotes(first_run, zenml_env, tmp_path):
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    out = first_run.stdout
    assert "mean_field_accuracy" in out and "field_accuracy/order_id" in out
    assert "pipeline-test version 1, stage production (promoted)" in out
    assert "no production version yet" in out
    better, worse, same = (int(n) for n in re.search(r"examples: (\d+) better, (\d+) worse, (\d+) unchanged", out).groups())
    assert better + worse + same == 12 and better > worse
    # Zero-shot, few-shot, reference and finetuned numbers side by side, then the verdict.
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "zero-shot", "2-shot", "reference", "finetuned"]
    base_line = next(line for line in out.splitlines() if line.startswith("mean_field_accuracy"))
    base, few_shot, reference, tuned = map(float, base_line.split()[1:])
    assert tuned >= base + 0.05
    prompt_tokens = next(line for line in out.splitlines() if line.startswith("mean_prompt_tokens"))
    assert float(prompt_tokens.split()[2]) > float(prompt_tokens.split()[1]) + 100  # two examples in every prompt
    verdict = re.search(r"^verdict:  (worth it|not worth it|inconclusive): (.+)$", out, re.MULTILINE)
    assert verdict, out[-3000:]
    assert re.search(r"^savings:  vs .+ per request; training \d+ s, cost [\d.e-]+; payback ", out, re.MULTILINE)
    # The preflight's time (from the quickstart's results file) beside the time this machine took.
    assert re.search(r"^estimate: estimated \d+ s at \d+ tokens/s \(from quickstart-cpu\.json\); took \d+ s "
                     r"\(\d+\.\d\dx the estimate\)$", out, re.MULTILINE), out[-3000:]

    script = tmp_path / "read_worth_it.py"
    script.write_text(READ_WORTH_IT)
    # The report's class lives in llm_lora/: ZenML imports it to load the artifact.
    read = _run([str(script)], dict(zenml_env, PYTHONPATH=str(REPO)))
    assert read.returncode == 0, read.stderr[-3000:]
    facts = json.loads(read.stdout.strip().splitlines()[-1])
    assert {"evaluate_few_shot", "evaluate_reference", "worth_it_report"} <= set(facts["steps"])
    report = facts["report"]
    assert [m["name"] for m in report["models"]] == ["base", "few_shot", "reference", "finetuned"]
    assert [m["primary_metric"] for m in report["models"]] == pytest.approx([base, few_shot, reference, tuned], abs=5e-4)
    assert report["verdict"] == verdict.group(1) and report["reason"] == verdict.group(2)
    assert report["test_rows"] == 12 and report["gain_low"] <= report["gain"] <= report["gain_high"]
    assert report["training_cost"] > 0 and "paired bootstrap" in report["interval_method"]
    assert "Was finetuning worth it?" in facts["page"] and "base model, 2-shot" in facts["page"]
    assert any("html" in kind.lower() for kind in facts["visualizations"])
    assert facts["metadata"]["verdict"] == report["verdict"]


def test_second_run_without_cache_is_not_promoted_on_a_tie(first_run, config_path, zenml_env):
    assert first_run.returncode == 0
    second = _run(["run.py", "--config", str(config_path), "--no-cache"], zenml_env)
    assert second.returncode == 0, second.stderr[-3000:]
    # It beats the base model but only ties production: staging, production untouched.
    # Its number depends on how many runs other tests made before it.
    assert re.search(r"pipeline-test version \d+, stage staging \(not promoted to production\)", second.stdout)
    assert "against production" in second.stdout
    # The production score came from version 1's evaluation on the identical rows.
    assert "compared: production version 1, stored score on identical test rows" in second.stdout
    listing = _run([ZENML_CLI, "model", "version", "list", "--model", "pipeline-test"], zenml_env)
    assert listing.returncode == 0, listing.stderr
    assert "production" in listing.stdout
    runs = _run([ZENML_CLI, "pipeline", "runs", "list"], zenml_env)
    assert runs.returncode == 0 and runs.stdout.count("finetune") >= 2


@pytest.fixture(scope="module")
def ten_test_rows_run(first_run, config_path, zenml_env, tmp_path_factory):
    """The first run's config with 10 test rows instead of 12 (a module fixture: two tests read it), and
    its steps' statuses, read before any other run."""
    assert first_run.returncode == 0
    config = yaml.safe_load(config_path.read_text())
    config["data"]["max_test_rows"] = 10
    changed = tmp_path_factory.mktemp("changed") / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = _run(["run.py", "--config", str(changed)], zenml_env)
    result.statuses = step_statuses(zenml_env)
    return result


def test_changed_test_rows_re_evaluate_production(ten_test_rows_run):
    """With other test rows, production's stored score is not comparable: its adapter is loaded and re-scored.
    The adapter of this run is the first run's, from the cache: the train and validation rows are the same."""
    assert ten_test_rows_run.returncode == 0, ten_test_rows_run.stderr[-3000:]
    assert "compared: production version 1, re-evaluated on this run's test rows" in ten_test_rows_run.stdout
    statuses = ten_test_rows_run.statuses
    assert statuses["prepare_data"] == "completed" and statuses["train_lora"] == "cached", statuses
    for step in ("evaluate_base", "evaluate_finetuned", "promote_model"):
        assert statuses[step] == "completed", statuses


PLAIN_PEFT = """
import json, sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from zenml.client import Client

version = Client().get_model_version("pipeline-test", "production")
adapter_uri = version.get_artifact("lora_adapter").uri
config = json.loads(version.run_metadata["run_config_json"])
base_dir, row = sys.argv[1], json.loads(sys.argv[2])
# Outside the project: plain transformers + PEFT on the artifact's folder.
tokenizer = AutoTokenizer.from_pretrained(adapter_uri)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_uri).eval()
messages = [{"role": "system", "content": config["data"]["system_prompt"]}, {"role": "user", "content": row["prompt"]}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=64, do_sample=False, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
print(json.dumps({"output": tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()}))
"""


def test_batch_inference_with_production_and_plain_peft_agree(first_run, zenml_env, tmp_path):
    assert first_run.returncode == 0
    rows = [json.loads(line) for line in (REPO / "data" / "support_emails" / "new_emails.jsonl").read_text().splitlines()]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:4]))
    config = tmp_path / "inference.yaml"
    config.write_text(yaml.safe_dump({"inference": {
        "model_name": "pipeline-test", "version": "production", "input_file": str(tmp_path / "new.jsonl"),
        "output_file": str(tmp_path / "out" / "predictions.jsonl"), "batch_size": 4,
    }}))
    result = _run(["run.py", "--config", str(config)], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 rows answered" in result.stdout
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in predictions] == [row["prompt"] for row in rows[:4]]
    assert all(p["output"] for p in predictions)

    from llm_lora.config import ModelConfig
    from llm_lora.model_loading import model_files

    script = tmp_path / "plain_peft.py"
    script.write_text(PLAIN_PEFT)
    base_dir = model_files(ModelConfig(name=QUICKSTART_MODEL))
    plain = _run([str(script), base_dir, json.dumps(rows[0])], zenml_env)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert json.loads(plain.stdout.strip().splitlines()[-1])["output"] == predictions[0]["output"]


def test_inference_rows_the_version_cannot_answer_are_refused_before_the_pipeline(first_run, zenml_env, tmp_path):
    """Rows are read with the formatting settings of the run that trained the version, by --dry-run too."""
    assert first_run.returncode == 0
    rows = [{"prompt": "Order ORD-7 arrived broken."},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "already answered"}]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "inference.yaml"
    config.write_text(yaml.safe_dump({"inference": {
        "model_name": "pipeline-test", "input_file": str(tmp_path / "in.jsonl"), "output_file": str(tmp_path / "o.jsonl"),
    }}))
    count_runs = ["-c", "from zenml.client import Client; print(Client().list_pipeline_runs(size=1).total)"]
    before = int(_run(count_runs, zenml_env).stdout.strip().splitlines()[-1])
    for args in (["--dry-run"], []):
        result = _run(["run.py", "--config", str(config), *args], zenml_env)
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: {tmp_path / 'in.jsonl'}:2: messages end with an assistant turn"), last
    assert int(_run(count_runs, zenml_env).stdout.strip().splitlines()[-1]) == before


def test_missing_version_is_a_one_line_error(zenml_env, tmp_path):
    config = tmp_path / "inference.yaml"
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    config.write_text(yaml.safe_dump({"inference": {
        "model_name": "no-such-model", "input_file": str(tmp_path / "in.jsonl"), "output_file": str(tmp_path / "o.jsonl"),
    }}))
    result = _run(["run.py", "--config", str(config)], zenml_env)
    assert result.returncode != 0
    assert "inference.version: model 'no-such-model' has no version 'production'" in result.stderr.splitlines()[-1]


READ_PROMOTIONS = """
import json
from zenml.client import Client
records = []
for version in Client().list_model_versions(model_name_or_id="pipeline-test", size=100):
    meta = version.run_metadata
    if "promotion" in meta and "run_config_json" in meta:
        data = json.loads(meta["run_config_json"])["data"]
        records.append({"number": version.number, "prompt": data["system_prompt"], "test_rows": data["max_test_rows"],
                        "promotion": meta["promotion"]})
print(json.dumps(records, default=str))
"""


def test_production_is_re_evaluated_with_its_own_prompt(ten_test_rows_run, config_path, zenml_env, tmp_path):
    """A run with another system prompt scores production the way production serves: with the prompt it was
    trained with. On the same 10 test rows, production's score is then the one the run with the original
    prompt measured (`ten_test_rows_run`), not a score under the new prompt."""
    assert ten_test_rows_run.returncode == 0, ten_test_rows_run.stderr[-3000:]
    config = yaml.safe_load(config_path.read_text())
    config["data"]["max_test_rows"] = 10
    original = config["data"]["system_prompt"]
    config["data"]["system_prompt"] = "Reply with the order's fields as a JSON object."
    # What is checked is how production is scored; this run's own adapter needs no more than a step or two.
    config["training"]["max_steps"] = 2
    changed = tmp_path / "prompt.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = _run(["run.py", "--config", str(changed)], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-evaluated on this run's test rows" in result.stdout

    script = tmp_path / "promotions.py"
    script.write_text(READ_PROMOTIONS)
    read = _run([str(script)], zenml_env)
    assert read.returncode == 0, read.stderr[-3000:]
    records = json.loads(read.stdout.strip().splitlines()[-1])
    with_original = [r for r in records if r["prompt"] == original and r["test_rows"] == 10]
    (with_new,) = [r for r in records if r["prompt"] != original]
    assert with_original, records
    earlier = with_original[-1]["promotion"]
    assert with_new["promotion"]["production_source"] == earlier["production_source"]  # the same version
    assert with_new["promotion"]["production"] == earlier["production"]

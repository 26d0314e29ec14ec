"""Every data source and format runs through the real pipeline (tiny model, small data)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import SITECUSTOMIZE_PREAMBLE, run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def zenml_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("zenml-sources")
    return dict(os.environ, ZENML_CONFIG_PATH=str(home / "config"), ZENML_ANALYTICS_OPT_IN="false", COLUMNS="200")


def _jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def _emails(support_rows):
    return support_rows["train"][:24]


def _source(kind, root, support_rows):
    """Write the same rows in one source shape; return the YAML `data` keys for it."""
    rows = _emails(support_rows)
    if kind == "jsonl-prompt-completion-single-file-packed":
        return {"path": str(_jsonl(root / "all.jsonl", rows)), "packing": True}
    if kind == "instruction-folder":
        folder = root / "instr"
        folder.mkdir()
        items = [{"instruction": "Extract the fields as JSON.", "input": r["prompt"], "output": r["completion"]}
                 for r in rows]
        _jsonl(folder / "train.jsonl", items[:16])
        _jsonl(folder / "validation.jsonl", items[16:20])
        _jsonl(folder / "test.jsonl", items[20:])
        return {"path": str(folder), "format": "instruction"}
    if kind == "messages-json":
        items = [{"messages": [{"role": "system", "content": "Extract JSON."}, {"role": "user", "content": r["prompt"]},
                               {"role": "assistant", "content": r["completion"]}]} for r in rows]
        (root / "chats.json").write_text(json.dumps(items))
        return {"path": str(root / "chats.json"), "format": "messages"}
    if kind == "csv-with-column-mapping":
        pd.DataFrame([{"email": r["prompt"], "label": r["completion"]} for r in rows]).to_csv(
            root / "emails.csv", index=False
        )
        return {"path": str(root / "emails.csv"), "columns": {"prompt": "email", "completion": "label"}}
    if kind == "parquet-plain-text-answers":
        items = [{"prompt": r["prompt"], "completion": json.loads(r["completion"])["issue_type"]} for r in rows]
        pd.DataFrame(items).to_parquet(root / "labels.parquet")
        return {"path": str(root / "labels.parquet")}
    if kind == "hub-dataset":
        repo = root / "org-emails"
        (repo / "data").mkdir(parents=True)
        _jsonl(repo / "data" / "train.jsonl", rows[:18])
        _jsonl(repo / "data" / "test.jsonl", rows[18:])
        return {"hub_id": str(repo)}
    raise AssertionError(kind)


KINDS = [
    "jsonl-prompt-completion-single-file-packed",
    "instruction-folder",
    "messages-json",
    "csv-with-column-mapping",
    "parquet-plain-text-answers",
    "hub-dataset",
]


READ_REPORT = """
import json, os
from transformers import AutoModelForCausalLM
from zenml.client import Client
run = Client().get_pipeline("finetune").last_run
merged = run.steps["export_merged"].outputs["merged_model"][0].load()
model = AutoModelForCausalLM.from_pretrained(merged)
results = run.steps["compare_models"].outputs["per_example_results"][0].load()
check = run.model_version.run_metadata["merged_export"]
gguf = run.steps["export_gguf"].outputs["gguf_model"][0].load()
report = run.steps["export_gguf"].outputs["export_report"][0].load()
parity = str(run.steps["export_gguf"].outputs["export_parity"][0].load())
print(json.dumps({
    "merged_lora_params": sum("lora" in name for name, _ in model.named_parameters()),
    "merged_dtype": str(model.dtype),
    "check": check,
    "results_columns": list(results.columns),
    "results_rows": len(results),
    "comparison": str(run.steps["compare_models"].outputs["model_comparison"][0].load())[:200],
    "gguf_files": sorted(path.name for path in gguf.iterdir()),
    # What the artifact store holds: the files themselves, usable where they are.
    "stored_merged": sorted(os.listdir(run.steps["export_merged"].outputs["merged_model"][0].uri)),
    "stored_gguf": sorted(os.listdir(run.steps["export_gguf"].outputs["gguf_model"][0].uri)),
    "export_checks": [check.model_dump() for check in report.checks],
    "export_metadata": run.model_version.run_metadata["export"],
    "parity_table": 'id="export-parity"' in parity,
}))
print(run.steps["preflight_report"].outputs["preflight_report"][0].load())
"""


READ_VERDICT = """
from zenml.client import Client
print(Client().get_pipeline("finetune").last_run.steps["worth_it_report"].outputs["worth_it"][0].load().score)
"""


@pytest.mark.parametrize("kind", KINDS)
def test_source_runs_through_the_pipeline(kind, tmp_path, tiny_model_dir, support_rows, zenml_env):
    data = _source(kind, tmp_path, support_rows)
    data.update(validation_share=0.2, test_share=0.2)
    config = write_config(
        tmp_path / "run.yaml", tiny_model_dir, tmp_path, data=data,
        training={"max_steps": 1, "batch_size": 4},
        registry={"model_name": f"sources-{kind}"},
        # One run also exports the merged model and GGUF files, each scored in its engine.
        **({"export": {"formats": ["merged", "gguf"], "dtype": "float32", "verify_rows": 4,
                       "gguf_types": ["f32", "q4_0"]}} if kind == KINDS[0] else {}),
        # Free-text answers promote on ROUGE-L, which the comparison and the verdict then weigh per row.
        **({"promotion": {"metric": "rougeL"}} if kind == "parquet-plain-text-answers" else {}),
    )
    # write_config's default data files are replaced by this source's keys.
    loaded = yaml.safe_load(config.read_text())
    for key in ("train_file", "validation_file", "test_file"):
        loaded["data"].pop(key)
    config.write_text(yaml.safe_dump(loaded))
    result = run_tree([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=zenml_env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Preflight:" in result.stderr + result.stdout
    metric = "rougeL" if kind == "parquet-plain-text-answers" else "mean_field_accuracy"
    assert f"why:      {metric}" in result.stdout
    if kind == "parquet-plain-text-answers":
        script = tmp_path / "read_verdict.py"
        script.write_text(READ_VERDICT)
        # The report's class lives in llm_lora/: ZenML imports it to load the artifact.
        read = subprocess.run([sys.executable, str(script)], cwd=REPO, env=dict(zenml_env, PYTHONPATH=str(REPO)),
                              capture_output=True, text=True)
        assert read.returncode == 0, read.stderr[-2000:]
        assert read.stdout.split("\n")[-2] == "per-example score: rougeL F-measure", read.stdout[-500:]
    if kind == KINDS[0]:
        # The preflight report is stored as an HTML page that the dashboard renders.
        script = tmp_path / "read_report.py"
        script.write_text(READ_REPORT)
        # The export report's class lives in llm_lora/: ZenML imports it to load the artifact.
        read = subprocess.run([sys.executable, str(script)], cwd=REPO, env=dict(zenml_env, PYTHONPATH=str(REPO)),
                              capture_output=True, text=True)
        assert read.returncode == 0, read.stderr[-2000:]
        # Importing peft may print a bitsandbytes notice first: the facts are the first JSON line.
        output = read.stdout[read.stdout.index("\n{") + 1:] if not read.stdout.startswith("{") else read.stdout
        facts_line, page = output.split("\n", 1)
        facts = json.loads(facts_line)
        # The merged export is an ordinary model: no LoRA layers, answers as base + adapter did.
        assert facts["merged_lora_params"] == 0 and facts["merged_dtype"] == "torch.float32"
        assert facts["check"]["checked_rows"] == 4 and facts["check"]["matching_rows"] == 4
        # The GGUF files and their Ollama Modelfiles, each file scored in llama.cpp beside the merged model.
        name = f"sources-{kind}"
        assert facts["gguf_files"] == sorted([f"{name}-f32.gguf", f"{name}-q4_0.gguf", "Modelfile.f32",
                                              "Modelfile.q4_0"])
        assert facts["stored_gguf"] == facts["gguf_files"]
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(facts["stored_merged"])
        checks = {(check["format"], check["type"]): check for check in facts["export_checks"]}
        assert set(checks) == {("merged", "float32"), ("gguf", "f32"), ("gguf", "q4_0")}
        assert checks[("gguf", "f32")]["engine"] == "llama.cpp" and checks[("gguf", "f32")]["tokenizer_mismatches"] == 0
        assert abs(checks[("gguf", "f32")]["difference"]) <= 0.01 and checks[("gguf", "q4_0")]["tolerance"] is None
        assert checks[("merged", "float32")]["engine"] == "transformers"
        assert facts["export_metadata"]["gguf_f32"]["engine"] == "llama.cpp" and facts["parity_table"]
        # Batch inference from the version's GGUF in llama.cpp answers as base + adapter in transformers.
        _jsonl(tmp_path / "new.jsonl", [{"prompt": row["prompt"]} for row in support_rows["test"][:3]])
        outputs = {}
        for engine, extra in (("transformers", {}), ("llama.cpp", {"gguf_type": "f32"})):
            predict_yaml = tmp_path / f"predict-{engine}.yaml"
            predict_yaml.write_text(yaml.safe_dump({"kind": "predict", "inference": {
                "model_name": name, "version": "1", "input_file": str(tmp_path / "new.jsonl"),
                "output_file": str(tmp_path / f"out-{engine}.jsonl"), "batch_size": 3, "engine": engine, **extra}}))
            done = run_tree([sys.executable, "run.py", "--config", str(predict_yaml)], cwd=REPO, env=zenml_env,
                            timeout=600)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            outputs[engine] = [json.loads(line)["output"] for line in (tmp_path / f"out-{engine}.jsonl").open()]
        assert len(outputs["llama.cpp"]) == 3 and outputs["llama.cpp"] == outputs["transformers"]
        # Per-example results: input, expected, both outputs, per-field correctness, latency.
        assert {"prompt", "expected", "base_output", "finetuned_output", "change", "base_order_id",
                "finetuned_order_id", "base_latency_s", "finetuned_latency_s"} <= set(facts["results_columns"])
        assert facts["results_rows"] > 0 and facts["comparison"].startswith("<!doctype html>")
        assert page.lstrip().startswith("<!doctype html>")
        assert "<h2>Preflight report</h2>" in page and "Token lengths" in page


def test_bad_rows_stop_the_run_before_training(tmp_path, tiny_model_dir, support_rows, zenml_env):
    rows = [json.dumps(row) for row in support_rows["train"][:10]]
    rows.insert(4, '{"prompt": "cut off", ')
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, tmp_path, registry={"model_name": "bad-rows"})
    loaded = yaml.safe_load(config.read_text())
    loaded["data"] = {"path": str(tmp_path / "train.jsonl"), "test_share": 0.2}
    config.write_text(yaml.safe_dump(loaded))
    result = run_tree([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=zenml_env, timeout=600)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"Error: {tmp_path / 'train.jsonl'}:5: malformed JSON" + last.split("malformed JSON", 1)[1]
    # Caught before the pipeline starts: no run is created for a typo in the data.
    assert "Initiating a new run" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


KILLED_RUN = """
from zenml.client import Client
runs = Client().list_pipeline_runs(pipeline_name="finetune", sort_by="asc:created", size=50).items
killed = [run for run in runs if run.config.model and "resume" in str(run.model_version.model.name)]
first = Client().get_pipeline_run(killed[0].id)
print(str(first.status), "lora_adapter" in first.steps.get("train_lora").outputs if "train_lora" in first.steps else False)
"""


# On PYTHONPATH for the run to be killed: once a checkpoint at or past LLM_LORA_TEST_HOLD_AT is published,
# the publishing process holds still, so the kill lands mid-training however busy the machine is.
HOLD_HOOK = SITECUSTOMIZE_PREAMBLE + """
import time

if os.environ.get("LLM_LORA_TEST_HOLD_AT"):
    from llm_lora.checkpoints import CheckpointStore

    _publish, _hold_at = CheckpointStore.publish, int(os.environ["LLM_LORA_TEST_HOLD_AT"])

    def _publish_then_hold(self, *args, **kwargs):
        _publish(self, *args, **kwargs)
        while (self.latest() or 0) >= _hold_at:
            time.sleep(1)

    CheckpointStore.publish = _publish_then_hold
"""


def test_killed_pipeline_resumes_training_from_its_last_checkpoint(tmp_path, tiny_model_dir, support_rows, zenml_env):
    """SIGKILL to the whole run (a lost machine); the same command again continues training, not restarts it."""
    import glob
    import signal
    import time

    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 64), ("validation", 4), ("test", 4)):
        _jsonl(data / f"{split}.jsonl", support_rows[split][:count])
    config = write_config(
        tmp_path / "run.yaml", tiny_model_dir, data,
        training={"max_steps": 60, "batch_size": 4, "checkpoint_steps": 5, "precision": "fp32"},
        registry={"model_name": "resume-test"},
    )
    home = Path(zenml_env["ZENML_CONFIG_PATH"]).parent
    pattern = str(home / "**" / "llm_lora_checkpoints" / "resume-test" / "*" / "checkpoint-*" / "COMPLETE")
    command = [sys.executable, "run.py", "--config", str(config)]
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOLD_HOOK)
    held = dict(zenml_env, LLM_LORA_TEST_HOLD_AT="10", PYTHONPATH=os.pathsep.join(
        filter(None, [str(tmp_path / "hook"), str(REPO), zenml_env.get("PYTHONPATH")])))
    first = subprocess.Popen(command, cwd=REPO, env=held, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 600
    try:
        while not any(int(Path(p).parent.name.split("-")[1]) >= 10 for p in glob.glob(pattern, recursive=True)):
            assert first.poll() is None and time.time() < deadline, "the run ended before a checkpoint was published"
            time.sleep(0.05)
    finally:  # the held run never ends by itself
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended (the assertion above says why)
        first.wait(timeout=60)
    complete = sorted(int(Path(p).parent.name.split("-")[1]) for p in glob.glob(pattern, recursive=True))
    assert complete and complete[-1] == 10

    second = run_tree(command, cwd=REPO, env=zenml_env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training: 60 steps" in second.stdout and f"resumed from step {complete[-1]}" in second.stdout
    assert not glob.glob(pattern, recursive=True)  # finished: the checkpoints are gone
    # The killed run never finished train_lora: no adapter artifact came out of it.
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    read = subprocess.run([sys.executable, str(script)], cwd=REPO, env=zenml_env, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr[-2000:]
    status, has_adapter = read.stdout.split()[-2:]
    assert status != "completed" and has_adapter == "False"

"""A task of another shape, run from configs/quickstart.yaml with only its `data:` section changed.

Venue booking requests as CSV files with their own column names, answered with eight JSON
fields about twice as long as the support emails' (tests/event_bookings.py). Nothing else of the
shipped config changes: the answer cap, the row limit and the promotion metric follow the data.
Then the same config with a cap too small for the answers: preflight, the reports and the verdict
say so, and nothing is promoted.
"""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from llm_lora.answer_length import room_needed
from tests.conftest import run_tree
from tests.event_bookings import COLUMNS, SYSTEM_PROMPT, write_csv_splits

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pipeline

TEST_ROWS = 16
# Rows enough for SmolLM2-135M to learn the eight fields at the quickstart's recipe, few enough for CI.
TRAIN_ROWS = 96


@pytest.fixture(scope="module")
def bookings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bookings")
    paths = write_csv_splits(folder / "data", train=TRAIN_ROWS, validation=8, test=TEST_ROWS)
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["data"] = {
        "train_file": str(paths["train"]),
        "validation_file": str(paths["validation"]),
        "test_file": str(paths["test"]),
        "columns": COLUMNS,
        "system_prompt": SYSTEM_PROMPT,
    }
    path = folder / "bookings.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(args, env):
    return run_tree([sys.executable, *args], cwd=REPO, env=env, timeout=1800)


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name):].split()


@pytest.fixture(scope="module")
def first_run(bookings, zenml_env):
    return _run(["run.py", "--config", str(bookings)], zenml_env)


def test_only_the_data_section_differs_from_the_quickstart(bookings):
    shipped = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    ours = yaml.safe_load(bookings.read_text())
    assert {key: value for key, value in ours.items() if key != "data"} == \
        {key: value for key, value in shipped.items() if key != "data"}


def test_a_new_task_is_measured_whole_beats_both_baselines_and_is_promoted(first_run):
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    out = first_run.stdout
    header = _row(out, "metric")
    assert header == ["zero-shot", "2-shot", "finetuned"]
    # No answer was cut short, and the finetuned model ended every answer on its own.
    assert _row(out, "answers cut short") == [f"0/{TEST_ROWS}"] * 3
    assert _row(out, "answers at max_new_tokens")[-1] == f"0/{TEST_ROWS}"
    cap = int(_row(out, "max_new_tokens")[-1])
    assert cap >= room_needed(2 * 45)  # the cap followed answers twice as long as the support emails'
    assert re.search(rf"^cap:      evaluation\.max_new_tokens: auto = {cap}: longest expected answer \d+ tokens",
                     out, re.MULTILINE)
    assert not re.search(r"^preflight: evaluation\.max_new_tokens", out, re.MULTILINE)
    zero, few, tuned = map(float, _row(out, "mean_field_accuracy"))
    assert tuned >= zero + 0.05 and tuned >= few + 0.05, (zero, few, tuned)
    assert "field_accuracy/requests" in out and "field_accuracy/order_id" not in out
    assert re.search(r"^verdict:  worth it: beats the best baseline", out, re.MULTILINE), out[-2000:]
    assert "support-email-extractor version 1, stage production (promoted)" in out


READ_REPORTS = """
import json
from zenml.client import Client
run = Client().get_pipeline("finetune").last_run
def output(step, name):
    return run.steps[step].outputs[name][0].load()
print(json.dumps({
    "preflight": str(output("preflight_report", "preflight_report")),
    "worth_it": str(output("worth_it_report", "worth_it_report")),
    "comparison": str(output("compare_models", "model_comparison")),
    "run_report": str(output("promote_model", "run_report")),
    "decision": output("promote_model", "promotion_decision").model_dump(mode="json"),
    "production": Client().get_model_version("support-email-extractor", "production").number,
}))
"""


def test_a_cap_too_small_for_the_answers_is_named_everywhere_and_promotes_nothing(
    first_run, bookings, zenml_env, tmp_path
):
    assert first_run.returncode == 0
    config = yaml.safe_load(bookings.read_text())
    config["evaluation"]["max_new_tokens"] = 40  # the answers need 67 to 92 tokens
    small = tmp_path / "small-cap.yaml"
    small.write_text(yaml.safe_dump(config, sort_keys=False))
    result = _run(["run.py", "--config", str(small)], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^preflight: evaluation\.max_new_tokens: 40: shorter than \d+ of \d+ expected answers"
                     r" \(longest \d+ tokens", out, re.MULTILINE), out[-3000:]
    assert _row(out, "answers cut short")[-1] == f"{TEST_ROWS}/{TEST_ROWS}"
    assert re.search(r"^verdict:  inconclusive: evaluation cut answers short; raise evaluation\.max_new_tokens",
                     out, re.MULTILINE)
    assert "version 2, stage none (not promoted to production)" in out
    assert re.search(r"^why:      inconclusive: evaluation cut answers short", out, re.MULTILINE)

    script = tmp_path / "read_reports.py"
    script.write_text(READ_REPORTS)
    # The decision's class lives in llm_lora/: ZenML imports it to load the artifact.
    read = _run([str(script)], dict(zenml_env, PYTHONPATH=str(REPO)))
    assert read.returncode == 0, read.stderr[-3000:]
    pages = json.loads(read.stdout.strip().splitlines()[-1])
    assert pages["production"] == 1  # version 1 still serves
    assert not pages["decision"]["promote"] and pages["decision"]["new_stage"] == "none"
    assert "! evaluation.max_new_tokens" in pages["preflight"] and "shorter than" in pages["preflight"]
    for page in ("worth_it", "run_report"):
        assert "evaluation cut answers short" in pages[page], page
    assert "cut short by the cap" in pages["comparison"]

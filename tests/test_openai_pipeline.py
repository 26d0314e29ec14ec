"""An OpenAI function-calling file and a recorded baseline through the real finetune pipeline (tiny model).

The numbers of a random-weight model mean nothing; what is checked is that every part arrives: the rows
are read as OpenAI's format, calls are scored, the recorded answers are a column of the summary and
a line of the verdict, and a changed recorded file is scored again while training comes from the cache.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_tree, step_statuses, write_config

REPO = Path(__file__).resolve().parent.parent
STORE_TOOLS = REPO / "data" / "store_tools"
pytestmark = pytest.mark.pipeline


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name):].split()


def _recorded(test_rows: list[dict], right: int) -> str:
    """The test rows with the first `right` answered as expected and the rest with a text, plus usage."""
    lines = []
    for index, row in enumerate(test_rows):
        answer = row["messages"][-1] if index < right else {"role": "assistant", "content": "Let me check."}
        lines.append({**row, "messages": [*row["messages"][:-1], answer],
                      "usage": {"prompt_tokens": 300, "completion_tokens": 25}})
    return "".join(json.dumps(line) + "\n" for line in lines)


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory, tokenizer):
    """The tiny random-weight Llama of conftest with room for the tools in every prompt (1,024 positions)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    directory = tmp_path_factory.mktemp("tiny-llama-1024")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory, long_tiny_model):
    folder = tmp_path_factory.mktemp("openai-pipeline")
    data = folder / "data"
    data.mkdir()
    splits = {}
    for split, count in (("train", 24), ("validation", 4), ("test", 10)):
        lines = (STORE_TOOLS / f"{split}.jsonl").read_text().splitlines()[:count]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        splits[split] = [json.loads(line) for line in lines]
    recorded = folder / "recorded.jsonl"
    recorded.write_text(_recorded(splits["test"], right=10))
    config = write_config(
        folder / "run.yaml", long_tiny_model, data,
        data={"system_prompt": None, "max_seq_length": "auto"},
        baselines={"few_shot_k": 1, "recorded": [{"name": "hosted-ft", "answers_file": str(recorded),
                                                  "price_per_million_prompt_tokens": 0.3,
                                                  "price_per_million_completion_tokens": 1.2}]},
        cost={"price_per_million_prompt_tokens": 0.1, "price_per_million_completion_tokens": 0.1},
    )
    return {"config": config, "recorded": recorded, "test": splits["test"]}


def _run(config, env):
    return run_tree([sys.executable, "run.py", "--config", str(config)], cwd=REPO, env=env, timeout=900)


def test_tools_rows_are_scored_as_calls_and_the_recorded_answers_are_in_the_tables(setup, zenml_env):
    result = _run(setup["config"], zenml_env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert _row(out, "metric") == ["zero-shot", "1-shot", "hosted-ft", "finetuned"]
    calls = sum(1 for row in setup["test"] if row["messages"][-1].get("tool_calls"))
    assert _row(out, "tool_call_rows") == [str(calls)] * 4
    # The recorded file holds the expected answers: it scores 1 on calls and on the text answers.
    assert _row(out, "tool_call_accuracy")[2] == "1.000" and _row(out, "answer_accuracy")[2] == "1.000"
    assert _row(out, "mean_prompt_tokens")[2] == "300.0" and _row(out, "mean_latency_s")[2] == "-"
    recorded = next(line for line in out.splitlines() if line.startswith("recorded: vs hosted-ft: finetuned "))
    assert "on tool_call_accuracy (95% CI" in recorded and f"{calls} rows)" in recorded
    assert "per million requests" in recorded
    assert "why:      tool_call_accuracy" in out
    # The preflight says what carries loss: OpenAI's rule, weights and calls counted.
    log = result.stdout + result.stderr
    assert "rows carry OpenAI weights, which decide their turns" in log and "answers are function calls" in log

    # A changed recorded file is scored again; data preparation, the evaluations and training stay cached.
    setup["recorded"].write_text(_recorded(setup["test"], right=0))
    again = _run(setup["config"], zenml_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _row(again.stdout, "tool_call_accuracy")[2] == "0.000"
    statuses = step_statuses(zenml_env)
    for step in ("prepare_data", "evaluate_base", "evaluate_few_shot", "train_lora", "evaluate_finetuned"):
        assert statuses[step] == "cached", statuses
    assert statuses["evaluate_recorded"] == statuses["worth_it_report"] == "completed", statuses


def test_a_recorded_file_missing_test_rows_stops_the_run_before_it_starts(setup, zenml_env, tmp_path):
    partial = tmp_path / "partial.jsonl"
    partial.write_text(_recorded(setup["test"][1:], right=9))
    config = yaml.safe_load(setup["config"].read_text())
    config["baselines"]["recorded"][0]["answers_file"] = str(partial)
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _run(path, zenml_env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: baselines.recorded[0].answers_file (") and "no recorded answer for 1 of the 10" \
        " test rows: " in last and "test.jsonl:1" in last, last

"""Sources, splits, duplicates, leakage, bad rows and the preflight report."""

import json

import pandas as pd
import pytest

from llm_lora.config import DataConfig, RunConfig
from llm_lora.data_preparation import check_rows, prepare_splits
from llm_lora.data_sources import DataError
from llm_lora.preflight import MeasuredThroughput, RunEstimate, estimate_run, problems, render_html, render_text


def rows(count, start=0):
    return [{"prompt": f"Email number {i} about my kettle.", "completion": f'{{"n":{i}}}'} for i in range(start, start + count)]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def data(**fields):
    return DataConfig(system_prompt="Extract.", max_seq_length=128, **fields)


def test_separate_files(tmp_path, tokenizer):
    config = data(
        train_file=write_jsonl(tmp_path / "a.jsonl", rows(20)),
        validation_file=write_jsonl(tmp_path / "b.jsonl", rows(4, 100)),
        test_file=write_jsonl(tmp_path / "c.jsonl", rows(5, 200)),
    )
    prepared = prepare_splits(config, tokenizer)
    assert {k: len(v) for k, v in prepared.splits.items()} == {"train": 20, "validation": 4, "test": 5}
    assert prepared.summary["splits_made"] == [] and prepared.summary["dropped"] == []


def test_single_file_is_split_with_a_seed(tmp_path, tokenizer):
    config = data(path=write_jsonl(tmp_path / "all.jsonl", rows(50)), validation_share=0.1, test_share=0.2)
    first = prepare_splits(config, tokenizer)
    again = prepare_splits(config, tokenizer)
    assert {k: len(v) for k, v in first.splits.items()} == {"train": 36, "validation": 4, "test": 10}
    assert first.summary["splits_made"] == ["test", "validation"]
    assert [r["prompt"] for r in first.splits["test"]] == [r["prompt"] for r in again.splits["test"]]
    train = {r["prompt"] for r in first.splits["train"]}
    assert not train & {r["prompt"] for r in first.splits["test"] + first.splits["validation"]}


def test_folder_of_json_csv_and_parquet(tmp_path, tokenizer):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps(rows(12)))
    pd.DataFrame(rows(3, 100)).to_csv(folder / "dev.csv", index=False)
    pd.DataFrame(rows(4, 200)).to_parquet(folder / "test.parquet")
    prepared = prepare_splits(data(path=folder), tokenizer)
    assert {k: len(v) for k, v in prepared.splits.items()} == {"train": 12, "validation": 3, "test": 4}
    assert prepared.splits["validation"][0]["source"].endswith("dev.csv:line 2")


def test_folder_split_names_and_files_left_unread(tmp_path, tokenizer, caplog):
    folder = tmp_path / "named"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows(12))
    write_jsonl(folder / "validate.jsonl", rows(3, 100))
    write_jsonl(folder / "tests.jsonl", rows(4, 200))
    write_jsonl(folder / "new_emails.jsonl", rows(5, 300))  # unlabelled rows for inference, say
    with caplog.at_level("WARNING"):
        prepared = prepare_splits(data(path=folder), tokenizer)
    assert {k: len(v) for k, v in prepared.splits.items()} == {"train": 12, "validation": 3, "test": 4}
    assert prepared.summary["splits_made"] == []
    assert f"{folder}: not read: new_emails.jsonl" in caplog.text


def test_instruction_and_messages_files(tmp_path, tokenizer):
    instruction = [{"instruction": "Classify.", "input": f"text {i}", "output": "ok"} for i in range(10)]
    prepared = prepare_splits(data(path=write_jsonl(tmp_path / "i.jsonl", instruction)), tokenizer)
    assert prepared.splits["train"][0]["context"][0][1].startswith("Classify.\n\ntext")
    chats = [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
        for i in range(10)
    ]
    prepared = prepare_splits(data(path=write_jsonl(tmp_path / "m.jsonl", chats), format="messages"), tokenizer)
    assert prepared.splits["train"][0]["completion"] == "hello"


def test_hub_style_dataset_folder_through_datasets(tmp_path, tokenizer):
    repo = tmp_path / "org-dataset"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl", [{"q": r["prompt"], "a": r["completion"]} for r in rows(10)])
    write_jsonl(repo / "data" / "test.jsonl", [{"q": r["prompt"], "a": r["completion"]} for r in rows(3, 50)])
    config = data(hub_id=str(repo), columns={"prompt": "q", "completion": "a"})
    prepared = prepare_splits(config, tokenizer)
    assert len(prepared.splits["test"]) == 3 and prepared.summary["splits_made"] == ["validation"]


def test_offline_hub_dataset_is_a_one_line_error(tokenizer, monkeypatch):
    with pytest.raises(DataError, match=r"^data\.hub_id: cannot load 'no-such-org/no-such-dataset-xyz': ") as error:
        prepare_splits(data(hub_id="no-such-org/no-such-dataset-xyz"), tokenizer)
    assert "\n" not in str(error.value)


def test_missing_hub_split_named(tmp_path, tokenizer):
    repo = tmp_path / "ds"
    repo.mkdir()
    write_jsonl(repo / "train.jsonl", rows(5))
    with pytest.raises(DataError, match=r"data\.hub_splits\.train: split 'training' not in"):
        prepare_splits(data(hub_id=str(repo), hub_splits={"train": "training"}), tokenizer)


@pytest.fixture
def planted(tmp_path):
    """Train and test files with one of each problem planted, at known lines."""
    train = tmp_path / "train.jsonl"
    lines = [json.dumps(row) for row in rows(12)]
    lines += [
        '{"prompt": "broken json", "completion": ',  # line 13
        json.dumps({"prompt": "no answer here"}),  # line 14: missing field
        json.dumps({"prompt": [5], "completion": "x"}),  # line 15: wrong type
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),  # line 16: unknown role
        json.dumps(rows(1)[0]),  # line 17: exact duplicate of line 1
        json.dumps({"prompt": "long " * 400, "completion": "x"}),  # line 18: over-long
        json.dumps({"prompt": "   ", "completion": "x"}),  # line 19: empty field
    ]
    data_bytes = ("\n".join(lines) + "\n").encode() + b'{"prompt": "caf\xe9", "completion": "x"}\n'  # line 20
    train.write_bytes(data_bytes)
    test = write_jsonl(tmp_path / "test.jsonl", rows(4, 300) + rows(1, 3))  # line 5 leaks train line 4
    validation = write_jsonl(tmp_path / "validation.jsonl", rows(3, 400))
    return train, validation, test


def test_planted_problems_all_named_in_the_report(planted, tokenizer):
    train, validation, test = planted
    config = data(train_file=train, validation_file=validation, test_file=test, on_bad_rows="drop")
    prepared = prepare_splits(config, tokenizer)
    dropped = {(row["source"], row["reason"]) for row in prepared.summary["dropped"]}
    reasons = {source.rsplit(":", 1)[1]: reason for source, reason in dropped if source.startswith(str(train))}
    assert "malformed JSON" in reasons["13"]
    assert reasons["14"] == "missing field 'completion'"
    assert reasons["15"] == "field 'prompt' must be a string, got list"
    assert "unknown role 'robot'" in reasons["16"]
    assert reasons["17"] == "exact duplicate"
    assert "> max_seq_length 128" in reasons["18"]
    assert reasons["19"] == "field 'prompt' is empty"
    assert "not UTF-8" in reasons["20"]
    assert (f"{test}:5", "input also in train (leakage)") in dropped
    assert len(prepared.splits["train"]) == 12 and len(prepared.splits["test"]) == 4

    summary = prepared.summary
    assert summary["train"]["duplicates_dropped"] == 1 and summary["test"]["leakage_dropped"] == 1
    assert summary["train"]["over_length"] == 1
    findings = problems(summary)
    assert any("1 exact duplicates" in line for line in findings)
    assert any("input is also in train" in line for line in findings)
    assert any("6 bad rows dropped" in line for line in findings)
    page = render_html(summary, RunEstimate(optimizer_steps=2, epochs=1.0, training_tokens=0, trained_tokens=0))
    for line in range(13, 21):
        assert f"{train}:{line}" in page
    assert f"{test}:5" in page and "Preflight report" in page


def test_on_bad_rows_error_stops_at_the_first_bad_line(planted, tokenizer):
    train, validation, test = planted
    config = data(train_file=train, validation_file=validation, test_file=test)
    with pytest.raises(DataError, match=rf"^{train}:13: malformed JSON .*\(5 more bad rows; data.on_bad_rows: drop"):
        prepare_splits(config, tokenizer)


def test_a_malformed_json_file_names_its_line(tmp_path, tokenizer):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c" "completion": "d"}\n]\n')
    with pytest.raises(DataError, match=rf"^{path}:3: malformed JSON \(Expecting ',' delimiter, column 18\)$"):
        prepare_splits(data(path=path), tokenizer)


def test_a_byte_order_mark_is_not_a_bad_row(tmp_path, tokenizer):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows(20)).encode())
    prepared = prepare_splits(data(path=path), tokenizer)
    assert sum(len(split) for split in prepared.splits.values()) == 20 and prepared.summary["dropped"] == []


def test_empty_and_missing_files(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"empty\.jsonl: no train rows left \(no rows in it\)"):
        prepare_splits(data(path=write_jsonl(tmp_path / "empty.jsonl", [])), tokenizer)
    with pytest.raises(DataError, match="file not found"):
        prepare_splits(data(train_file=tmp_path / "gone.jsonl"), tokenizer)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        prepare_splits(data(path=tmp_path / "x.txt"), tokenizer)


def test_an_emptied_split_names_its_own_file_and_why(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", rows(12))
    leaked = write_jsonl(tmp_path / "validation.jsonl", rows(3))  # the same inputs as train's first three
    with pytest.raises(DataError, match=rf"^{leaked}: no validation rows left of 3 read: 3 input also in train \(leakage\)$"):
        prepare_splits(data(train_file=train, validation_file=leaked), tokenizer)
    empty = write_jsonl(tmp_path / "test.jsonl", [])
    with pytest.raises(DataError, match=rf"^data.test_file: {empty}: no test rows left \(no rows in it\)$"):
        prepare_splits(data(train_file=train, test_file=empty), tokenizer)
    with pytest.raises(DataError, match=rf"^data.test_file: {empty}: no test rows left \(no rows in it\)$"):
        check_rows(data(train_file=train, test_file=empty))  # before a pipeline starts, no tokenizer


def test_estimate_counts_steps_and_uses_a_given_throughput(tmp_path, tokenizer):
    prepared = prepare_splits(data(path=write_jsonl(tmp_path / "all.jsonl", rows(100))), tokenizer)
    config = RunConfig.model_validate(
        {
            "model": {"name": "org/model"},
            "data": {"path": str(tmp_path / "all.jsonl")},
            "training": {"batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 2},
            "preflight": {"tokens_per_s": 1000, "price_per_gpu_hour": 3.0},
        }
    )
    estimate = estimate_run(prepared.summary, config, "cuda")
    train_rows = prepared.summary["train"]["rows"]  # 100 rows less 10 test and 9 validation
    assert train_rows == 81
    assert estimate.optimizer_steps == 2 * 11  # ceil(81 / 8 rows per step), two epochs
    assert estimate.training_tokens == 2 * prepared.summary["train"]["tokens"]
    seconds = estimate.training_tokens / 1000
    assert estimate.training_minutes == round(seconds / 60, 1)
    assert estimate.training_cost == round(seconds / 3600 * 3.0, 2)
    assert "22 optimizer steps" in render_text(prepared.summary, estimate)


def test_estimate_falls_back_on_a_measured_throughput_of_the_same_model_and_device(tmp_path, tokenizer):
    prepared = prepare_splits(data(path=write_jsonl(tmp_path / "all.jsonl", rows(100))), tokenizer)
    settings = {"model": {"name": "org/model"}, "data": {"path": str(tmp_path / "all.jsonl")}}
    measured = [MeasuredThroughput("org/other", "cpu", 50.0, "other.json"),
                MeasuredThroughput("org/model", "cuda", 900.0, "gpu.json"),
                MeasuredThroughput("org/model", "cpu", 200.0, "cpu.json")]
    estimate = estimate_run(prepared.summary, RunConfig.model_validate(settings), "cpu", measured)
    assert (estimate.tokens_per_s, estimate.throughput_from) == (200.0, "cpu.json")
    assert estimate_run(prepared.summary, RunConfig.model_validate(settings), "cpu").training_minutes is None
    given = RunConfig.model_validate({**settings, "preflight": {"tokens_per_s": 1000}})
    assert estimate_run(prepared.summary, given, "cpu", measured).throughput_from == "preflight.tokens_per_s"


def test_the_summary_puts_the_estimated_training_time_beside_the_time_it_took():
    from llm_lora.preflight import estimate_beside_actual

    estimate = RunEstimate(optimizer_steps=8, epochs=1.0, training_tokens=9000, trained_tokens=2400,
                           tokens_per_s=300.0, throughput_from="quickstart-cpu.json", training_minutes=0.5)
    assert estimate_beside_actual(estimate, {"train_runtime_s": 90.0}) == (
        "estimated 30 s at 300 tokens/s (from quickstart-cpu.json); took 90 s (3.00x the estimate)")
    resumed = estimate_beside_actual(estimate, {"train_runtime_s": 20.0, "resumed_from_step": 6})
    assert resumed.endswith("; resumed, so not comparable") and "took" not in resumed
    unknown = RunEstimate(optimizer_steps=8, epochs=1.0, training_tokens=9000, trained_tokens=2400)
    assert estimate_beside_actual(unknown, {"train_runtime_s": 90.0}) == (
        "no training time estimated (set preflight.tokens_per_s)")

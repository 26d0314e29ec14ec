"""The monitor's logic: the request window, input-length drift, labelled rows, the decision, the retrain's data."""

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from llm_lora.config import DataConfig, MonitorThresholds, NewRowsSettings, RunConfig, load_config
from llm_lora.data_formats import Example
from llm_lora.data_preparation import split_examples
from llm_lora.monitoring import (
    MonitorError, RequestWindow, ScoreCheck, check_traffic, decide, length_drift, new_examples, promoted_score,
    read_labelled_rows, read_request_window, render_monitor_report, rows_fingerprint, source_inputs,
)
from llm_lora.retraining import write_retrain_data

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
THRESHOLDS = MonitorThresholds(max_score_drop=0.05, min_score_rows=5, min_new_rows=100, drift_min_inputs=20,
                               min_parse_rate=0.9, max_latency_p95_s=2.0)


def record(hours_ago: float, tokens=(100,), parsed=None, latency=0.5, status=200, **extra) -> dict:
    base = {"time": (NOW - timedelta(hours=hours_ago)).isoformat(timespec="milliseconds"), "route": "invoke",
            "status": status, "model_version": "m 1 (production)"}
    if status != 200:
        return {**base, "reason": "queue full"}
    parsed = len(tokens) if parsed is None else parsed
    return {**base, "inputs": len(tokens), "input_tokens": list(tokens), "latency_s": latency, "queue_s": 0.0,
            "parsed": parsed, "parsed_rate": parsed / len(tokens), "hit_cap": 0, **extra}


def write_log(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))
    return path


# ---------------------------------------------------------------------------------------------- the window


def test_the_window_holds_the_hours_before_now(tmp_path):
    log = write_log(tmp_path / "requests.jsonl", [record(30), record(5), record(1)], ['{"time": "t', "\n"])
    window = read_request_window(log, 24, "now", now=NOW)
    assert len(window.records) == 2 and window.end == NOW and window.unreadable == 1
    # newest: the window ends at the newest record, whenever the monitor reads the log.
    later = read_request_window(log, 5, "newest", now=NOW + timedelta(days=30))
    assert len(later.records) == 2 and later.end == NOW - timedelta(hours=1)


def test_window_problems_are_one_line(tmp_path):
    with pytest.raises(MonitorError, match=r"^monitor\.request_log: .*nope\.jsonl not found; set the deployment's"):
        read_request_window(tmp_path / "nope.jsonl", 24, now=NOW)
    empty = write_log(tmp_path / "empty.jsonl", [])
    with pytest.raises(MonitorError, match=r"empty\.jsonl: no request records \(the deployment has not served"):
        read_request_window(empty, 24, now=NOW)
    old = write_log(tmp_path / "old.jsonl", [record(48)])
    with pytest.raises(MonitorError) as raised:
        read_request_window(old, 24, now=NOW)
    message = str(raised.value)
    assert "no requests between 2026-11-28 12:00 and 2026-11-29 12:00 UTC (monitor.window_hours: 24)" in message
    assert message.endswith("the newest record is from 2026-11-27 12:00 UTC") and "\n" not in message


# ---------------------------------------------------------------------------------------------- traffic and drift


def test_same_lengths_do_not_drift_and_longer_ones_do():
    training = [80 + (i * 7) % 40 for i in range(300)]
    same = length_drift([80 + (i * 11) % 40 for i in range(200)], training, THRESHOLDS)
    assert same.available and not same.drifted and same.p_value > 0.01
    longer = length_drift([160 + (i * 11) % 80 for i in range(200)], training, THRESHOLDS)
    assert longer.drifted and longer.p_value < 1e-6 and longer.statistic > 0.9
    assert longer.served_median > longer.training_median
    few = length_drift([160, 170, 180], training, THRESHOLDS)
    assert not few.drifted and "only 3 served inputs" in few.note


def test_records_without_lengths_leave_drift_unavailable():
    old = {key: value for key, value in record(1).items() if key != "input_tokens"}
    traffic = check_traffic(window_of([old, old]), [100, 110], THRESHOLDS)
    assert traffic.requests == 2 and traffic.parse_rate == 1.0
    assert not traffic.drift.available and "before deployments recorded input_tokens" in traffic.drift.note
    decision = decide(traffic, None, THRESHOLDS, "m 1")
    assert decision.action == "nothing"
    assert any("input-length drift unavailable" in reason for reason in decision.reasons)


def window_of(records):
    return RequestWindow(log="requests.jsonl", start=NOW - timedelta(hours=24), end=NOW, records=records)


TRAINING = [90 + i % 30 for i in range(200)]
STEADY = [record(1 + i / 100, tokens=(90 + (i * 7) % 30,)) for i in range(60)]


def score(drop=0.0, new=50, scored=None, unmeasured=None) -> ScoreCheck:
    return ScoreCheck(source="rows.jsonl", labelled_rows=new + 10, new_rows=new, scored_rows=new if scored is None
                      else scored, fingerprint="abc", metric="mean_field_accuracy", promoted=0.9,
                      promoted_source="its promotion (its test rows)", score=round(0.9 - drop, 4),
                      metrics={"mean_field_accuracy": 0.9 - drop}, unmeasured=unmeasured)


def test_a_steady_window_and_score_is_nothing_to_do():
    traffic = check_traffic(window_of(STEADY), TRAINING, THRESHOLDS)
    decision = decide(traffic, score(drop=0.02), THRESHOLDS, "m 1 (production)")
    assert decision.action == "nothing", decision.reasons
    assert decision.line().startswith("nothing to do: 60 requests (60 inputs), 0 refused")
    assert {check.name for check in decision.checks} == {"volume", "parse_rate", "latency", "input_length",
                                                        "new_rows", "score"}


def test_drift_and_a_parse_fall_alert():
    drifted = [record(1 + i / 100, tokens=(200 + i % 50,), parsed=0 if i % 2 else 1) for i in range(60)]
    traffic = check_traffic(window_of(drifted), TRAINING, THRESHOLDS)
    decision = decide(traffic, score(), THRESHOLDS, "m 1")
    assert decision.action == "alert"
    assert any(reason.startswith("parse rate 0.500 is below 0.900") for reason in decision.reasons)
    assert any(reason.startswith("input lengths drifted: median 219.5 served vs 104 training") for reason in
               decision.reasons)


def test_a_free_text_version_is_not_held_to_a_parse_rate():
    """A version trained on free-text answers parses none of them: nothing to alert about."""
    unparsed = [record(1 + i / 100, tokens=(90 + (i * 7) % 30,), parsed=0) for i in range(60)]  # STEADY, unparsed
    free_text = decide(check_traffic(window_of(unparsed), TRAINING, THRESHOLDS, json_answers=False), score(),
                       THRESHOLDS, "m 1")
    assert free_text.action == "nothing", free_text.reasons
    assert "parse rate 0.000 not judged: the version answers free text" in free_text.line()
    json_version = decide(check_traffic(window_of(unparsed), TRAINING, THRESHOLDS, json_answers=True), score(),
                          THRESHOLDS, "m 1")
    assert json_version.action == "alert"


def test_slow_answers_and_refusals_alert():
    slow = [record(1, latency=5.0)] * 30 + [record(2, status=503)] * 5
    decision = decide(check_traffic(window_of(slow), TRAINING, THRESHOLDS), None, THRESHOLDS, "m 1")
    assert decision.action == "alert"
    assert any(reason.startswith("latency p95 5.00 s is above 2 s") for reason in decision.reasons)
    assert any("5 refused (14.3%; at most 5.0%)" in reason for reason in decision.reasons)


def test_a_score_drop_or_many_new_rows_retrain():
    traffic = check_traffic(window_of(STEADY), TRAINING, THRESHOLDS)
    fell = decide(traffic, score(drop=0.3), THRESHOLDS, "m 1")
    assert fell.action == "retrain" and fell.fingerprint == "abc"
    assert fell.reasons == ["mean_field_accuracy 0.6000 on 50 new rows vs 0.9000 at its promotion (its test rows):"
                            " -0.3000: fell more than 0.05 (thresholds.max_score_drop)"]
    many = decide(traffic, score(new=150), THRESHOLDS, "m 1")
    assert many.action == "retrain" and many.reasons[0].startswith("150 new labelled rows")
    # Too few rows to decide on, or answers cut short: reported, no retrain.
    assert decide(traffic, score(drop=0.3, new=3), THRESHOLDS, "m 1").action == "nothing"
    cut = decide(traffic, score(drop=0.3, unmeasured="answers cut short"), THRESHOLDS, "m 1")
    assert cut.action == "alert" and "inconclusive: answers cut short" in cut.reasons[0]


def test_a_retrain_that_cannot_run_alerts_and_says_why():
    traffic = check_traffic(window_of(STEADY), TRAINING, THRESHOLDS)
    unset = decide(traffic, score(drop=0.3), THRESHOLDS, "m 1", can_retrain=False)
    assert unset.action == "alert" and "retrain needed, but retrain.finetune_config is not set" in unset.reasons
    again = decide(traffic, score(drop=0.3), THRESHOLDS, "m 1",
                   previous_retrain={"fingerprint": "abc", "run": "finetune-1", "promotion": "not promoted"})
    assert again.action == "alert"
    assert any("retrained on already (run finetune-1: not promoted)" in reason for reason in again.reasons)
    other_rows = decide(traffic, score(drop=0.3), THRESHOLDS, "m 1", previous_retrain={"fingerprint": "old"})
    assert other_rows.action == "retrain"


def test_the_report_shows_the_decision_and_every_check():
    traffic = check_traffic(window_of(STEADY), TRAINING, THRESHOLDS)
    checked = score(drop=0.3)
    decision = decide(traffic, checked, THRESHOLDS, "m <1>")
    page = render_monitor_report(decision, traffic, checked)
    assert "id='decision'" in page and 'id="checks"' in page and 'id="score"' in page
    assert "Retrain" in page and "m &lt;1&gt;" in page and "-0.3000" in page


def test_the_promoted_score_comes_from_the_promotion_record():
    assert promoted_score({"promotion": {"metric": "exact_match", "candidate": 0.8}}) == (
        "exact_match", 0.8, "its promotion (its test rows)")
    assert promoted_score({"finetuned": {"mean_field_accuracy": 0.7, "exact_match": 0.5}})[:2] == (
        "mean_field_accuracy", 0.7)
    assert promoted_score({}) == (None, None, "no recorded evaluation")


# ---------------------------------------------------------------------------------------------- labelled rows


def rows_file(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_labelled_rows_are_read_like_training_rows(tmp_path, support_rows):
    folder = tmp_path / "labelled"
    folder.mkdir()
    rows_file(folder / "batch-001.jsonl", support_rows["test"][:3])
    data = DataConfig(train_file=tmp_path / "train.jsonl")
    read = read_labelled_rows(NewRowsSettings(path=folder), data)
    assert len(read.examples) == 3 and "(1 file)" in read.source
    # The folder grows: a second file counts too; files of other types are not data.
    rows_file(folder / "batch-002.jsonl", support_rows["test"][3:5])
    (folder / "notes.txt").write_text("labelled by the support team")
    assert len(read_labelled_rows(NewRowsSettings(path=folder), data).examples) == 5
    # Rows in another shape: the columns the version's training named.
    renamed = rows_file(tmp_path / "renamed.jsonl", [{"email": r["prompt"], "fields": r["completion"]}
                                                     for r in support_rows["test"][:2]])
    mapped = DataConfig(train_file=tmp_path / "train.jsonl", columns={"prompt": "email", "completion": "fields"})
    assert len(read_labelled_rows(NewRowsSettings(path=renamed), mapped).examples) == 2


def test_bad_labelled_rows_are_one_line(tmp_path):
    data = DataConfig(train_file=tmp_path / "train.jsonl", format="prompt_completion")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(MonitorError, match=r"bad\.jsonl:2: malformed JSON"):
        read_labelled_rows(NewRowsSettings(path=bad_json), data)
    wrong = rows_file(tmp_path / "wrong.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(MonitorError) as raised:
        read_labelled_rows(NewRowsSettings(path=wrong), data)
    assert str(raised.value).startswith(f"{wrong}:1: missing field 'prompt'")
    assert str(raised.value).endswith("(new rows are read like the version's training rows: data.format"
                                      " prompt_completion)")
    with pytest.raises(MonitorError, match=r"^new_rows\.path: .*missing not found"):
        read_labelled_rows(NewRowsSettings(path=tmp_path / "missing"), data)
    (tmp_path / "empty").mkdir()
    assert read_labelled_rows(NewRowsSettings(path=tmp_path / "empty"), data).examples == []


def test_only_inputs_the_version_has_not_seen_are_new(tmp_path, support_rows):
    train = rows_file(tmp_path / "train.jsonl", support_rows["train"][:10])
    data = DataConfig(train_file=train, system_prompt="Extract.")
    seen = source_inputs(data)
    labelled = [Example.from_row({"context": [["user", r["prompt"]]], "completion": r["completion"]})
                for r in support_rows["train"][8:10] + support_rows["test"][:3] + support_rows["test"][:1]]
    new = new_examples(labelled, seen, data.system_prompt)
    assert [e.prompt for e in new] == [r["prompt"] for r in support_rows["test"][:3]]
    assert rows_fingerprint(new) == rows_fingerprint(list(reversed(new))) != rows_fingerprint(new[:2])


# ---------------------------------------------------------------------------------------------- the retrain's data


def test_the_retrain_trains_on_new_rows_first_and_keeps_the_evaluation_rows(tmp_path, support_rows):
    source = tmp_path / "data"
    source.mkdir()
    for split, rows in support_rows.items():
        rows_file(source / f"{split}.jsonl", rows[:12])
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump({
        "kind": "finetune", "model": {"name": "org/model"},
        "data": {"train_file": str(source / "train.jsonl"), "validation_file": str(source / "validation.jsonl"),
                 "test_file": str(source / "test.jsonl"), "system_prompt": "Extract.", "max_train_rows": 8},
        "training": {"max_steps": 3}, "registry": {"model_name": "m"},
    }))
    finetune = load_config(config_path)
    # Two labelled rows the data has already (one a test row), three new ones.
    labelled = [Example.from_row({"context": [["user", r["prompt"]]], "completion": r["completion"]})
                for r in support_rows["train"][:1] + support_rows["test"][:1] + support_rows["train"][40:43]]
    written = write_retrain_data(finetune, labelled, tmp_path / "retrain", stamp="first")
    assert written.new_rows == 3 and written.train_rows == 15
    assert written.config_file == tmp_path / "retrain" / "first" / "finetune.yaml"
    again = load_config(written.config_file)
    assert isinstance(again, RunConfig) and again.training.max_steps == 3 and again.data.format == "messages"
    assert again.data.max_train_rows == 8 and again.registry.model_name == "m"
    splits = split_examples(again.data).splits
    # max_train_rows keeps the first rows: the new ones are first.
    assert [e.prompt for e in splits["train"][:3]] == [r["prompt"] for r in support_rows["train"][40:43]]
    original = split_examples(finetune.data).splits
    assert [e.key() for e in splits["test"]] == [e.key() for e in original["test"]]
    with pytest.raises(ValueError, match="every labelled row is in the finetune config's data already"):
        write_retrain_data(finetune, labelled[:2], tmp_path / "retrain", stamp="second")

"""The extraction metrics: hand-made answers with hand-computed scores."""

import json
import os
import sys

import pytest

# conftest.py sets these too; repeated here so this module stays offline when run on its own.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from llm_lora.metrics import (  # noqa: E402
    METRICS_DIR,
    compute_extraction_metrics,
    load_metric,
    parse_json_object,
    score_example,
)

FIELDS = ["order_id", "issue_type", "priority", "product", "action"]

REFERENCE = {
    "order_id": "ORD-482913",
    "issue_type": "damaged_item",
    "priority": "high",
    "product": "wireless earbuds",
    "action": "refund",
}


def compact(obj: dict) -> str:
    """The dataset's reference format: compact JSON."""
    return json.dumps(obj, separators=(",", ":"))


def field_accuracies(result: dict) -> dict:
    return {
        key.removeprefix("field_accuracy/"): value for key, value in result.items() if key.startswith("field_accuracy/")
    }


# Answers whose validity is easy to get wrong; the project's parser and the metric module must agree on all.
TRICKY = [
    ('{"a": "b"}', True),
    ('  \n{"a":"b"}\n\t', True),
    ('```json\n{"a": "b"}\n```', True),
    ('```\n{"a": "b"}\n```', True),
    ('```JSON {"a": "b"}```', True),
    ('  ```json\n{"a": "b"}\n```  \n', True),
    ('{"a": "```"}', True),
    ('```json\n{"a": "```"}\n```', True),
    ("{}", True),
    ('{"a": {"b": [1, 2]}}', True),
    ('{"a": NaN}', True),  # Python's json accepts NaN; so does the rule.
    ('```json\n{"a": "b"}', False),  # fence never closed
    ('{"a": "b"}\n```', False),
    ('```python\n{"a": "b"}\n```', False),
    ("```json\n[1, 2]\n```", False),
    ('```json\n```json\n{"a": "b"}\n```\n```', False),
    ('Here is the JSON: {"a": "b"}', False),
    ('{"a": "b"} Let me know if you need anything else.', False),
    ('Sure!\n```json\n{"a": "b"}\n```', False),
    ('{"a": "b"}{"c": "d"}', False),
    ("{'a': 'b'}", False),
    ("{order_id: 1}", False),
    ('{"a":"b"', False),
    ("", False),
    ("   \n", False),
    ("Sure! Here is the JSON", False),
    ("[1, 2]", False),
    ('"a string"', False),
    ("42", False),
    ("null", False),
    ("true", False),
    ("[" * 100_000 + "]" * 100_000, False),
]


@pytest.fixture(scope="module")
def module():
    """The metric module as `evaluate` imported it from its cache (not the file in the repo)."""
    return sys.modules[type(load_metric("json_fields")).__module__]


def test_loads_offline_from_the_repo():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert (METRICS_DIR / "json_fields" / "json_fields.py").is_file()
    metric = load_metric("json_fields")
    assert metric.name == "json_fields"
    # Cached per process: evaluate resolves and imports the module once.
    assert load_metric("json_fields") is metric


def test_missing_module_names_the_path():
    with pytest.raises(FileNotFoundError, match=r"metrics[/\\]no_such_metric[/\\]no_such_metric\.py"):
        load_metric("no_such_metric")


def test_all_correct():
    result = compute_extraction_metrics([compact(REFERENCE)] * 3, [compact(REFERENCE)] * 3)
    assert result == {
        "valid_json_rate": 1.0,
        "exact_match": 1.0,
        **{f"field_accuracy/{field}": 1.0 for field in FIELDS},
        "mean_field_accuracy": 1.0,
    }
    # Field order follows the references.
    assert list(field_accuracies(result)) == FIELDS


def test_all_malformed():
    predictions = ["{order_id: 1}", '{"a":"b"', "", "Sure! Here is the JSON", '["ORD-482913"]', '"ORD-482913"']
    result = compute_extraction_metrics(predictions, [compact(REFERENCE)] * len(predictions))
    assert result == {
        "valid_json_rate": 0.0,
        "exact_match": 0.0,
        **{f"field_accuracy/{field}": 0.0 for field in FIELDS},
        "mean_field_accuracy": 0.0,
    }


def test_fenced_json_is_accepted():
    prediction = "```json\n" + json.dumps(REFERENCE, indent=2) + "\n```"
    result = compute_extraction_metrics([prediction, "```\n" + compact(REFERENCE) + "\n```"], [compact(REFERENCE)] * 2)
    assert result["valid_json_rate"] == 1.0
    assert result["exact_match"] == 1.0
    assert result["mean_field_accuracy"] == 1.0


def test_prose_around_json_is_rejected():
    predictions = [
        "Here is the extracted JSON: " + compact(REFERENCE),
        compact(REFERENCE) + "\nLet me know if I can help further.",
        "Sure!\n```json\n" + compact(REFERENCE) + "\n```",
        compact(REFERENCE),
    ]
    result = compute_extraction_metrics(predictions, [compact(REFERENCE)] * 4)
    assert result["valid_json_rate"] == 0.25
    assert result["exact_match"] == 0.25
    assert all(value == 0.25 for value in field_accuracies(result).values())


def test_case_and_whitespace_are_normalized():
    prediction = {
        "order_id": " ord-482913 ",
        "issue_type": "DAMAGED_ITEM",
        "priority": "High\n",
        "product": "  Wireless Earbuds",
        "action": "REFUND ",
    }
    result = compute_extraction_metrics([json.dumps(prediction)], [compact(REFERENCE)])
    assert result["exact_match"] == 1.0
    assert result["mean_field_accuracy"] == 1.0
    # Inner characters still count.
    wrong = dict(prediction, product="wireless-earbuds", order_id="ORD 482913")
    result = compute_extraction_metrics([json.dumps(wrong)], [compact(REFERENCE)])
    assert result["exact_match"] == 0.0
    assert result["field_accuracy/product"] == 0.0
    assert result["field_accuracy/order_id"] == 0.0
    assert result["mean_field_accuracy"] == 0.6


def test_null_versus_missing_key():
    reference = compact({"order_id": None, "action": "refund"})
    predictions = [
        '{"order_id": null, "action": "refund"}',  # null equals null
        '{"action": "refund"}',  # a missing key is not null
        '{"order_id": "null", "action": "refund"}',  # the string "null" is not null
        '{"order_id": "", "action": "refund"}',
    ]
    result = compute_extraction_metrics(predictions, [reference] * 4)
    assert result == {
        "valid_json_rate": 1.0,
        "exact_match": 0.25,
        "field_accuracy/order_id": 0.25,
        "field_accuracy/action": 1.0,
        "mean_field_accuracy": 0.625,
    }
    # A null answer where the reference has a value is wrong too.
    result = compute_extraction_metrics([json.dumps(dict(REFERENCE, product=None))], [compact(REFERENCE)])
    assert result["field_accuracy/product"] == 0.0


def test_numbers_compare_by_value_and_booleans_are_not_numbers():
    reference = compact({"count": 2, "flag": True})
    predictions = ['{"count": 2.0, "flag": true}', '{"count": "2", "flag": 1}', '{"count": 3, "flag": "true"}']
    result = compute_extraction_metrics(predictions, [reference] * 3)
    assert result["field_accuracy/count"] == 1 / 3
    assert result["field_accuracy/flag"] == 1 / 3
    assert result["exact_match"] == 1 / 3


def test_extra_keys_break_exact_match_but_not_field_accuracy():
    prediction = json.dumps(dict(REFERENCE, confidence="high"))
    result = compute_extraction_metrics([prediction], [compact(REFERENCE)])
    assert result["valid_json_rate"] == 1.0
    assert result["exact_match"] == 0.0
    assert result["mean_field_accuracy"] == 1.0
    assert "field_accuracy/confidence" not in result


def test_mixed_answers_hand_computed():
    references = [
        REFERENCE,
        {
            "order_id": "ORD-100200",
            "issue_type": "late_delivery",
            "priority": "low",
            "product": None,
            "action": "track",
        },
        {"order_id": None, "issue_type": "billing", "priority": "medium", "product": "phone case", "action": "refund"},
    ]
    predictions = [
        # Right after normalization: an exact match.
        json.dumps(dict(REFERENCE, priority="HIGH", product=" Wireless Earbuds")),
        # Wrong issue_type, product key missing.
        json.dumps({"order_id": "ORD-100200", "issue_type": "lost_package", "priority": "low", "action": "track"}),
        # Fenced; wrong priority; an extra key.
        "```json\n"
        + json.dumps(
            {
                "order_id": None,
                "issue_type": "billing",
                "priority": "high",
                "product": "Phone case",
                "action": "refund",
                "note": "x",
            }
        )
        + "\n```",
    ]
    result = compute_extraction_metrics(predictions, [compact(r) for r in references])
    assert field_accuracies(result) == {
        "order_id": 1.0,
        "issue_type": 2 / 3,
        "priority": 2 / 3,
        "product": 2 / 3,
        "action": 1.0,
    }
    assert result["valid_json_rate"] == 1.0
    assert result["exact_match"] == 1 / 3
    assert result["mean_field_accuracy"] == pytest.approx(0.8)

    # A fourth, unparseable answer is wrong on every field.
    result = compute_extraction_metrics(
        predictions + ["{order_id: ORD-1}"], [compact(r) for r in references + [REFERENCE]]
    )
    assert field_accuracies(result) == {
        "order_id": 0.75,
        "issue_type": 0.5,
        "priority": 0.5,
        "product": 0.5,
        "action": 0.75,
    }
    assert result["valid_json_rate"] == 0.75
    assert result["exact_match"] == 0.25
    assert result["mean_field_accuracy"] == pytest.approx(0.6)


def test_fields_come_from_the_union_of_references_in_first_seen_order():
    references = [compact({"b": "1", "a": "2"}), compact({"a": "2", "c": "3"})]
    predictions = [compact({"b": "1", "a": "2"}), compact({"a": "2", "c": "3"})]
    result = compute_extraction_metrics(predictions, references)
    assert list(field_accuracies(result)) == ["b", "a", "c"]
    # A key the reference lacks is right only when the answer lacks it too.
    assert result["mean_field_accuracy"] == 1.0
    result = compute_extraction_metrics([compact({"b": "1", "a": "2", "c": "3"}), predictions[1]], references)
    assert field_accuracies(result) == {"b": 1.0, "a": 1.0, "c": 0.5}
    assert result["exact_match"] == 0.5


def test_fields_argument_restricts_the_scored_fields():
    prediction = json.dumps(dict(REFERENCE, priority="low"))
    result = compute_extraction_metrics([prediction], [compact(REFERENCE)], fields=["order_id", "priority"])
    assert result == {
        "valid_json_rate": 1.0,
        "exact_match": 0.0,
        "field_accuracy/order_id": 1.0,
        "field_accuracy/priority": 0.0,
        "mean_field_accuracy": 0.5,
    }


def test_empty_input_raises():
    with pytest.raises(ValueError, match="zero examples"):
        compute_extraction_metrics([], [])
    # The module itself refuses too, for callers that use it through evaluate directly.
    with pytest.raises(ValueError):
        load_metric("json_fields").compute(predictions=[], references=[])


def test_bad_references_raise():
    with pytest.raises(ValueError, match="predictions"):
        compute_extraction_metrics(["{}"], ["{}", "{}"])
    with pytest.raises(ValueError, match="not a JSON object"):
        compute_extraction_metrics(["{}"], ["not json"])
    with pytest.raises(ValueError, match="not a JSON object"):
        score_example("{}", "[1]")


@pytest.mark.parametrize(("text", "valid"), TRICKY, ids=range(len(TRICKY)))
def test_parser_and_module_agree(module, text, valid):
    parsed = parse_json_object(text)
    assert (parsed is not None) is valid
    # NaN != NaN, so compare the parses through their JSON text.
    assert json.dumps(module.parse_json_object(text)) == json.dumps(parsed)
    result = compute_extraction_metrics([text], [compact({"a": "b"})])
    assert result["valid_json_rate"] == float(valid)
    assert score_example(text, compact({"a": "b"}))["valid_json"] is valid


def test_score_example_agrees_with_the_aggregate():
    references = [compact(REFERENCE)] * 5 + [compact({"order_id": None, "action": "refund"})]
    predictions = [
        compact(REFERENCE),
        json.dumps(dict(REFERENCE, priority="LOW")),
        "```json\n" + json.dumps(dict(REFERENCE, extra=1)) + "\n```",
        "Here you go: " + compact(REFERENCE),
        json.dumps({key: value for key, value in REFERENCE.items() if key != "product"}),
        '{"action": "Refund", "order_id": null}',
    ]
    result = compute_extraction_metrics(predictions, references)
    fields = list(field_accuracies(result))
    scores = [score_example(p, r, fields=fields) for p, r in zip(predictions, references, strict=True)]
    count = len(scores)
    assert result["valid_json_rate"] == sum(s["valid_json"] for s in scores) / count
    assert result["exact_match"] == sum(s["exact_match"] for s in scores) / count
    for field in fields:
        assert result[f"field_accuracy/{field}"] == sum(s["fields"][field] for s in scores) / count
    # Without `fields`, an example reports its own reference's keys.
    assert score_example(predictions[1], references[1]) == {
        "valid_json": True,
        "exact_match": False,
        "fields": {"order_id": True, "issue_type": True, "priority": False, "product": True, "action": True},
    }
    assert score_example("nope", references[0]) == {
        "valid_json": False,
        "exact_match": False,
        "fields": dict.fromkeys(FIELDS, False),
    }


def test_plain_exact_match_module():
    metric = load_metric("exact_match")
    predictions = ["Refund", " refund ", "repair"]
    references = ["refund"] * 3
    assert metric.compute(predictions=predictions, references=references) == {"exact_match": 0.0}
    assert metric.compute(predictions=predictions, references=references, ignore_case=True) == {"exact_match": 1 / 3}
    assert metric.compute(predictions=predictions, references=references, ignore_case=True, strip=True) == {
        "exact_match": 2 / 3
    }
    assert metric.compute(predictions=["refund"], references=["refund"]) == {"exact_match": 1.0}
    with pytest.raises(ValueError):
        metric.compute(predictions=[], references=[])

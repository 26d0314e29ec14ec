"""The metric registry: which numbers are scores, which way is better, which may promote."""

import pytest
from pydantic import ValidationError

from llm_lora.config import AUTO_PROMOTION_METRICS, GENERATION_FACTS, SCORES_BY_METRIC, RunConfig
from llm_lora import metric_registry
from llm_lora.metric_registry import (
    auto_promotion_metric, describe, is_promotable, is_quality, lower_is_better, ordered_scores, promotable_scores,
)


def test_the_config_names_are_the_registrys():
    assert SCORES_BY_METRIC is metric_registry.SCORES_BY_METRIC
    assert GENERATION_FACTS is metric_registry.GENERATION_FACTS
    assert AUTO_PROMOTION_METRICS is metric_registry.AUTO_PROMOTION_METRICS


def test_rates_of_bad_answers_and_costs_are_lower_is_better():
    for name in ("mean_latency_s", "classification_out_of_set_rate", "hit_cap_rate", "cut_short_rate"):
        assert lower_is_better(name), name
    for name in ("mean_field_accuracy", "field_accuracy/order_id", "rougeL", "valid_json_rate", "num_examples"):
        assert not lower_is_better(name), name


def test_only_higher_is_better_module_scores_may_promote():
    assert SCORES_BY_METRIC["json_fields"] == ("mean_field_accuracy", "exact_match", "valid_json_rate")
    assert SCORES_BY_METRIC["classification_accuracy"] == ("classification_accuracy", "classification_macro_f1")
    assert not describe("classification_out_of_set_rate").promotable and not describe("mean_latency_s").promotable
    assert is_promotable("field_accuracy/order_id", ["json_fields"])
    assert not is_promotable("field_accuracy/order_id", ["exact_match", "rouge"])
    assert promotable_scores(["json_fields", "exact_match"]) == ["mean_field_accuracy", "exact_match", "valid_json_rate"]


def test_auto_takes_the_first_known_primary_metric():
    assert auto_promotion_metric(["exact_match", "mean_field_accuracy"]) == "mean_field_accuracy"
    assert auto_promotion_metric(["rouge1", "exact_match"]) == "exact_match"
    assert auto_promotion_metric(["rougeL"]) is None


def test_quality_leaves_out_the_form_of_answers_and_the_facts():
    assert is_quality("exact_match") and is_quality("field_accuracy/priority") and is_quality("rougeL")
    assert not is_quality("valid_json_rate") and not is_quality("classification_out_of_set_rate")
    assert not is_quality("mean_latency_s")


def test_scores_come_headline_first_then_per_field_without_facts():
    metrics = {"valid_json_rate": 1.0, "exact_match": 0.5, "field_accuracy/a": 1.0, "mean_field_accuracy": 0.75,
               "num_examples": 4.0, "mean_latency_s": 0.2, "evaluation_fingerprint": "abc"}
    assert ordered_scores(metrics) == ["valid_json_rate", "exact_match", "mean_field_accuracy", "field_accuracy/a"]


def test_the_config_accepts_what_the_registry_promotes():
    def config(metrics, metric):
        return RunConfig.model_validate({"model": {"name": "org/model"}, "data": {"path": "data/support_emails"},
                                         "evaluation": {"metrics": metrics}, "promotion": {"metric": metric}})

    assert config(["rouge"], "rougeL").promotion.metric == "rougeL"
    assert config(["json_fields"], "field_accuracy/order_id").promotion.metric == "field_accuracy/order_id"
    with pytest.raises(ValidationError, match="auto needs one of mean_field_accuracy, classification_accuracy, exact"):
        config(["rouge"], "auto")
    with pytest.raises(ValidationError, match="'classification_out_of_set_rate' is not a score"):
        config(["classification_accuracy"], "classification_out_of_set_rate")

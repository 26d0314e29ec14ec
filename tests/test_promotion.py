"""The promotion gate on hand-made scores, and against an in-memory registry (no ZenML)."""

from datetime import datetime, timedelta, timezone

import pytest

from llm_lora.config import PromotionConfig
from llm_lora.promotion import GateScores, LockEntry, RegisteredVersion, decide_promotion, gate_scores, run_gate
from llm_lora.worth_it import ModelSummary, WorthItReport

GATE = dict(metric="mean_field_accuracy", min_gain_over_base=0.05, min_gain_over_production=0.0)


def test_first_version_promoted_when_clearly_better_than_base():
    decision = decide_promotion(candidate=0.93, base=0.12, production=None, **GATE)
    assert decision.promote
    assert "no production version" in decision.reason
    assert "0.9300" in decision.reason and "0.1200" in decision.reason


def test_not_promoted_below_margin_over_base():
    decision = decide_promotion(candidate=0.16, base=0.12, production=None, **GATE)
    assert not decision.promote
    assert "+0.0400" in decision.reason and "base model" in decision.reason


def test_tie_with_production_keeps_production_and_stages_the_candidate():
    decision = decide_promotion(candidate=0.93, base=0.12, production=0.93, **GATE)
    assert not decision.promote and decision.stage == "staging"
    assert "production (0.9300)" in decision.reason


def test_worse_than_production_not_promoted():
    decision = decide_promotion(candidate=0.90, base=0.12, production=0.95, **GATE)
    assert not decision.promote
    assert "-0.0500" in decision.reason


def test_better_than_production_promoted():
    decision = decide_promotion(candidate=0.97, base=0.12, production=0.95, **GATE)
    assert decision.promote
    assert decision.production == 0.95
    assert decision.as_metadata()["candidate"] == 0.97


@pytest.mark.parametrize("margin, promote", [(0.01, True), (0.03, False)])
def test_production_margin_is_respected(margin, promote):
    gate = {**GATE, "min_gain_over_production": margin}
    assert decide_promotion(candidate=0.97, base=0.1, production=0.95, **gate).promote is promote


def test_metadata_leaves_out_missing_production():
    metadata = decide_promotion(candidate=0.9, base=0.1, production=None, **GATE).as_metadata()
    assert "production" not in metadata and metadata["promote"] is True


def test_below_base_gets_no_stage():
    assert decide_promotion(candidate=0.1, base=0.12, production=0.9, **GATE).stage is None


def test_staging_can_be_switched_off():
    decision = decide_promotion(candidate=0.9, base=0.1, production=0.95, staging=False, **GATE)
    assert decision.stage is None and not decision.promote


def test_force_promote_overrides_the_numbers_and_says_so():
    decision = decide_promotion(candidate=0.05, base=0.12, production=0.95, force=True, **GATE)
    assert decision.promote and decision.stage == "production"
    assert decision.reason.startswith("forced into production (--force-promote)")
    assert "production 0.9500" in decision.reason


def test_first_version_goes_to_production_stage():
    assert decide_promotion(candidate=0.93, base=0.12, production=None, **GATE).stage == "production"


def test_gate_against_the_best_baseline_names_it():
    decision = decide_promotion(candidate=0.93, base=0.41, production=None, baseline="base model, 2-shot", **GATE)
    assert decision.promote and decision.baseline == "base model, 2-shot"
    assert "beats the best baseline (base model, 2-shot: 0.4100) by +0.5200" in decision.reason
    held = decide_promotion(candidate=0.44, base=0.41, production=None, baseline="base model, 2-shot", **GATE)
    assert not held.promote and "+0.0300 over the best baseline (base model, 2-shot: 0.4100)" in held.reason
    assert "baseline" not in decide_promotion(candidate=0.9, base=0.1, production=None, **GATE).as_metadata()


def test_a_gain_equal_to_the_margin_meets_it_despite_float_rounding():
    """0.30 - 0.25 is 0.04999999999999999 in floats: still the required +0.05 ("at least")."""
    assert 0.30 - 0.25 < 0.05
    assert decide_promotion(candidate=0.30, base=0.25, production=None, **GATE).promote
    # Against production the rule is "more than": a gain equal to the margin is a tie, also when rounded.
    strict = dict(GATE, min_gain_over_production=0.05)
    decision = decide_promotion(candidate=0.35, base=0.10, production=0.30, **strict)
    assert not decision.promote and decision.stage == "staging"


def test_a_score_that_is_not_a_number_promotes_nothing():
    nan = float("nan")
    decision = decide_promotion(candidate=nan, base=0.5, production=None, **GATE)
    assert not decision.promote and decision.stage is None and "not a number" in decision.reason
    assert not decide_promotion(candidate=0.6, base=nan, production=None, **GATE).promote
    # A production version scored NaN is not replaced on that number: the candidate is staged.
    decision = decide_promotion(candidate=0.6, base=0.4, production=nan, **GATE)
    assert not decision.promote and decision.stage == "staging"


class MemoryRegistry:
    """The `Registry` interface over a dict: what a store must do for the gate, nothing more."""

    def __init__(self, versions: dict[int, dict], production: int | None = None):
        self.versions = versions
        self.stages: dict[str, int] = {"production": production} if production is not None else {}
        self.lock: LockEntry | None = None
        self.lock_log: list[str] = []

    def version(self, number: int) -> RegisteredVersion:
        return RegisteredVersion(id=number, number=number, metrics=self.versions[number])

    def production(self):
        number = self.stages.get("production")
        return None if number is None else self.version(number)

    def set_stage(self, version, stage):
        self.stages[stage] = version.id

    def try_lock(self, holder):
        if self.lock is not None:
            return None
        self.lock = LockEntry(token=holder, created=datetime.now(timezone.utc), holder=holder)
        self.lock_log.append(f"take {holder}")
        return holder

    def lock_entry(self):
        return self.lock

    def unlock(self, token):
        if self.lock is not None and self.lock.token == token:
            self.lock_log.append(f"release {token}")
            self.lock = None


def _gate(registry, number, score, fingerprint="rows", reevaluate=None, **options):
    def never(production):
        raise AssertionError("production's stored score on the same rows counts: no re-scoring")

    return run_gate(registry, registry.version(number), "mean_field_accuracy", score, base=0.10,
                    fingerprint=fingerprint, reevaluate=reevaluate or never,
                    promotion=PromotionConfig(min_gain_over_base=0.05), **options)


def test_gate_promotes_the_first_version_and_releases_the_lock():
    registry = MemoryRegistry({1: {}})
    record = _gate(registry, 1, 0.9)
    assert record.new_stage == "production" and record.production_source == "no production version"
    # The model version's "promotion" metadata: no production score, so no such key (metadata takes no None).
    assert "production" not in record.as_metadata() and record.as_metadata()["new_stage"] == "production"
    assert registry.stages == {"production": 1}
    assert registry.lock is None and registry.lock_log == ["take version 1", "release version 1"]


def test_gate_uses_productions_stored_score_on_identical_rows():
    registry = MemoryRegistry({1: {"mean_field_accuracy": 0.95, "evaluation_fingerprint": "rows"}, 2: {}},
                              production=1)
    record = _gate(registry, 2, 0.9)
    assert record.new_stage == "staging" and record.production == 0.95
    assert record.production_source == "version 1, stored score on identical test rows"
    assert registry.stages == {"production": 1, "staging": 2}


def test_gate_re_scores_production_on_other_rows():
    registry = MemoryRegistry({1: {"mean_field_accuracy": 0.99, "evaluation_fingerprint": "old rows"}, 2: {}},
                              production=1)
    asked = []

    def reevaluate(production):
        asked.append(production.number)
        return {"mean_field_accuracy": 0.5, "num_examples": 10}

    record = _gate(registry, 2, 0.9, reevaluate=reevaluate)
    assert asked == [1]
    assert record.new_stage == "production" and record.production == 0.5
    assert record.production_source == "version 1, re-evaluated on this run's test rows"
    assert registry.stages == {"production": 2}


def test_gate_never_compares_a_version_with_itself():
    registry = MemoryRegistry({1: {"mean_field_accuracy": 0.9, "evaluation_fingerprint": "rows"}}, production=1)
    assert _gate(registry, 1, 0.9).production_source == "no production version"


def test_gate_promotes_nothing_when_the_scores_measure_nothing():
    registry = MemoryRegistry({1: {}})
    record = _gate(registry, 1, 0.9, unmeasured="answers cut short by the cap")
    assert record.new_stage == "none" and record.reason.startswith("inconclusive")
    assert registry.stages == {}


def test_gate_waits_for_a_held_lock_and_gives_up_after_its_timeout():
    registry = MemoryRegistry({1: {}})
    registry.lock = LockEntry(token="other", created=datetime.now(timezone.utc), holder="version 7")
    with pytest.raises(TimeoutError, match=r"locked by another run \(version 7\)"):
        _gate(registry, 1, 0.9, lock_timeout_s=0.2)
    assert registry.stages == {} and registry.lock.holder == "version 7"


def test_gate_breaks_an_abandoned_lock():
    registry = MemoryRegistry({1: {}})
    registry.lock = LockEntry(token="dead", created=datetime.now(timezone.utc) - timedelta(hours=2), holder="gone")
    assert _gate(registry, 1, 0.9).new_stage == "production"
    assert registry.lock is None


def test_gate_scores_against_the_best_baseline():
    few_shot = ModelSummary(name="few_shot", label="base model, 3-shot", primary_metric=0.4,
                            quality={"mean_field_accuracy": 0.4}, valid_output_rate=1.0, prompt_tokens=300.0,
                            generated_tokens=30.0, latency_s=0.5, hit_cap=0, cut_short=0, max_new_tokens=64)
    # The gate reads only the best baseline's row: the report's other fields are left out.
    worth_it = WorthItReport.model_construct(best_baseline="few_shot", models=[few_shot])
    promotion = PromotionConfig(must_beat="best_baseline")
    scores = gate_scores(promotion, {"mean_field_accuracy": 0.1}, {"mean_field_accuracy": 0.8}, worth_it)
    assert scores == GateScores("mean_field_accuracy", 0.8, 0.4, "base model, 3-shot")
    with pytest.raises(ValueError, match="promotion.metric: 'rouge_l' not among the finetuned metrics"):
        gate_scores(PromotionConfig(metric="rouge_l"), {"rouge_l": 0.1}, {"exact_match": 0.8}, worth_it)

"""The promotion gate on hand-made scores."""

import pytest

from llm_lora.promotion import decide_promotion

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

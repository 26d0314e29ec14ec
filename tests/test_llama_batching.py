"""Continuous batching in llama.cpp: concurrent answers equal one-at-a-time answers; short ones leave first."""

import pytest

from llm_lora.batching import ContinuousBatcher
from llm_lora.generation import shared_prefix_length
from llm_lora.gguf_export import LlamaCppEngine
from llm_lora.prompt_formatting import format_prompt
from tests.conftest import submit_together

pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs requirements-export.txt")
from llm_lora.llama_slots import LlamaCppSlots  # noqa: E402


@pytest.fixture(scope="module")
def prompts(tokenizer, support_rows):
    return [format_prompt(tokenizer, row["prompt"], "Extract the fields as JSON.")
            for row in support_rows["test"][:8]]


def _batcher(path, slots=4, context=1024, cap=24, max_queue=64, prompt_cache=False):
    return ContinuousBatcher(LlamaCppSlots(path, context=context, slots=slots, prompt_cache=prompt_cache),
                             max_new_tokens=cap, max_queue=max_queue)


def test_concurrent_answers_equal_one_at_a_time_answers(tiny_q8, prompts):
    # prompt_cache=False: a kept prompt start was computed beside other sequences and can tip a near-tie.
    batcher = _batcher(tiny_q8)
    try:
        alone = [batcher.submit([prompt]).result(120).generations[0] for prompt in prompts]
        together = submit_together(batcher, prompts)
        in_one_request = batcher.submit(prompts).result(120).generations  # 8 inputs over 4 slots
    finally:
        batcher.close()
        batcher.engine.close()
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.text for g in in_one_request] == [g.text for g in alone]
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]
    # The same answers as the export's parity check, which decodes one prompt at a time with llama_cpp.Llama.
    engine = LlamaCppEngine(tiny_q8, 1024)
    try:
        reference = [engine.answer(engine.tokenize(prompt), 24) for prompt in prompts]
    finally:
        engine.close()
    assert [g.text for g in alone] == [g.text for g in reference]
    assert [g.hit_cap for g in alone] == [g.hit_cap for g in reference]


def test_the_prompt_cache_reads_a_shared_start_once_per_slot(tiny_q8, prompts):
    answers = {}
    for prompt_cache in (True, False):
        batcher = _batcher(tiny_q8, slots=2, prompt_cache=prompt_cache)
        try:
            answers[prompt_cache] = [batcher.submit([prompt]).result(120).generations[0].text for prompt in prompts]
            cached = batcher.engine.cached_tokens
            shared = shared_prefix_length([batcher.engine.tokenize(prompt) for prompt in prompts])
        finally:
            batcher.close()
            batcher.engine.close()
        if prompt_cache:
            # One at a time, every prompt after the first finds the shared start in the slot it takes.
            assert cached >= (len(prompts) - 1) * shared > 0
        else:
            assert cached == 0
    # One request at a time the kept start was computed alone too, and the answers are the same.
    assert answers[True] == answers[False]


def test_a_short_answer_leaves_before_a_long_one_started_earlier(tiny_q8, prompts):
    batcher = _batcher(tiny_q8, slots=2, cap=40)
    finished = []
    try:
        long = batcher.submit([prompts[0]])
        long.add_done_callback(lambda _: finished.append("long"))
        short = batcher.submit([prompts[1]], max_new_tokens=2)
        short.add_done_callback(lambda _: finished.append("short"))
        short_answer, long_answer = short.result(120).generations[0], long.result(120).generations[0]
    finally:
        batcher.close()
        batcher.engine.close()
    assert short_answer.new_tokens <= 2 < long_answer.new_tokens
    assert finished == ["short", "long"]


def test_a_prompt_too_long_for_its_slot_fails_alone(tiny_q8, prompts):
    batcher = _batcher(tiny_q8, slots=2, context=160, cap=8)
    try:
        too_long = batcher.submit([prompts[0], prompts[0] + " more" * 200])
        fine = batcher.submit([prompts[1]])
        with pytest.raises(ValueError, match=r"input 1: the prompt \(\d+ tokens\) and max_new_tokens \(8\) exceed "
                                             r"the 160-token context"):
            too_long.result(120)
        assert fine.result(120).generations[0].new_tokens >= 1
        assert batcher.submit([prompts[2]]).result(120).generations[0].new_tokens >= 1  # the slots were freed
    finally:
        batcher.close()
        batcher.engine.close()


def test_closing_mid_answer_fails_the_request_at_once(tiny_q8, prompts):
    batcher = _batcher(tiny_q8, slots=1, cap=500)
    try:
        answering = batcher.submit([prompts[0]])
        waiting = batcher.submit([prompts[1]])
        batcher.close()
        for future in (answering, waiting):
            with pytest.raises(RuntimeError, match="the model is shutting down"):
                future.result(30)
    finally:
        batcher.close()
        batcher.engine.close()

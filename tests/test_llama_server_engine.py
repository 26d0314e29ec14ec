"""deploy.engine: llama-server: llama.cpp's own server behind the project's queue, started and supervised by it.

The same GGUF in the in-process llama.cpp engine is the reference: the same prompts give the same
answers and token counts; the queue's limit, a prompt too long for a slot and a server that dies
are each one clear outcome, and the server goes on answering.
"""

import os
import signal
import threading
import time

import pytest

from llm_lora.batching import ContinuousBatcher, QueueFull
from llm_lora.prompt_formatting import format_prompt
from tests.conftest import submit_together

pytest.importorskip("llama_cpp", reason="the GGUF engines need requirements-export.txt")
from llm_lora.llama_server import ServerBatcher  # noqa: E402
from llm_lora.llama_slots import LlamaCppSlots  # noqa: E402

pytestmark = pytest.mark.slow  # builds llama-server once (minutes), starts it per test


@pytest.fixture(scope="module")
def prompts(tokenizer, support_rows):
    return [format_prompt(tokenizer, row["prompt"], "Extract the fields as JSON.")
            for row in support_rows["test"][:8]]


def _server(binary, gguf, tmp_path, slots=4, cap=24, max_queue=64, context=1024):
    return ServerBatcher(binary, gguf, slots=slots, context=context, max_new_tokens=cap, max_queue=max_queue,
                         threads=2, prompt_cache=False, log=tmp_path / "llama-server.log")


def test_concurrent_answers_equal_the_in_process_engines(llama_server_binary, tiny_q8, prompts, tmp_path):
    server = _server(llama_server_binary, tiny_q8, tmp_path)
    try:
        together = submit_together(server, prompts)
        in_one_request = server.submit(prompts).result(120).generations  # 8 inputs over 4 slots
    finally:
        server.close()
    batcher = ContinuousBatcher(LlamaCppSlots(tiny_q8, context=1024, slots=4, prompt_cache=False),
                                max_new_tokens=24, max_queue=64)
    try:
        reference = batcher.submit(prompts).result(120).generations
    finally:
        batcher.close()
        batcher.engine.close()
    assert [g.text for g in together] == [g.text for g in reference]
    assert [g.text for g in in_one_request] == [g.text for g in reference]
    assert [(g.new_tokens, g.prompt_tokens, g.hit_cap) for g in together] == [
        (g.new_tokens, g.prompt_tokens, g.hit_cap) for g in reference]


def test_the_queue_limit_and_a_prompt_too_long_are_refused_and_it_goes_on(llama_server_binary, tiny_q8, prompts,
                                                                            tmp_path):
    server = _server(llama_server_binary, tiny_q8, tmp_path, slots=1, cap=160, max_queue=2, context=256)
    try:
        first = server.submit([prompts[0]])
        deadline = time.monotonic() + 30
        while server.waiting and time.monotonic() < deadline:  # the first one is at the server
            time.sleep(0.01)
        waiting = server.submit([prompts[1], prompts[2]], max_new_tokens=8)
        with pytest.raises(QueueFull, match=r"2 prompts are waiting \(limit 2\); retry in \d+ s"):
            server.submit([prompts[3]])
        server.cancel(waiting)  # a caller that went away leaves the queue
        assert waiting.cancelled() and server.waiting == 0
        with pytest.raises(ValueError, match=r"input 0: the prompt \(\d+ tokens\) and max_new_tokens \(160\) exceed "
                                             r"the 256-token context"):
            server.submit([prompts[0] * 3]).result(120)
        assert first.result(120).generations[0].text
    finally:
        server.close()


def test_a_server_that_dies_fails_its_answers_in_one_line_and_is_started_again(llama_server_binary, tiny_q8, prompts,
                                                                               tmp_path):
    server = _server(llama_server_binary, tiny_q8, tmp_path, slots=1, cap=400)
    try:
        heard = threading.Event()
        broken = server.submit([prompts[0]], on_text=lambda index, piece: heard.set())
        assert heard.wait(60), "no token streamed"
        pid = server.server.process.pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"^llama-server exited \(-9\): .*; started it again$"):
            broken.result(120)
        assert server.restarts == 1 and server.server.process.pid != pid
        assert server.submit([prompts[1]], max_new_tokens=8).result(120).generations[0].new_tokens > 0
    finally:
        server.close()
    assert server.server.process.poll() is not None  # closing stops the server too

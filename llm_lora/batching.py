"""Answering concurrent requests together: a bounded queue in front of one generating thread.

A request is a list of formatted prompts; `submit` queues them and returns a future of their
answers. One worker thread owns the model and generates:

- `ContinuousBatcher` (llama.cpp, `LlamaCppSlots`): prompts join free slots between decode
  steps and each answer leaves when it ends, so a short answer never waits for a long one.
- `WindowBatcher` (transformers): prompts that arrive within a short window are generated
  as one batch (`llm_lora.generation.generate`: one padded batch, each row cut at its own
  end-of-turn).

Past `max_queue` waiting prompts, `submit` refuses at once with `QueueFull`, which says how
long the queue should take to drain: a caller gets "come back later" instead of an answer
that arrives after it has given up.

A request may stream (`on_text` hears each prompt's answer grow: token by token in llama.cpp,
whole when a transformers batch ends), carry a grammar (llama.cpp only), and be cancelled
(a client that went away): its prompts leave the queue, and in llama.cpp its slots are freed
before the next decode step.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from llm_lora.generation import Generation

# Called with (prompt index, text added to that answer), from the generating thread.
OnText = Callable[[int, str], None]


class StreamText:
    """An answer's text as it grows, handed on in pieces that join to the finished answer's text.

    The finished text is stripped (as `Generation.text`), so leading whitespace and whitespace at the
    end are held back until text follows them; so is a character whose bytes have not all arrived.
    """

    def __init__(self) -> None:
        self.sent = ""

    def update(self, text: str) -> str:
        """The piece to send now, given the whole answer so far."""
        stable = text.lstrip().rstrip().removesuffix("\ufffd").rstrip()
        if not stable.startswith(self.sent):  # a rare re-tokenization of the tail: wait for the end
            return ""
        piece = stable[len(self.sent):]
        self.sent = stable
        return piece

    def finish(self, text: str) -> str:
        """The rest of the finished answer (its text already stripped)."""
        piece = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text
        return piece


class QueueFull(Exception):
    """The queue holds `max_queue` prompts already; `retry_after_s` is its expected drain time."""

    def __init__(self, waiting: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} prompts are waiting (limit {limit}); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class Answers:
    """A request's answers, in its prompts' order, and how long it waited for the model."""

    generations: list[Generation]
    queue_s: float


@dataclass(eq=False)
class _Request:
    prompts: list[str]
    max_new_tokens: int
    future: Future
    enqueued: float
    started: float | None = None
    answers: list[Generation | None] = field(default_factory=list)
    remaining: int = 0
    grammar: str | None = None
    on_text: OnText | None = None
    streams: list[StreamText] = field(default_factory=list)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.prompts)
        self.remaining = len(self.prompts)
        self.streams = [StreamText() for _ in self.prompts] if self.on_text is not None else []

    def grew(self, index: int, text: str) -> None:
        """The answer to prompt `index` is `text` so far: hand on what is new."""
        if self.cancelled:
            return
        piece = self.streams[index].update(text)
        if piece:
            self.on_text(index, piece)

    def done(self, index: int, generation: Generation) -> bool:
        if self.cancelled:
            return False
        if self.on_text is not None:
            piece = self.streams[index].finish(generation.text)
            if piece:
                self.on_text(index, piece)
        self.answers[index] = generation
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            queue_s = (self.started if self.started is not None else self.enqueued) - self.enqueued
            self.future.set_result(Answers(self.answers, queue_s))  # type: ignore[arg-type]
            return True
        return False

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Batcher:
    """The queue, its limit and the worker thread; subclasses generate."""

    def __init__(self, max_new_tokens: int, max_queue: int, name: str) -> None:
        self.max_new_tokens = max_new_tokens
        self.max_queue = max_queue
        self._waiting: deque[tuple[_Request, int]] = deque()  # (request, prompt index)
        self._condition = threading.Condition()
        self._closed = False
        self._finished: deque[float] = deque(maxlen=256)  # when recent prompts were answered (drain rate)
        self._requests: dict[Future, _Request] = {}  # requests not yet answered, for cancel()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    supports_grammar = False

    def submit(self, prompts: list[str], max_new_tokens: int | None = None, grammar: str | None = None,
               on_text: OnText | None = None) -> Future:
        """Queue a request's prompts; the future gives `Answers`.

        Args:
            prompts: Formatted prompts.
            max_new_tokens: A lower cap for this request's answers (None or higher: the batcher's).
            grammar: A GBNF grammar every answer must follow (llama.cpp only).
            on_text: Called from the generating thread with (prompt index, text added) as answers grow.

        Raises:
            QueueFull: Taking them would put more than `max_queue` prompts in the queue.
            RuntimeError: The batcher was closed.
            ValueError: A grammar for an engine without constrained decoding.
        """
        if grammar is not None and not self.supports_grammar:
            raise ValueError("constrained decoding needs the llama.cpp engine")
        cap = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        request = _Request(list(prompts), cap, Future(), time.perf_counter(), grammar=grammar, on_text=on_text)
        with self._condition:
            if self._closed:
                raise RuntimeError("the model is shutting down")
            if len(self._waiting) + len(prompts) > self.max_queue:
                raise QueueFull(len(self._waiting), self.max_queue, self.drain_time())
            self._waiting.extend((request, index) for index in range(len(prompts)))
            self._requests[request.future] = request
            self._condition.notify()
        request.future.add_done_callback(self._forget)
        return request.future

    def _forget(self, future: Future) -> None:
        with self._condition:
            self._requests.pop(future, None)

    def cancel(self, future: Future) -> None:
        """Give up a request (its caller went away): its waiting prompts leave the queue, and prompts being
        answered stop at the next step where the engine allows it. The future ends cancelled."""
        with self._condition:
            request = self._requests.pop(future, None)
            if request is None:
                return
            request.cancelled = True
            self._waiting = deque(item for item in self._waiting if item[0] is not request)
            self._condition.notify()
        future.cancel()

    @property
    def waiting(self) -> int:
        """Prompts queued and not yet generating."""
        return len(self._waiting)

    def drain_time(self) -> int:
        """Seconds until the prompts waiting now are answered, at the recent answer rate (at least 1)."""
        # Before any answer, a second per waiting prompt is a safe guess.
        waiting = len(self._waiting)
        if len(self._finished) >= 2 and self._finished[-1] > self._finished[0]:
            rate = (len(self._finished) - 1) / (self._finished[-1] - self._finished[0])
        else:
            rate = 1.0
        return max(1, math.ceil(waiting / rate))

    def _wait_for_prompts(self) -> bool:
        """Holding `_condition`: wait until a prompt waits or the batcher closes; False once it is closed."""
        while not self._closed and not self._waiting:
            self._condition.wait()
        return not self._closed

    def _record(self, request: _Request, index: int, generation: Generation) -> None:
        self._finished.append(time.perf_counter())
        request.done(index, generation)

    def close(self) -> None:
        """Stop the worker; queued requests fail with RuntimeError."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout=60)

    def _fail_waiting(self, error: BaseException) -> None:
        with self._condition:
            while self._waiting:
                self._waiting.popleft()[0].fail(error)

    def _run(self) -> None:
        raise NotImplementedError


class ContinuousBatcher(Batcher):
    """Continuous batching over `LlamaCppSlots`: prompts take free slots between decode steps.

    Args:
        engine: A `LlamaCppSlots` (used by the worker thread only).
        max_new_tokens: Cap on each answer.
        max_queue: Prompts that may wait for a slot.
    """

    supports_grammar = True

    def __init__(self, engine, max_new_tokens: int, max_queue: int) -> None:
        self.engine = engine
        super().__init__(max_new_tokens, max_queue, "llama.cpp-batcher")

    def _run(self) -> None:
        engine = self.engine
        generating: set[_Request] = set()
        try:
            while True:
                admitted: list[tuple[_Request, int]] = []
                with self._condition:
                    while not self._closed and not self._waiting and not engine.busy:
                        self._condition.wait()
                    if self._closed:
                        break
                    while self._waiting and len(admitted) < engine.free_slots:
                        admitted.append(self._waiting.popleft())
                    gone = [request for request in generating if request.cancelled]
                for request in gone:  # a caller that went away frees its slots before the next step
                    engine.cancel({(request, index) for index in range(len(request.prompts))})
                    generating.discard(request)
                now = time.perf_counter()
                for request, index in admitted:
                    if request.future.done() or request.cancelled:  # an earlier prompt of it failed, or it left
                        continue
                    if request.started is None:
                        request.started = now
                    generating.add(request)
                    grew = (lambda tokens, request=request, index=index:
                            request.grew(index, engine.detokenize(tokens))) if request.on_text else None
                    try:
                        engine.admit((request, index), engine.tokenize(request.prompts[index]), request.max_new_tokens,
                                     grammar=request.grammar, on_token=grew)
                    except ValueError as exc:  # too long for the context, or a bad grammar: this request only
                        engine.cancel({(request, other) for other in range(len(request.prompts))})
                        request.fail(ValueError(f"input {index}: {exc}"))
                if engine.busy:
                    for (request, index), generation in engine.step():
                        self._record(request, index, generation)
                # A cancelled request stays until the top of the loop has freed its slots.
                generating.difference_update({r for r in generating if r.future.done() and not r.cancelled})
        except BaseException as exc:  # the engine broke: no later request can be answered either
            self._closed = True
            error = RuntimeError(f"llama.cpp stopped answering: {exc}")
            for request in generating:
                request.fail(error)
            self._fail_waiting(error)
            raise
        finally:
            stopped = RuntimeError("the model is shutting down")
            for request in generating:  # closed mid-answer: their callers hear it now, not at their timeout
                request.fail(stopped)
            self._fail_waiting(stopped)


class WindowBatcher(Batcher):
    """Batches for a whole-batch generator: prompts that arrive within `window_s` go together.

    Args:
        generate: Formatted prompts and a cap to their answers, in order (one call per batch).
        max_batch: Most prompts in one call.
        window_s: How long the first waiting prompt waits for others.
        max_new_tokens: Cap on each answer.
        max_queue: Prompts that may wait.
    """

    def __init__(self, generate: Callable[[list[str], int], list[Generation]], max_batch: int, window_s: float,
                 max_new_tokens: int, max_queue: int) -> None:
        self.generate = generate
        self.max_batch = max_batch
        self.window_s = window_s
        super().__init__(max_new_tokens, max_queue, "generate-batcher")

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    if not self._wait_for_prompts():
                        break
                    deadline = self._waiting[0][0].enqueued + self.window_s
                    while not self._closed and len(self._waiting) < self.max_batch:
                        left = deadline - time.perf_counter()
                        if left <= 0:
                            break
                        self._condition.wait(left)
                    batch = self._take_batch()
                now = time.perf_counter()
                for request, _ in batch:
                    if request.started is None:
                        request.started = now
                try:
                    generations = self.generate([request.prompts[index] for request, index in batch],
                                                batch[0][0].max_new_tokens)
                except Exception as exc:  # this batch's requests fail; the next batch is tried afresh
                    for request, _ in batch:
                        request.fail(exc)
                    continue
                for (request, index), generation in zip(batch, generations):
                    if not request.cancelled:
                        self._record(request, index, generation)
        finally:
            self._fail_waiting(RuntimeError("the model is shutting down"))

    def _take_batch(self) -> list[tuple[_Request, int]]:
        # One generate call has one cap: the oldest prompt's, and the waiting prompts that share it.
        cap = self._waiting[0][0].max_new_tokens
        batch, rest = [], deque()
        while self._waiting:
            item = self._waiting.popleft()
            (batch if len(batch) < self.max_batch and item[0].max_new_tokens == cap else rest).append(item)
        self._waiting = rest
        return batch

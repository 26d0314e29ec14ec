"""Continuous batching in llama.cpp: many greedy answers decoded together, each ending on its own.

One llama.cpp context holds `slots` sequences, each with its own `context` tokens of KV
cache. Every step is one `llama_decode` call holding the next token of every sequence that
is answering and, in the room left, the next chunk of any prompt still being read. A
sequence that reaches an end-of-generation token (or its cap) frees its slot at once and
a waiting prompt takes it in the next step, so a short answer never waits for a long one
(llama.cpp's own server schedules its slots the same way).

A slot keeps the KV cache of its last sequence when it frees, and a new prompt takes the free
slot whose kept tokens share the longest start with it: the prompts of one deployment share
their system prompt and chat markup, so that start is read once per slot, not once per request
(llama.cpp's server calls this prompt caching). The kept start was computed in another step,
with another batch around it, and llama.cpp's kernels round a little differently by batch
shape: at a near-tie, an answer can then depend on what its slot held before. With
`prompt_cache=False` every prompt is read whole from its first token, and an answer from a
quantized file is the same alone or in company.

Decoding is greedy (the arg-max of each sequence's logits), as `LlamaCppEngine.answer`,
and prompts are the formatted texts tokenized by the file's own tokenizer. A sequence may
carry a grammar (llama.cpp's GBNF, e.g. from a JSON schema): its tokens are then the
arg-max among those the grammar allows, through llama.cpp's own grammar sampler. A sequence
may also carry a callback that sees its answer grow token by token (a streamed answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_lora.cpu import cpu_threads
from llm_lora.generation import Generation, shared_prefix_length

_backend_ready = False


@dataclass
class _Sequence:
    key: object
    prompt: list[int]
    cap: int
    started: float
    read: int = 0  # prompt tokens decoded so far
    answer: list[int] = field(default_factory=list)
    sampler: object = None  # llama.cpp's grammar + greedy sampler chain, for a constrained answer
    on_token: object = None  # called with the answer's tokens so far after each new one


class LlamaCppSlots:
    """A GGUF file in one llama.cpp context that decodes up to `slots` answers at a time.

    Not thread-safe: one thread admits and steps (see `llm_lora.batching.ContinuousBatcher`).

    Args:
        path: A GGUF file.
        context: Tokens of KV cache per sequence (prompt + answer).
        slots: Sequences decoded together.
        threads: CPU threads (default: llm_lora.cpu.cpu_threads()).
        batch_tokens: Most tokens in one decode call (answer tokens first, then prompt chunks).
        prompt_cache: Reuse a slot's kept start of the prompt (see the module docstring).
    """

    def __init__(self, path: Path, context: int, slots: int, threads: int | None = None,
                 batch_tokens: int = 512, prompt_cache: bool = True) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose
        from llama_cpp._utils import suppress_stdout_stderr

        set_verbose(False)  # llama.cpp's load and context logs: errors only, as llama_cpp.Llama(verbose=False)
        global _backend_ready
        if not _backend_ready:
            with suppress_stdout_stderr(disable=False):
                llama_cpp.llama_backend_init()
            _backend_ready = True
        threads = threads or cpu_threads()
        self._lib = llama_cpp
        self.path = Path(path)
        self.context = context
        self.slots = slots
        self.prompt_cache = prompt_cache
        self._model = _internals.LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                                            verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context * slots
        params.n_batch = params.n_ubatch = max(batch_tokens, slots)
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = threads
        # Each sequence its own `context` cells: its attention never spans (masked) cells of the others, so
        # with quantized weights (exact integer dot products) its answer does not depend on its company.
        params.kv_unified = False
        # As llama_cpp.Llama (LlamaCppEngine, the export's parity check): the same attention kernels, the same numbers.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._context = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch_tokens = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._batch_tokens, 0, 1)
        self._vocab = self._model.vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._free = list(range(slots))
        self._active: dict[int, _Sequence] = {}  # by slot, in admission order
        self._held: list[list[int]] = [[] for _ in range(slots)]  # the tokens each slot's KV cache holds
        self.cached_tokens = 0  # prompt tokens taken from a slot's kept start instead of read again

    def tokenize(self, text: str) -> list[int]:
        """A formatted prompt in the file's tokens (special tokens parsed, no BOS added: the prompt carries it)."""
        return self._model.tokenize(text.encode(), add_bos=False, special=True)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def admit(self, key: object, ids: list[int], max_new_tokens: int, grammar: str | None = None,
              on_token=None) -> None:
        """Start answering a prompt in a free slot; its answer comes back from `step` under `key`.

        Args:
            key: What `step` returns the answer under.
            ids: The prompt's tokens.
            max_new_tokens: Cap on the answer.
            grammar: A GBNF grammar (root rule `root`) the answer must follow, or None.
            on_token: Called with the answer's tokens so far each time one is added, or None.

        Raises:
            ValueError: The prompt and its cap do not fit a sequence's context, or the grammar does not parse.
            RuntimeError: No slot is free.
        """
        if len(ids) + max_new_tokens > self.context:
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens ({max_new_tokens}) exceed "
                             f"the {self.context}-token context")
        if not ids:
            raise ValueError("an empty prompt")
        if not self._free:
            raise RuntimeError("no free slot")
        slot = max(self._free, key=lambda free: shared_prefix_length([self._held[free], ids]))
        self._free.remove(slot)
        # At least the prompt's last token is decoded again: its logits give the first answer token.
        keep = shared_prefix_length([self._held[slot], ids]) if self.prompt_cache else 0
        if not self._lib.llama_memory_seq_rm(self._context.memory, slot, keep, -1):
            keep = 0
            self._lib.llama_memory_seq_rm(self._context.memory, slot, -1, -1)
        self._held[slot] = list(ids[:keep])
        self.cached_tokens += keep
        sampler = self._grammar_sampler(grammar) if grammar else None
        self._active[slot] = _Sequence(key, list(ids), max_new_tokens, time.perf_counter(), read=keep,
                                       sampler=sampler, on_token=on_token)

    def _grammar_sampler(self, grammar: str):
        """llama.cpp's grammar sampler followed by greedy: the arg-max of the tokens the grammar allows."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        constraint = lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not constraint:
            lib.llama_sampler_free(chain)
            raise ValueError("the grammar does not parse")
        lib.llama_sampler_chain_add(chain, constraint)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain

    def step(self) -> list[tuple[object, Generation]]:
        """Decode one step for every admitted sequence; returns the answers that ended in it."""
        lib, batch = self._lib, self._batch
        count = 0
        sampled: list[tuple[int, int]] = []  # (batch index whose logits to read, slot)

        def add(token: int, position: int, slot: int, logits: bool) -> None:
            nonlocal count
            batch.token[count] = token
            batch.pos[count] = position
            batch.n_seq_id[count] = 1
            batch.seq_id[count][0] = slot
            batch.logits[count] = logits
            self._held[slot].append(token)
            count += 1

        for slot, sequence in self._active.items():
            if sequence.read == len(sequence.prompt):
                add(sequence.answer[-1], len(sequence.prompt) + len(sequence.answer) - 1, slot, True)
                sampled.append((count - 1, slot))
        for slot, sequence in self._active.items():
            if sequence.read < len(sequence.prompt) and count < self._batch_tokens:
                end = min(len(sequence.prompt), sequence.read + self._batch_tokens - count)
                for position in range(sequence.read, end):
                    add(sequence.prompt[position], position, slot, position == len(sequence.prompt) - 1)
                sequence.read = end
                if end == len(sequence.prompt):
                    sampled.append((count - 1, slot))
        if not count:
            return []
        batch.n_tokens = count
        status = lib.llama_decode(self._context.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} ({self.path.name})")
        ended = []
        for index, slot in sampled:
            sequence = self._active[slot]
            if sequence.sampler is not None:  # samples and accepts: the grammar follows the answer
                token = int(lib.llama_sampler_sample(sequence.sampler, self._context.ctx, index))
            else:
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._context.ctx, index),
                                               shape=(self._n_vocab,))
                token = int(logits.argmax())
            finished = bool(lib.llama_vocab_is_eog(self._vocab, token))
            if not finished:
                sequence.answer.append(token)
                if sequence.on_token is not None:
                    sequence.on_token(sequence.answer)
            if finished or len(sequence.answer) >= sequence.cap:
                ended.append((sequence.key, self._generation(sequence, finished)))
                self._release(slot)
        return ended

    def detokenize(self, tokens: list[int]) -> str:
        """Answer tokens as text; undecodable bytes (a character split over the cap) become U+FFFD, as
        transformers decodes them."""
        return self._model.detokenize(tokens, special=False).decode("utf-8", errors="replace")

    def _generation(self, sequence: _Sequence, finished: bool) -> Generation:
        text = self.detokenize(sequence.answer).strip()
        return Generation(text=text, new_tokens=len(sequence.answer) + (1 if finished else 0),
                          prompt_tokens=len(sequence.prompt), latency_s=time.perf_counter() - sequence.started,
                          hit_cap=not finished)

    def _release(self, slot: int) -> None:
        sequence = self._active.pop(slot)  # its KV cache stays, for a next prompt that starts the same way
        if sequence.sampler is not None:
            self._lib.llama_sampler_free(sequence.sampler)
        self._free.append(slot)

    def cancel(self, keys: set) -> None:
        """Drop the admitted sequences under these keys (their answers are no longer wanted)."""
        for slot in [slot for slot, sequence in self._active.items() if sequence.key in keys]:
            self._release(slot)

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()
        self._model.close()

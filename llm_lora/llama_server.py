"""llama.cpp's own server, `llama-server`, built from the llama.cpp tree llama-cpp-python ships, and run on a GGUF.

llama-cpp-python's source distribution carries llama.cpp's whole tree (`vendor/llama.cpp`), its
HTTP server (`tools/server`) included. The first call builds `llama-server` from it with cmake
(a few minutes on 2 cores), the same llama.cpp and the same native CPU flags as the installed
llama-cpp-python, and keeps the binary in `model_loading.cache_dir()`; later calls take it from
there. `LLM_LORA_LLAMA_SERVER` may name a binary built elsewhere.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from llm_lora.batching import Batcher
from llm_lora.cpu import cpu_threads
from llm_lora.generation import Generation
from llm_lora.gguf_export import ExportError, llama_cpp_version
from llm_lora.model_loading import cache_dir

SERVER_ENV = "LLM_LORA_LLAMA_SERVER"
BINARY = "llama-server"


def server_binary(jobs: int | None = None) -> Path:
    """The llama-server binary: `$LLM_LORA_LLAMA_SERVER`, else the cached build, else built now.

    Raises:
        ExportError: No llama-cpp-python, no source distribution reachable, or the build failed (one line).
    """
    binary = ready_binary()
    if binary is None:
        binary = cached_binary_path()
        build_server(llama_cpp_version(), binary, jobs)
    return binary


def ready_binary() -> Path | None:
    """`$LLM_LORA_LLAMA_SERVER` or the cached build, or None when one must be built first.

    Raises:
        ExportError: `$LLM_LORA_LLAMA_SERVER` names no file, or there is no llama-cpp-python to build from.
    """
    named = os.environ.get(SERVER_ENV)
    if named:
        if not Path(named).is_file():
            raise ExportError(f"{SERVER_ENV}={named}: no such file; name a llama-server binary")
        return Path(named)
    binary = cached_binary_path()
    return binary if binary.is_file() else None


def cached_binary_path() -> Path:
    """Where the build for the installed llama-cpp-python is kept."""
    version = llama_cpp_version()
    if version is None:
        raise ExportError("llama-server is built from llama-cpp-python's source: pip install -r requirements-export.txt")
    return cache_dir() / f"llama-server-{version}" / BINARY


def build_tools_missing() -> str | None:
    """The build tool that is not on PATH (None: cmake and a C++ compiler are there)."""
    return next((tool for tool in ("cmake", "c++") if shutil.which(tool) is None), None)


def build_server(version: str, binary: Path, jobs: int | None = None) -> Path:
    """Build llama-server from llama-cpp-python=={version}'s source distribution into `binary`."""
    missing = build_tools_missing()
    if missing:
        raise ExportError(f"building llama-server needs {missing} (apt-get install cmake build-essential), or set"
                          f" {SERVER_ENV} to a built llama-server")
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as scratch:
        scratch = Path(scratch)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "--dest", str(scratch), f"llama-cpp-python=={version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(scratch.glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise ExportError(f"llama-server is built from llama-cpp-python=={version}'s source distribution and pip"
                              f" could not download it ({last}); set {SERVER_ENV} to a built llama-server")
        source = _extract_tree(archives[0], scratch / "llama.cpp")
        build = scratch / "build"
        configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                     "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON"]
        for step in (configure, ["cmake", "--build", str(build), "--target", BINARY, "-j", str(jobs or os.cpu_count() or 1)]):
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-1:]
                raise ExportError(f"building llama-server failed at `{' '.join(step[:2])}`: {last[0] if last else ''}")
        built = next((path for path in build.rglob(BINARY) if path.is_file() and os.access(path, os.X_OK)), None)
        if built is None:
            raise ExportError(f"the llama-server build wrote no {BINARY} binary")
        binary.parent.mkdir(parents=True, exist_ok=True)
        staging = binary.with_suffix(".partial")
        shutil.copy2(built, staging)
        staging.replace(binary)
    return binary


def _extract_tree(archive: Path, folder: Path) -> Path:
    """vendor/llama.cpp of a llama-cpp-python source archive, extracted into `folder`."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/")
            if parts[1:3] == ["vendor", "llama.cpp"] and len(parts) > 3:
                member.name = "/".join(parts[3:])
                members.append(member)
        if not members:
            raise ExportError(f"{archive.name} has no vendor/llama.cpp tree")
        tar.extractall(folder, members=members, filter="data")
    return folder


def server_version(binary: Path) -> str:
    """What `llama-server --version` says (its llama.cpp build number and commit)."""
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("version")), lines[-1] if lines else "unknown")


@dataclass
class RunningServer:
    """A started llama-server process, its URL and its log file."""

    process: subprocess.Popen
    url: str
    command: list[str]
    log: Path

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname

    @property
    def port(self) -> int:
        return urlparse(self.url).port

    def stop(self, timeout_s: float = 30) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 5) -> list[str]:
        return self.log.read_text(errors="replace").strip().splitlines()[-lines:] if self.log.exists() else []


def start_server(binary: Path, gguf: Path, port: int, slots: int, context_per_slot: int, threads: int,
                 log: Path, extra: list[str] | None = None, timeout_s: float = 300) -> RunningServer:
    """llama-server on `gguf` at 127.0.0.1:`port`, `slots` sequences of `context_per_slot` tokens each, waited
    for until it answers /health.

    Each slot gets its own context (no unified KV cache) and flash attention is off, as in the project's
    llama.cpp engine (`llm_lora.llama_slots`), so the two decode the same sequences the same way.

    Raises:
        ExportError: The server exited or did not get ready in `timeout_s`.
    """
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(context_per_slot * slots), "-np", str(slots), "-t", str(threads), "-tb", str(threads),
               "--no-kv-unified", "-fa", "off", "--jinja", "--no-webui", *(extra or [])]
    with log.open("w") as handle:  # a file, not a pipe: the server logs every request, and a full pipe blocks it
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True)
    server = RunningServer(process, f"http://127.0.0.1:{port}", command, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_tail(1)
            raise ExportError(f"llama-server exited ({process.returncode}): {tail[0] if tail else ''}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    server.stop()
    raise ExportError(f"llama-server did not answer /health within {timeout_s:.0f} s")


class ServerBatcher(Batcher):
    """The deployment's queue in front of a supervised llama-server: `deploy.engine: llama-server`.

    The project's side is unchanged: prompts are formatted by the one formatting function, tokenized
    by the GGUF's own vocabulary and sent as token ids to llama-server's `/completion` (greedy, the
    answer cap, a grammar where one is asked for), so answers are parsed, recorded and gated as with
    the in-process engines. llama-server decodes them with continuous batching over its slots.

    At most `slots` prompts are at the server at once, each sent by one of `slots` sender threads;
    the others wait in this queue, where `max_queue` and `Retry-After` apply as for the other
    engines. Answers are streamed from the server, so a streamed request hears its answer grow and
    a cancelled one closes its connection, which frees its slot in the server.

    If the server process exits, the prompts it was answering fail with one line naming its exit
    code and last log line, and it is started again for the next ones.

    Args:
        binary: The llama-server binary (`server_binary`).
        gguf: The GGUF file.
        slots: Sequences decoded together (llama-server's `-np`).
        context: Tokens of prompt + answer per slot.
        max_new_tokens: Cap on each answer.
        max_queue: Prompts that may wait for a slot.
        threads: CPU threads of the server (default: llm_lora.cpu.cpu_threads()).
        prompt_cache: A slot (and llama-server's prompt cache in memory) reuses the start a new prompt
            shares with one it read before; false: every prompt is read whole.
        log: The server's log file.
    """

    supports_grammar = True

    def __init__(self, binary: Path, gguf: Path, slots: int, context: int, max_new_tokens: int, max_queue: int,
                 threads: int | None = None, prompt_cache: bool = True, log: Path | None = None,
                 timeout_s: float = 300) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.binary, self.gguf, self.slots, self.context = Path(binary), Path(gguf), slots, context
        self.threads = threads or cpu_threads()
        self.prompt_cache = prompt_cache
        self.timeout_s = timeout_s
        self.log = log or Path(tempfile.mkdtemp(prefix="llama-server-")) / "llama-server.log"
        self.restarts = 0
        # The file's own tokenizer, as llm_lora.llama_slots reads prompts: the same ids in either engine.
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._vocab = _internals.LlamaModel(path_model=str(gguf), params=params, verbose=False)
        self._server_lock = threading.Lock()
        self._answer_lock = threading.Lock()  # two prompts of one request may end at once
        self.server = self._start()
        super().__init__(max_new_tokens, max_queue, "llama-server-senders")

    def _start(self) -> RunningServer:
        extra = [] if self.prompt_cache else ["--cache-ram", "0"]
        return start_server(self.binary, self.gguf, _free_port(), self.slots, self.context, self.threads,
                            log=self.log, extra=extra, timeout_s=self.timeout_s)

    def tokenize(self, text: str) -> list[int]:
        return self._vocab.tokenize(text.encode(), add_bos=False, special=True)

    def _run(self) -> None:
        senders = [threading.Thread(target=self._send_loop, name=f"llama-server-sender-{n}", daemon=True)
                   for n in range(1, self.slots)]
        for sender in senders:
            sender.start()
        try:
            self._send_loop()
        finally:
            for sender in senders:
                sender.join(timeout=60)
            self._fail_waiting(RuntimeError("the model is shutting down"))

    def _send_loop(self) -> None:
        while True:
            with self._condition:
                if not self._wait_for_prompts():
                    return
                request, index = self._waiting.popleft()
                if request.future.done() or request.cancelled:
                    continue
                if request.started is None:
                    request.started = time.perf_counter()
            try:
                generation = self._answer(request, index)
            except ValueError as exc:  # too long for the context, or a grammar the server refused
                request.fail(ValueError(f"input {index}: {exc}"))
                continue
            except RuntimeError as exc:
                request.fail(exc)
                continue
            except Exception as exc:  # a sender must not die with its prompt unanswered
                request.fail(RuntimeError(f"llama-server: {type(exc).__name__}: {exc}"))
                continue
            if generation is not None:
                with self._answer_lock:
                    self._record(request, index, generation)

    def _answer(self, request, index: int) -> Generation | None:
        """One prompt through llama-server, streamed; None when its request was cancelled meanwhile."""
        ids = self.tokenize(request.prompts[index])
        if not ids:
            raise ValueError("an empty prompt")
        if len(ids) + request.max_new_tokens > self.context:
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens ({request.max_new_tokens}) exceed "
                             f"the {self.context}-token context")
        body = {"prompt": ids, "n_predict": request.max_new_tokens, "temperature": 0, "top_k": 1, "stream": True,
                "cache_prompt": self.prompt_cache, "return_progress": False}
        if request.grammar is not None:
            body["grammar"] = request.grammar
        server = self.server
        started = time.perf_counter()
        connection = http.client.HTTPConnection(server.host, server.port, timeout=self.timeout_s)
        text, last = "", {}
        try:
            connection.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise ValueError(_server_error(response.read()))
            while True:
                line = response.readline()
                if not line:
                    break
                if request.cancelled:  # closing the connection frees the slot in llama-server
                    return None
                if not line.startswith(b"data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise ValueError(_server_error(line[6:]))
                if chunk.get("content"):
                    text += chunk["content"]
                    if request.on_text is not None:
                        request.grew(index, text)
                if chunk.get("stop"):
                    last = chunk
                    break
        except (OSError, http.client.HTTPException) as exc:
            if self._closed:
                raise RuntimeError("the model is shutting down") from None
            raise RuntimeError(self._restart_after(server, exc)) from None
        finally:
            connection.close()
        if not last:
            if self._closed:
                raise RuntimeError("the model is shutting down")
            raise RuntimeError(self._restart_after(server, None))
        finished = last.get("stop_type") != "limit"
        predicted = int(last.get("tokens_predicted", 0))
        return Generation(text=text.strip(), new_tokens=predicted, prompt_tokens=len(ids),
                          latency_s=time.perf_counter() - started, hit_cap=not finished)

    def _restart_after(self, server: RunningServer, error: BaseException | None) -> str:
        """What to tell a caller whose answer from `server` broke off; starts the server again if it exited
        (once: the other answers it broke off find it started)."""
        with self._server_lock:
            try:  # a connection that broke off because the process died: its exit is a moment behind
                code = server.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            if code is None:
                return f"llama-server broke off the answer ({type(error).__name__ if error else 'no end'}: {error})"
            tail = server.log_tail(1)
            message = f"llama-server exited ({code}): {tail[0] if tail else 'no log'}; started it again"
            if not self._closed and self.server is server:
                try:
                    self.server = self._start()
                except ExportError as exc:  # the next prompts find the dead one and try again
                    return f"{message.removesuffix('; started it again')}; starting it again failed: {exc}"
                self.restarts += 1
            return message

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        with self._server_lock:
            self.server.stop()
        self._thread.join(timeout=60)
        self._vocab.close()


def _server_error(raw: bytes) -> str:
    """llama-server's error body ({"error": {"message": ...}}) as one line."""
    try:
        error = json.loads(raw).get("error", {})
        return str(error.get("message") if isinstance(error, dict) else error).strip().splitlines()[0]
    except (ValueError, AttributeError, IndexError):
        return raw.decode(errors="replace").strip()[:200] or "llama-server refused the request"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

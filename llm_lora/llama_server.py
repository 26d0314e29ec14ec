"""llama.cpp's own server, `llama-server`, built from the llama.cpp tree llama-cpp-python ships, and run on a GGUF.

llama-cpp-python's source distribution carries llama.cpp's whole tree (`vendor/llama.cpp`), its
HTTP server (`tools/server`) included. The first call builds `llama-server` from it with cmake
(a few minutes on 2 cores), the same llama.cpp and the same native CPU flags as the installed
llama-cpp-python, and keeps the binary in `model_loading.cache_dir()`; later calls take it from
there. `LLM_LORA_LLAMA_SERVER` may name a binary built elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llm_lora.gguf_export import ExportError, llama_cpp_version
from llm_lora.model_loading import cache_dir

SERVER_ENV = "LLM_LORA_LLAMA_SERVER"
BINARY = "llama-server"


def server_binary(jobs: int | None = None) -> Path:
    """The llama-server binary: `$LLM_LORA_LLAMA_SERVER`, else the cached build, else built now.

    Raises:
        ExportError: No llama-cpp-python, no source distribution reachable, or the build failed (one line).
    """
    named = os.environ.get(SERVER_ENV)
    if named:
        if not Path(named).is_file():
            raise ExportError(f"{SERVER_ENV}={named}: no such file; name a llama-server binary")
        return Path(named)
    version = llama_cpp_version()
    if version is None:
        raise ExportError("llama-server is built from llama-cpp-python's source: pip install -r requirements-export.txt")
    binary = cache_dir() / f"llama-server-{version}" / BINARY
    if not binary.is_file():
        build_server(version, binary, jobs)
    return binary


def build_server(version: str, binary: Path, jobs: int | None = None) -> Path:
    """Build llama-server from llama-cpp-python=={version}'s source distribution into `binary`."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise ExportError(f"building llama-server needs {tool} (apt-get install cmake build-essential)")
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

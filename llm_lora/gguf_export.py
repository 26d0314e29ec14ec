"""GGUF export with llama.cpp's own tools, and answers from llama.cpp itself.

The converter (`convert_hf_to_gguf.py`, its `conversion` package and the matching
`gguf-py`) ships only in the `llama-cpp-python` source distribution, not in the
installed package. It is taken from a llama.cpp checkout named by
`LLAMA_CPP_CONVERTER`, or from that source distribution, extracted once into a
cache folder per llama-cpp-python version: the converter then always matches the
llama.cpp that loads its output.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

from llm_lora.config import QUANTIZED_GGUF_TYPES
from llm_lora.cpu import cpu_threads
from llm_lora.generation import Generation
from llm_lora.model_loading import cache_dir

CONVERTER_ENV = "LLAMA_CPP_CONVERTER"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
# What the converter needs beside its script (relative to llama.cpp's root).
CONVERTER_PARTS = (CONVERTER_SCRIPT, "conversion", "gguf-py")
INSTALL_HINT = "pip install -r requirements-export.txt (builds llama.cpp with cmake and a C++ compiler)"

# The converter writes CONVERTER_GGUF_TYPES from the merged weights; llama.cpp's quantizer
# (`llama_model_quantize`) makes the others from the f16 file.
QUANTIZER_FTYPES = {name: f"LLAMA_FTYPE_MOSTLY_{name.upper()}" for name in QUANTIZED_GGUF_TYPES}


class ExportError(RuntimeError):
    """An export that cannot be made or does not answer as the trained model; the message is one line."""


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version, or None."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def toolchain_problem(installed: str | None = "", search_path: str | None = None) -> str | None:
    """Why GGUF export cannot run on this machine (one line naming the fix), or None.

    llama-cpp-python builds from source at install time: when it is missing, say
    which part of the build toolchain is missing too.

    Args:
        installed: llama-cpp-python's version; "" asks the installed packages.
        search_path: Where to look for cmake and a compiler (default: PATH).
    """
    if (llama_cpp_version() if installed == "" else installed) is not None:
        return None
    missing = []
    if shutil.which("cmake", path=search_path) is None:
        missing.append("cmake")
    compiler = os.environ.get("CXX")
    if not any(shutil.which(name, path=search_path) for name in ([compiler] if compiler else ["c++", "g++", "clang++"])):
        missing.append(f"a C++ compiler ({compiler or 'g++ or clang++'})")
    if missing:
        return (f"export.formats: gguf needs llama-cpp-python, which builds from source and this machine lacks "
                f"{' and '.join(missing)}: install them (Debian: apt install cmake g++), then {INSTALL_HINT}")
    return f"export.formats: gguf needs llama-cpp-python: {INSTALL_HINT}"


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py with its `conversion` and `gguf-py` beside it.

    Raises:
        ExportError: Neither a checkout nor the source distribution can be found.
    """
    named = os.environ.get(CONVERTER_ENV)
    if named:
        folder = Path(named)
        folder = folder.parent if folder.name == CONVERTER_SCRIPT else folder
        if not (folder / CONVERTER_SCRIPT).is_file():
            raise ExportError(f"{CONVERTER_ENV}={named}: no {CONVERTER_SCRIPT} there; name a llama.cpp checkout")
        return folder
    version = llama_cpp_version()
    if version is None:
        raise ExportError(toolchain_problem() or INSTALL_HINT)
    folder = cache_dir() / f"llama.cpp-{version}"
    if not (folder / CONVERTER_SCRIPT).is_file():
        fetch_converter(version, folder)
    return folder


def fetch_converter(version: str, folder: Path) -> Path:
    """Take the converter out of llama-cpp-python's source distribution (pip download, from pip's cache
    when the install downloaded it) into `folder`.

    Raises:
        ExportError: The download failed (no index reachable) or the archive lacks the converter.
    """
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "--dest", scratch, f"llama-cpp-python=={version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(scratch).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise ExportError(
                f"export.formats: gguf needs llama.cpp's converter from the llama-cpp-python=={version} source "
                f"distribution and pip could not download it ({last}); set {CONVERTER_ENV} to a llama.cpp checkout"
            )
        return extract_converter(archives[0], folder)


def extract_converter(archive: Path, folder: Path) -> Path:
    """Extract the converter's parts from a llama-cpp-python source archive into `folder` (atomically)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + "-", dir=folder.parent))
    try:
        with tarfile.open(archive) as tar:
            wanted = []
            for member in tar.getmembers():
                parts = member.name.split("/")
                # <name>-<version>/vendor/llama.cpp/<part>/...
                if parts[1:3] == ["vendor", "llama.cpp"] and len(parts) > 3 and parts[3] in CONVERTER_PARTS:
                    if member.isfile():
                        member.name = "/".join(parts[3:])
                        wanted.append(member)
            if not any(member.name == CONVERTER_SCRIPT for member in wanted):
                raise ExportError(f"{archive.name} has no vendor/llama.cpp/{CONVERTER_SCRIPT}")
            tar.extractall(staging, members=wanted, filter="data")
        try:
            staging.rename(folder)
        except OSError:  # another process extracted it first
            if not (folder / CONVERTER_SCRIPT).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def supported_architectures(converter: Path) -> set[str]:
    """The Hugging Face architectures (text models) llama.cpp's converter knows."""
    done = subprocess.run([sys.executable, CONVERTER_SCRIPT, "--print-supported-models"],
                          cwd=converter, capture_output=True, text=True)
    names, in_text = set(), False
    for line in (done.stdout + done.stderr).splitlines():
        if line.endswith("models:"):
            in_text = line.startswith("TEXT")
        elif in_text and line.strip().startswith("- "):
            names.add(line.strip()[2:])
    return names


def convert(model_dir: Path, output: Path, outtype: str, converter: Path | None = None) -> Path:
    """Convert a Hugging Face model folder (safetensors + tokenizer) to one GGUF file.

    Raises:
        ExportError: The converter refused the model (unknown architecture or tokenizer) or failed.
    """
    converter = converter or converter_dir()
    command = [sys.executable, str(converter / CONVERTER_SCRIPT), str(model_dir),
               "--outfile", str(output), "--outtype", outtype]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0 and output.is_file():
        return output
    log = done.stdout + done.stderr
    unknown = re.search(r"Architecture '([^']+)' not supported|Model (\S+) is not supported", log)
    if unknown:
        raise ExportError(
            f"export.formats: gguf: llama.cpp's converter does not know the architecture {unknown.group(1) or unknown.group(2)}; "
            "export merged only (export.formats: [merged]) and serve it with transformers or vLLM"
        )
    if "pre-tokenizer was not recognized" in log:
        raise ExportError("export.formats: gguf: llama.cpp's converter does not recognize this model's tokenizer "
                          "(BPE pre-tokenizer); export merged only (export.formats: [merged])")
    last = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "no output")
    raise ExportError(f"export.formats: gguf: llama.cpp's converter failed for {outtype}: {last.strip()[:300]}")


def quantize(source: Path, output: Path, gguf_type: str, threads: int | None = None) -> Path:
    """Quantize an f16/f32 GGUF to `gguf_type` with llama.cpp's quantizer.

    Rows whose width a K-quant's 256-wide blocks do not divide (576 in SmolLM2-135M) are
    quantized to a fallback type by llama.cpp itself; the file's bits per weight show it.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_FTYPES[gguf_type])
    params.nthread = threads or cpu_threads()
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params))
    if code != 0 or not output.is_file():
        raise ExportError(f"export.gguf_types: llama.cpp could not quantize to {gguf_type} (code {code})")
    return output


def bits_per_weight(path: Path) -> float:
    """Bits each weight takes in a GGUF file's tensors (the vocabulary and metadata not counted).

    K-quant rows that fall back to a wider type (rows not a multiple of 256 wide) show here.
    """
    from gguf import GGUFReader

    tensors = GGUFReader(path).tensors
    return 8 * sum(int(tensor.n_bytes) for tensor in tensors) / sum(int(tensor.n_elements) for tensor in tensors)


def adds_bos(path: Path) -> bool:
    """Whether llama.cpp puts BOS before every prompt of this file (its `tokenizer.ggml.add_bos_token`)."""
    from llm_lora.gguf_header import read_header

    return bool(read_header(path).values.get("tokenizer.ggml.add_bos_token", False))


class LlamaCppEngine:
    """A GGUF file loaded in llama.cpp once, answering formatted prompts greedily.

    Prompts are tokenized by the GGUF's own tokenizer (special tokens parsed, no BOS added:
    the formatted prompt carries it where the template puts it), as an engine serving
    this file would.

    Args:
        path: A GGUF file.
        context: Tokens of KV cache (prompt + answer), allocated once.
        threads: CPU threads (default: llm_lora.cpu.cpu_threads()).
    """

    def __init__(self, path: Path, context: int, threads: int | None = None) -> None:
        import llama_cpp

        self._eog = llama_cpp.llama_vocab_is_eog
        threads = threads or cpu_threads()
        self.path = Path(path)
        self.context = context
        self.model = llama_cpp.Llama(str(path), n_ctx=context, n_batch=min(context, 512), n_threads=threads,
                                     n_threads_batch=threads, verbose=False, seed=0)

    @staticmethod
    def tokenize_prompts(path: Path, prompts: list[str]) -> list[list[int]]:
        """The prompts in the file's tokens, read with its vocabulary only (no weights loaded)."""
        import llama_cpp

        vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        try:
            return [vocab.tokenize(text.encode(), add_bos=False, special=True) for text in prompts]
        finally:
            vocab.close()

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text.encode(), add_bos=False, special=True)

    def answer(self, ids: list[int], max_new_tokens: int) -> Generation:
        """One greedy answer, until an end-of-generation token or the cap.

        Raises:
            ValueError: The prompt and its cap do not fit the context.
        """
        if len(ids) + max_new_tokens > self.context:
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens ({max_new_tokens}) exceed "
                             f"the {self.context}-token context")
        started = time.perf_counter()
        answer, finished = [], False
        for token in self.model.generate(ids, temp=0.0, top_k=1, reset=True):
            if self._eog(self.model._model.vocab, token):
                finished = True
                break
            answer.append(token)
            if len(answer) >= max_new_tokens:
                break
        elapsed = time.perf_counter() - started
        # Undecodable bytes (a character split over the cap) become U+FFFD, as transformers decodes them.
        text = self.model.detokenize(answer, special=False).decode("utf-8", errors="replace").strip()
        return Generation(text=text, new_tokens=len(answer) + (1 if finished else 0),  # + the end-of-turn token
                          prompt_tokens=len(ids), latency_s=elapsed,
                          hit_cap=not finished and len(answer) >= max_new_tokens)

    def close(self) -> None:
        self.model.close()  # not left to __del__, which fails at interpreter exit


def llama_cpp_answers(
    path: Path, prompts: list[str], max_new_tokens: int, reference_ids: list[list[int]] | None = None,
    threads: int | None = None,
) -> tuple[list[Generation], int, float]:
    """Greedy answers from llama.cpp for formatted prompts, one request after another.

    Args:
        path: A GGUF file.
        prompts: Prompts formatted as for the PyTorch evaluation.
        max_new_tokens: The evaluation's cap.
        reference_ids: The Hugging Face tokenizer's ids of each prompt, to count disagreements.
        threads: CPU threads (default: llm_lora.cpu.cpu_threads()).

    Returns:
        The answers, how many prompts tokenized differently from reference_ids, and the
        generated tokens per second over all answers.
    """
    encoded = LlamaCppEngine.tokenize_prompts(path, prompts)
    mismatches = sum(ids != reference for ids, reference in zip(encoded, reference_ids or [])) if reference_ids else 0
    # Sized for the longest prompt and answer: the KV cache is allocated once for all prompts.
    engine = LlamaCppEngine(path, max(len(ids) for ids in encoded) + max_new_tokens + 8, threads)
    try:
        generations = [engine.answer(ids, max_new_tokens) for ids in encoded]
    finally:
        engine.close()
    busy = sum(g.latency_s for g in generations)
    return generations, mismatches, (sum(g.new_tokens for g in generations) / busy if busy else 0.0)

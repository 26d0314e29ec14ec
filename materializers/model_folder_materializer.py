"""Stores a model folder (merged safetensors, GGUF files) as its plain files.

ZenML's own materializer for a `Path` packs a folder into one gzip archive: for a model that is gigabytes
of weights compressed (barely: trained weights are close to random bits) on every save and unpacked on
every load, a minute per gigabyte on a small machine. Here each file is copied as it is, so saving costs a
copy and the artifact's folder is usable as it stands: `from_pretrained(<artifact uri>)`,
`llama-server -m <artifact uri>/<model>-q8_0.gguf`.

The pipeline names this materializer for its model-folder outputs only; every other `Path` keeps ZenML's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer


def entry_name(entry: Any) -> str:
    """A name from `fileio.listdir` or `fileio.walk`: bytes on some artifact stores, str on others."""
    return entry.decode() if isinstance(entry, bytes) else str(entry)


class ModelFolderMaterializer(BaseMaterializer):
    """Materializer for a `pathlib.Path` that is a folder of model files."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Path,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
    # Not the default for every Path (ZenML's stays that): only where a step names this one.
    SKIP_REGISTRATION: ClassVar[bool] = True

    def save(self, data: Path) -> None:
        """Copy every file under the folder into the artifact store, keeping sub-folders."""
        if not Path(data).is_dir():
            raise TypeError(f"{type(self).__name__} stores a folder; {data} is not one")
        for root, _, files in os.walk(data):
            relative = os.path.relpath(root, data)
            target = self.uri if relative == "." else os.path.join(self.uri, relative)
            fileio.makedirs(target)
            for name in sorted(files):
                fileio.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)

    def load(self, data_type: type[Any]) -> Path:
        """Copy the files to a local folder (the store may be remote, and the stored files stay untouched)."""
        with self.get_temporary_directory(delete_at_exit=False) as local:
            for root, _, files in fileio.walk(self.uri):
                root = entry_name(root)
                relative = os.path.relpath(root, self.uri)
                target = local if relative == "." else os.path.join(local, relative)
                os.makedirs(target, exist_ok=True)
                for name in map(entry_name, files):
                    fileio.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)
        return Path(local)

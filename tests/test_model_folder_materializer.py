"""Model folders (the merged export, the GGUF files) are stored as their plain files, not as one archive."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from materializers.model_folder_materializer import ModelFolderMaterializer


def test_a_model_folder_is_stored_file_by_file_and_loads_back(tiny_model_dir, tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    for path in Path(tiny_model_dir).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "extra").mkdir()
    (folder / "extra" / "Modelfile.q8_0").write_text("FROM ./model-q8_0.gguf\n")
    uri = tmp_path / "artifact"
    uri.mkdir()

    ModelFolderMaterializer(str(uri)).save(folder)
    # The artifact's folder is the model itself: transformers loads it where the store keeps it.
    stored = {str(path.relative_to(uri)) for path in uri.rglob("*") if path.is_file()}
    assert stored == {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert not [name for name in stored if name.endswith((".tar.gz", ".tar", ".pkl"))]
    assert AutoModelForCausalLM.from_pretrained(uri).config.num_hidden_layers == 2

    loaded = ModelFolderMaterializer(str(uri)).load(Path)
    assert isinstance(loaded, Path) and loaded != uri
    for path in folder.rglob("*"):
        if path.is_file():
            assert (loaded / path.relative_to(folder)).read_bytes() == path.read_bytes(), path


def test_only_a_folder_is_stored(tmp_path):
    single = tmp_path / "model.gguf"
    single.write_bytes(b"GGUF")
    (tmp_path / "artifact").mkdir()
    with pytest.raises(TypeError, match="model.gguf is not one"):
        ModelFolderMaterializer(str(tmp_path / "artifact")).save(single)


def test_other_paths_keep_zenmls_materializer():
    from zenml.materializers.materializer_registry import materializer_registry
    from zenml.materializers.path_materializer import PathMaterializer

    assert materializer_registry[Path] is PathMaterializer

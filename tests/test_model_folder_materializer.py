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


def _version_with_gguf_export(model_name: str, folder: Path, materializer=None):
    """A registered model version whose `gguf_model` artifact holds `folder`, stored by `materializer`
    (ZenML's Path materializer when None: how exports were stored before they were plain files)."""
    from zenml import Model, link_artifact_to_model, save_artifact
    from zenml.client import Client

    artifact = save_artifact(folder, name="gguf_model", materializer=materializer)
    version = Client().create_model_version(Client().create_model(name=model_name).id)
    link_artifact_to_model(artifact, Model(name=model_name, version=version.number))
    return Client().get_model_version(model_name, version.id)


@pytest.fixture
def gguf_folder(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    for kind in ("f16", "q8_0"):
        (folder / f"my-model-{kind}.gguf").write_bytes(f"GGUF {kind}".encode())
        (folder / f"Modelfile.{kind}").write_text(f"FROM ./my-model-{kind}.gguf\n")
    return folder


def test_serving_fetches_only_the_gguf_file_it_serves(gguf_folder):
    from steps.support.model_version import gguf_file

    version = _version_with_gguf_export("plain-gguf-export", gguf_folder, ModelFolderMaterializer)
    served = gguf_file(version, "q8_0", "deploy")
    # A local store's own file, not a copy of the whole export.
    assert served == Path(version.get_artifact("gguf_model").uri) / "my-model-q8_0.gguf"
    assert served.read_bytes() == b"GGUF q8_0"
    assert gguf_file(version, None, "deploy").name == "my-model-f16.gguf"  # no run order recorded: the first
    with pytest.raises(ValueError, match="deploy.gguf_type: version 1 has no q4_k_m GGUF; it has f16, q8_0"):
        gguf_file(version, "q4_k_m", "deploy")


def test_an_export_stored_as_one_archive_still_serves(gguf_folder):
    from steps.support.model_version import gguf_file

    version = _version_with_gguf_export("archived-gguf-export", gguf_folder)
    stored = {path.name for path in Path(version.get_artifact("gguf_model").uri).iterdir()}
    assert stored == {"data.tar.gz"}
    served = gguf_file(version, "q8_0", "inference")
    assert served.name == "my-model-q8_0.gguf" and served.read_bytes() == b"GGUF q8_0"

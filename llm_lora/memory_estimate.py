"""How much GPU memory a training run will take at its peak, per process, before anything is loaded.

The estimate adds what a LoRA step holds at its peak:

- weights: bf16 (2 bytes a parameter), or the decoder's linear layers in 4 bits (NF4 with double
  quantization: ~0.53 bytes) or 8 bits (~1.03) with everything else in bf16;
- the adapter: float32 values and gradients, and the optimizer's two moments (float32, or 8-bit);
- activations, per token of the step: without checkpointing every layer's saved tensors; with it one
  hidden vector per checkpointed layer (none on the GPU with offload_activations), the layers left
  uncheckpointed in full, and the working set of recomputing a layer in the backward pass;
- the vocabulary logits of the labelled positions in float32 (one chunk of them with chunked_loss);
- for 4-bit and 8-bit weights, the dequantized copies a step keeps in flight.

A layer's saved tensors are taken as CALIBRATION["activation_scale"] x 2 bytes x (16 hidden + 4
intermediate + 4 key/value widths) per token: residual stream, norms and attention in the hidden
width, the MLP's four products in the intermediate one. The constants in CALIBRATION are fitted to the
peaks bench/gpu_training.py measured on an H100 and an H200 (bench/results/), and
tests/test_memory_estimate.py holds the estimate to every one of them. Architectures unlike those
measured (other norms, mixture-of-experts) are estimated with the Llama numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from llm_lora.tokenization import IGNORE_INDEX

GIB = 2**30

# Fitted to bench/results/gpu-training-*.json (see tests/test_memory_estimate.py for the table).
CALIBRATION = {
    "activation_scale": 0.95,  # a layer's saved tensors, against the width count above
    "compiled_scale": 0.85,  # training.compile fuses elementwise steps: fewer saved intermediates
    "recompute_layers": 2.0,  # the backward pass's working set, in layers' worth of saved tensors
    "logit_bytes": 4.0,  # per labelled position and vocabulary entry (float32 log-probabilities)
    "quantized_working_gib": 0.25,  # dequantized weights in flight (4-bit and 8-bit)
}
# Models whose layers keep more than Llama's per hidden width: Phi's LayerNorm runs in float32 under
# autocast and its parallel attention and MLP keep both branches' inputs (measured on Phi-2).
ARCHITECTURE_SCALE = {"phi": 1.8}
# Bytes per parameter of a quantized linear layer: NF4 (0.5) and its absmax per 64 values, 8 bits with
# double quantization (1/64); int8 with a float scale per row.
QUANTIZED_BYTES = {"qlora-4bit": 0.5 + 1 / 64, "qlora-8bit": 1.03}
# training.chunked_loss's logits in flight: one chunk in float32 (LOGITS_PER_CHUNK), and its softmax.
CHUNKED_LOGITS_BYTES = 2 * 2**25 * 4


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only model that decide its training memory.

    Attributes:
        model_type: transformers' model_type ("llama", "phi", ...).
        layers: Decoder layers.
        hidden: Hidden width.
        intermediate: MLP width.
        kv_width: Width of the key (or value) projection (key/value heads x head size).
        vocab: Vocabulary size.
        parameters: All parameters.
        linear_parameters: Parameters of the decoder layers' linear projections (what QLoRA quantizes).
        adapter_parameters_per_rank: LoRA parameters at rank 1 on all seven (or Phi's six) projections.
    """

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    kv_width: int
    vocab: int
    parameters: int
    linear_parameters: int
    adapter_parameters_per_rank: int


def architecture_from_config(config) -> Architecture:
    """The numbers from a transformers config (a PretrainedConfig or its dict), without weights."""
    get = (lambda key, default=None: config.get(key, default)) if isinstance(config, dict) else (
        lambda key, default=None: getattr(config, key, default))
    hidden, intermediate = get("hidden_size"), get("intermediate_size")
    layers, vocab, heads = get("num_hidden_layers"), get("vocab_size"), get("num_attention_heads")
    head_dim = get("head_dim") or hidden // heads
    kv_width = (get("num_key_value_heads") or heads) * head_dim
    model_type = get("model_type", "llama")
    if model_type == "phi":  # q, k, v, dense; fc1, fc2
        per_layer = 4 * hidden * hidden + 2 * hidden * intermediate
        per_rank = 4 * 2 * hidden + 2 * (hidden + intermediate)
        per_layer_other = 4 * hidden + 2 * hidden + intermediate  # biases and the layer norm
    else:  # q, o (hidden x hidden), k, v (hidden x kv), gate, up, down
        per_layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * intermediate
        per_rank = 2 * 2 * hidden + 2 * (hidden + kv_width) + 3 * (hidden + intermediate)
        per_layer_other = 2 * hidden  # two norms
    tied = bool(get("tie_word_embeddings", False))
    parameters = layers * (per_layer + per_layer_other) + vocab * hidden * (1 if tied else 2) + hidden
    return Architecture(model_type, layers, hidden, intermediate, kv_width, vocab, parameters,
                        layers * per_layer, layers * per_rank)


# Published config.json numbers of the base models the shipped configs name, for estimates where the
# model's config cannot be read (a --dry-run without the hub).
KNOWN_ARCHITECTURES = {
    "meta-llama/Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336,
                                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                    vocab_size=128256),
    "meta-llama/Llama-3.1-70B": dict(model_type="llama", hidden_size=8192, intermediate_size=28672,
                                     num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                                     vocab_size=128256),
    "mistralai/Mistral-7B-v0.3": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                      vocab_size=32768),
    "microsoft/phi-2": dict(model_type="phi", hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, vocab_size=51200),
}
for _instruct in ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"):
    KNOWN_ARCHITECTURES[_instruct] = KNOWN_ARCHITECTURES[_instruct.removesuffix("-Instruct")]
KNOWN_ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.3"] = KNOWN_ARCHITECTURES["mistralai/Mistral-7B-v0.3"]


def load_architecture(model_name: str) -> Architecture | None:
    """The model's numbers from its config.json in a local folder or the hub cache, else the published
    numbers of a known base model, else None. Never downloads: an estimate must not wait on the network
    (training checks again once the model has been fetched for the base evaluation)."""
    try:
        from transformers import AutoConfig

        return architecture_from_config(AutoConfig.from_pretrained(model_name, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached, not a transformers model: fall back)
        known = KNOWN_ARCHITECTURES.get(model_name)
        return architecture_from_config(known) if known else None


@dataclass(frozen=True)
class TrainingShape:
    """The settings of a run that decide its memory (the YAML's training and lora keys).

    Attributes:
        method: training.method.
        rank: lora.rank.
        adapted_share: Share of the projections with adapters (1 for lora.target_modules: all-linear;
            a list of names counts as its share of the seven projections).
        dropout: lora.dropout (a dropped copy of each adapted input is kept).
        checkpointing: training.gradient_checkpointing.
        every_n_layers: training.gradient_checkpointing_every_n_layers.
        compiled: training.compile.
        offload_activations: training.offload_activations.
        chunked_loss: training.chunked_loss.
        optimizer: training.optimizer.
        processes: training.num_processes (each holds a whole copy: data parallel).
    """

    method: str = "lora"
    rank: int = 16
    adapted_share: float = 1.0
    dropout: float = 0.0
    checkpointing: bool = False
    every_n_layers: int = 1
    compiled: bool = False
    offload_activations: bool = False
    chunked_loss: bool = False
    optimizer: str = "adamw"
    processes: int = 1


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def training_shape(training, lora) -> TrainingShape:
    """The TrainingShape of a config's `training` and `lora` sections."""
    targets = lora.target_modules
    if targets == "all-linear" or targets == ["all-linear"]:
        share = 1.0
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        share = min(1.0, sum(name in PROJECTIONS or name in ("dense", "fc1", "fc2") for name in names) / 7) or 1 / 7
    return TrainingShape(
        method=training.method, rank=lora.rank, adapted_share=share, dropout=lora.dropout,
        checkpointing=training.gradient_checkpointing, every_n_layers=training.gradient_checkpointing_every_n_layers,
        compiled=training.compile, offload_activations=training.offload_activations,
        chunked_loss=training.chunked_loss, optimizer=training.optimizer, processes=training.num_processes,
    )


class MemoryEstimate(BaseModel):
    """Peak GPU memory of one training process, in GiB, by what holds it.

    A pydantic model so that ZenML stores it as JSON and the preflight report can show it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: float
    adapter: float
    optimizer: float
    activations: float
    logits: float
    working: float
    total: float
    tokens_per_step: int
    host_offloaded: float = 0.0  # pinned CPU memory holding offloaded activations

    def summary(self) -> str:
        """One line: the total and its parts."""
        offloaded = f"; {self.host_offloaded:.1f} GiB of activations in CPU memory" if self.host_offloaded else ""
        return (f"~{self.total:.1f} GiB per GPU at {self.tokens_per_step:,} tokens a step (weights {self.weights:.1f},"
                f" adapter {self.adapter:.1f}, optimizer {self.optimizer:.1f}, activations {self.activations:.1f},"
                f" logits {self.logits:.1f}, working {self.working:.1f}){offloaded}")


def estimate_memory(architecture: Architecture, shape: TrainingShape, tokens_per_step: int,
                    labelled_share: float = 0.3) -> MemoryEstimate:
    """Peak GPU memory of one training process.

    Args:
        architecture: The model's numbers.
        shape: The run's memory-relevant settings.
        tokens_per_step: Tokens one process holds in one forward pass (its rows of a step, padding
            included; one micro-batch under gradient accumulation).
        labelled_share: Share of those tokens whose next token carries loss.
    """
    a = architecture
    linear_bytes = QUANTIZED_BYTES.get(shape.method, 2.0)
    weights = a.linear_parameters * linear_bytes + (a.parameters - a.linear_parameters) * 2
    adapter_values = a.adapter_parameters_per_rank * shape.rank * shape.adapted_share
    adapter = adapter_values * 8  # float32 values and gradients
    optimizer = adapter_values * (2 if shape.optimizer == "adamw_8bit" else 8)

    layer = CALIBRATION["activation_scale"] * 2 * (16 * a.hidden + 4 * a.intermediate + 4 * a.kv_width)
    layer *= ARCHITECTURE_SCALE.get(a.model_type, 1.0)
    if shape.compiled:
        layer *= CALIBRATION["compiled_scale"]
    if shape.dropout > 0:  # each adapted input's dropped copy (bf16) and its mask (1 byte)
        layer += 3 * (6 * a.hidden + a.intermediate) * shape.adapted_share
    offloaded = 0.0
    if not shape.checkpointing:
        per_token = a.layers * layer
    else:
        checkpointed = math.ceil(a.layers / shape.every_n_layers)
        inputs = checkpointed * 2 * a.hidden
        if shape.offload_activations:
            offloaded, inputs = inputs * tokens_per_step, 0
        per_token = inputs + (a.layers - checkpointed) * layer + CALIBRATION["recompute_layers"] * layer
    activations = per_token * tokens_per_step
    labelled = labelled_share * tokens_per_step
    if shape.chunked_loss:
        logits = CHUNKED_LOGITS_BYTES + labelled * a.hidden * 2
    else:
        logits = labelled * a.vocab * CALIBRATION["logit_bytes"]
    working = CALIBRATION["quantized_working_gib"] * GIB if shape.method in QUANTIZED_BYTES else 0.0
    parts = dict(weights=weights, adapter=adapter, optimizer=optimizer, activations=activations, logits=logits,
                 working=working)
    gib = {name: round(value / GIB, 2) for name, value in parts.items()}
    return MemoryEstimate(**gib, total=round(sum(parts.values()) / GIB, 2), tokens_per_step=int(tokens_per_step),
                          host_offloaded=round(offloaded / GIB, 2))


def memory_advice(estimate: MemoryEstimate, shape: TrainingShape, capacity_gib: float) -> str:
    """What to change when the estimate is over the card's memory: the keys, biggest part first."""
    fixes = []
    if estimate.activations + estimate.logits > 0.25 * estimate.total:
        if not shape.checkpointing:
            fixes.append("training.gradient_checkpointing: true")
        fixes.append("a lower training.batch_size (with gradient_accumulation_steps to keep the rows per step)")
        if shape.checkpointing and not shape.offload_activations:
            fixes.append("training.offload_activations: true")
        if not shape.chunked_loss:
            fixes.append("training.chunked_loss: true")
        fixes.append("a lower data.max_seq_length")
    if shape.method == "lora" and estimate.weights > 0.4 * capacity_gib:
        fixes.append("training.method: qlora-4bit")
    if shape.optimizer == "adamw" and estimate.optimizer > 1:
        fixes.append("training.optimizer: adamw_8bit")
    return "; ".join(fixes) or "a GPU with more memory"


# The estimate's error on the measured peaks is within this share (tests/test_memory_estimate.py): a run
# is refused only when even this much less than the estimate would not fit.
ESTIMATE_ERROR = 0.15
# What the card holds besides the tensors counted: the CUDA context and the allocator's unused blocks.
RESERVED_GIB = 1.0


def step_tokens(batch_size: int, packing: bool, p95_tokens: int, max_tokens: int) -> int:
    """Tokens of a large step of one process: `batch_size` rows at the 95th-percentile length packed
    together, or padded to the longest row (rows of similar length share a batch, so the longest rows'
    batch is padded to the longest)."""
    return batch_size * (p95_tokens if packing else max_tokens)


def estimate_for_config(config, p95_tokens: int, max_tokens: int, labelled_share: float,
                        architecture: Architecture | None = None) -> MemoryEstimate | None:
    """The peak estimate for a run config's model and settings, on rows of these lengths; None when the
    model's architecture cannot be read."""
    architecture = architecture or load_architecture(config.model.name)
    if architecture is None:
        return None
    tokens = step_tokens(config.training.batch_size, config.data.packing, p95_tokens, max_tokens)
    return estimate_memory(architecture, training_shape(config.training, config.lora), tokens, labelled_share)


def fit_problem(estimate: MemoryEstimate, config, capacity_gib: float) -> str | None:
    """One line when the run cannot fit a GPU of `capacity_gib`, naming the keys to change; else None."""
    usable = capacity_gib - RESERVED_GIB
    if estimate.total * (1 - ESTIMATE_ERROR) <= usable:
        return None
    shape = training_shape(config.training, config.lora)
    return (f"training does not fit the GPU: about {estimate.total:.1f} GiB per process estimated"
            f" ({estimate.tokens_per_step:,} tokens a step; weights {estimate.weights:.1f}, activations and logits"
            f" {estimate.activations + estimate.logits:.1f}), the GPU has {capacity_gib:.1f} GiB; change"
            f" {memory_advice(estimate, shape, capacity_gib)}")


def estimate_for_rows(config, rows: list[dict], architecture: Architecture | None = None) -> MemoryEstimate | None:
    """estimate_for_config on tokenized training rows (input_ids, labels)."""
    lengths = sorted(len(row["input_ids"]) for row in rows)
    if not lengths:
        return None
    labelled = sum(sum(label != IGNORE_INDEX for label in row["labels"]) for row in rows)
    return estimate_for_config(config, lengths[int(0.95 * (len(lengths) - 1))], lengths[-1],
                               labelled / sum(lengths), architecture)

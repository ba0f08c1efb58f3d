"""ONNX export of a pipeline directory: every sub-model a deployer runs, and a manifest.

    export_pipeline("runs/demo/pipeline", "runs/demo/onnx")     # or: illume export --model ... --out ...

Graphs (fp32; B, T, P, I are dynamic):

| file | inputs -> outputs |
|---|---|
| tokenizer_encoder.onnx | pixel_values [B, 3, H, W] (normalised) -> codes [B, h, w] int64 |
| tokenizer_decoder.onnx | codes [B, h, w] int64 -> features [B, N, D] |
| vision_adapter.onnx | pixel_values [I, 3, H, W] -> image_features [I, N, D_llm] |
| embeddings.onnx | input_ids [B, T] (, grid_positions [B, T]) -> inputs_embeds [B, T, D_llm] |
| prefill.onnx | inputs_embeds, attention_mask [B, T], position_ids [B, T] -> logits [B, V] (last position), present.{i}.key / .value [B, Hkv, T, hd] |
| decode.onnx | input_ids [B, 1], attention_mask [B, P + 1], position_ids [B, 1] (, grid_positions [B, 1]), past_key_values.{i}.key / .value [B, Hkv, P, hd] -> logits [B, V], present.{i}.key / .value [B, Hkv, P + 1, hd] |
| decode_window.onnx | input_ids [B, T], attention_mask [B, P + T], position_ids [B, T] (, grid_positions [B, T]), past [B, Hkv, P, hd] -> vision_logits [B, T, K] (every position, vision rows only: speculative decoding's verification), presents [B, Hkv, P + T, hd] |
| conditioner.onnx | features [B, N, D] -> encoder_hidden_states (+ spatial, text_embeds) |
| unet_step.onnx | sample, timestep [B], encoder_hidden_states (+ spatial, text_embeds when the detokenizer has them) -> prediction |

The decoder graphs (prefill, decode, decode_window) run each layer's rotary embedding and attention,
the cache's concatenation included, as ONNX Runtime's fused contrib kernels (com.microsoft
RotaryEmbedding and MultiHeadAttention; `manifest["attention_form"] == "contrib"`) where the model
has as many key/value heads as query heads. `portable=True` (`illume export --portable`) keeps
to standard ONNX operators, which TensorRT and other runtimes parse (`"decomposed"`).

`decoder_weights="int8"` or `"int4"` (`illume export --decoder-weights int8`) stores the decoder
layers' matmul weights quantized (ONNX Runtime's MatMulNBits: symmetric, blocks of 32 along the
input, activations quantized to int8 for the product), in prefill, decode and decode_window
alike; embeddings and the LM head stay float32. A CPU decode step reads a quarter (int8) or an
eighth (int4) of the layers' bytes: faster drawing, and no longer the float model's codes for a
seed (`benchmarks/generation_speed.py` measures both the speed and the score difference).
`manifest["decoder_weights"]` names the form; TensorRT takes float32 only.

`grid_positions` (int64, `illume_mllm.grid_positions`: each token's cell of its image grid, -1 for
other tokens) is an input only of a model with grid embeddings (`manifest["grid_embeddings"]`).
The key/value names follow optimum and onnxruntime-genai. The decoder graphs are exported from
`FlatDecoder` (the same weights and arithmetic as the PyTorch model) with torch's dynamo exporter.
`processor/` and `null_features.npy` (the detokenizer's unconditional input) are saved beside the
graphs. Each graph is checked with `onnx.checker.check_model(full_check=True)` and, when `verify` is
on, run once in ONNX Runtime against PyTorch before it is listed in `manifest.json`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from illume_core import atomic_directory, check_replaceable
from illume_mllm.decoder import FlatDecoder, vision_features

MANIFEST = "manifest.json"
#: What `atomic_directory` records an export folder as: an export replaces only an export.
EXPORT_KIND = "onnx-export"
OPSET = 18
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators
#: How the decoder graphs store their layers' matmul weights (see the module docstring).
DECODER_WEIGHTS = ("float32", "int8", "int4")
#: Graphs whose matmuls a quantized export stores as MatMulNBits: the language model's.
DECODER_GRAPHS = ("prefill", "decode", "decode_window")


@dataclass
class GraphSpec:
    """One exported graph: its file, input and output names, and the dynamic axes by input."""

    file: str
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)


# -- wrappers: one forward per graph, tensors in and out ---------------------------------------


class _Encoder(nn.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, pixel_values):
        return self.tokenizer.encode(pixel_values).codes


class _FeatureDecoder(nn.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, codes):
        return self.tokenizer.decode_features(codes)


class _Adapter(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return vision_features(self.model, pixel_values)


class _Embeddings(nn.Module):
    def __init__(self, decoder: FlatDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids):
        return self.decoder.embed(input_ids)


class _GridEmbeddings(_Embeddings):  # a model with grid embeddings (IllumeConfig)
    def forward(self, input_ids, grid_positions):
        return self.decoder.embed(input_ids, grid_positions)


class _Prefill(nn.Module):
    def __init__(self, decoder: FlatDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, attention_mask, position_ids):
        s = self.decoder.shape
        b = inputs_embeds.shape[0]
        empty = inputs_embeds.new_zeros(b, s.kv_heads, 0, s.head_dim)
        hidden, presents = self.decoder.forward_past(
            inputs_embeds, position_ids, attention_mask, [(empty, empty)] * s.layers
        )
        return (self.decoder.logits(hidden), *[t for kv in presents for t in kv])


class _Decode(nn.Module):
    def __init__(self, decoder: FlatDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, attention_mask, position_ids, *rest):
        # rest: (grid_positions,) when the model has grid embeddings, then the past keys / values
        cells, past = (rest[:1], rest[1:]) if len(rest) % 2 else ((), rest)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.decoder.shape.layers)]
        x = self.decoder.embed(input_ids, *cells)
        hidden, presents = self.decoder.forward_past(x, position_ids, attention_mask, pairs)
        return (self.decoder.logits(hidden), *[t for kv in presents for t in kv])


class _DecodeWindow(nn.Module):
    """Several tokens after the past, the vision logits of each: what speculative decoding
    verifies a window of drafts with (illume_mllm.SpeculativeJacobi)."""

    def __init__(self, decoder: FlatDecoder, vision: range):
        super().__init__()
        self.decoder, self.vision = decoder, slice(vision.start, vision.stop)

    def forward(self, input_ids, attention_mask, position_ids, *rest):
        cells, past = (rest[:1], rest[1:]) if len(rest) % 2 else ((), rest)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.decoder.shape.layers)]
        x = self.decoder.embed(input_ids, *cells)
        hidden, presents = self.decoder.forward_past(
            x, position_ids, attention_mask, pairs, every_position=True
        )
        return (self.decoder.logits(hidden, self.vision), *[t for kv in presents for t in kv])


class _Conditioner(nn.Module):
    def __init__(self, conditioner):
        super().__init__()
        self.conditioner = conditioner

    def forward(self, features):
        c = self.conditioner(features)
        return tuple(x for x in (c.encoder_hidden_states, c.spatial, c.pooled) if x is not None)


class _UNetStep(nn.Module):
    def __init__(self, pipe, spatial: bool, pooled: bool):
        super().__init__()
        self.pipe, self.spatial, self.pooled = pipe, spatial, pooled
        self.unet = pipe.unet  # registered, so the exporter sees the weights as parameters

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        from illume_detokenizer.conditioner import Conditions

        extra = list(extra)
        spatial = extra.pop(0) if self.spatial else None
        pooled = extra.pop(0) if self.pooled else None
        return self.pipe.predict(
            sample, timestep, Conditions(encoder_hidden_states, pooled, spatial)
        )


# -- ONNX Runtime's contrib kernels for FlatDecoder's attention_form="contrib" -------------------


def _register_contrib_schemas() -> None:
    """The two com.microsoft operators' signatures, as ONNX Runtime defines them: the exporter
    builds nodes from registered schemas, and onnx ships none for ONNX Runtime's domain."""
    import onnx
    from onnx.defs import OpSchema

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]

    def attribute(name, kind, required=False):
        return OpSchema.Attribute(name, kind, "", required=required)

    if not onnx.defs.has("RotaryEmbedding", CONTRIB_DOMAIN):
        onnx.defs.register_schema(
            OpSchema(
                "RotaryEmbedding",
                CONTRIB_DOMAIN,
                1,
                inputs=[
                    param("input", "T"),
                    param("position_ids", "M"),
                    param("cos_cache", "T"),
                    param("sin_cache", "T"),
                ],
                outputs=[param("output", "T")],
                type_constraints=[("T", floats, ""), ("M", ["tensor(int64)"], "")],
                attributes=[
                    attribute("num_heads", OpSchema.AttrType.INT),
                    attribute("interleaved", OpSchema.AttrType.INT),
                ],
            )
        )
    if not onnx.defs.has("MultiHeadAttention", CONTRIB_DOMAIN):
        names = (
            "key",
            "value",
            "bias",
            "key_padding_mask",
            "attention_bias",
            "past_key",
            "past_value",
        )
        onnx.defs.register_schema(
            OpSchema(
                "MultiHeadAttention",
                CONTRIB_DOMAIN,
                1,
                inputs=[param("query", "T")]
                + [
                    param(n, "M" if n == "key_padding_mask" else "T", param_option=optional)
                    for n in names
                ],
                outputs=[
                    param("output", "T"),
                    param("present_key", "T", param_option=optional),
                    param("present_value", "T", param_option=optional),
                ],
                type_constraints=[("T", floats, ""), ("M", ["tensor(int32)"], "")],
                attributes=[
                    attribute("num_heads", OpSchema.AttrType.INT, required=True),
                    attribute("scale", OpSchema.AttrType.FLOAT),
                ],
            )
        )


def _contrib_translations() -> dict:
    """torch.onnx's custom_translation_table for FlatDecoder's two contrib operators."""
    import onnxscript

    _register_contrib_schemas()
    microsoft = onnxscript.values.Opset(CONTRIB_DOMAIN, 1)

    def rotary_embedding(x, positions, cos, sin, heads: int):
        return microsoft.RotaryEmbedding(x, positions, cos, sin, num_heads=heads, interleaved=0)

    def attention_after_past(q, k, v, bias, past_key, past_value, heads: int, scale: float):
        return microsoft.MultiHeadAttention(
            q, k, v, None, None, bias, past_key, past_value, num_heads=heads, scale=scale
        )

    return {
        torch.ops.illume.rotary_embedding.default: rotary_embedding,
        torch.ops.illume.attention_after_past.default: attention_after_past,
    }


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


# -- export ---------------------------------------------------------------------------------------


def _export(
    module: nn.Module, args: tuple, path: Path, spec: GraphSpec, contrib: bool = False
) -> None:
    """`contrib`: FlatDecoder's contrib operators become ONNX Runtime's kernels (graphs without
    them are unaffected)."""
    import onnx

    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        if name not in dims:
            dims[name] = torch.export.Dim(
                name.replace(" ", "_").replace("+", "plus"), min=1, max=8192
            )
        return dims[name]

    dynamic_shapes = [
        {axis: dim(name) for axis, name in spec.dynamic.get(n, {}).items()} or None
        for n in spec.inputs
    ]
    # torch.export mirrors the signature: the inputs of a `*args` parameter form one nested tuple.
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        fixed = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        dynamic_shapes = [*dynamic_shapes[:fixed], tuple(dynamic_shapes[fixed:])]
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed" for ops we never use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            input_names=spec.inputs,
            output_names=spec.outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            custom_translation_table=_contrib_translations() if contrib else None,
            external_data=False,
            verbose=False,
        )
    registration.setLevel(level)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    # The exporter falls back quietly when tracing specialises a dimension; a graph fixed to the
    # example's batch would only fail later, in a deployer's hands.
    graph_inputs = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.input}
    for name, axes in spec.dynamic.items():
        dims = graph_inputs[name].type.tensor_type.shape.dim
        fixed = [int(axis) for axis in axes if not dims[int(axis)].dim_param]
        if fixed:
            raise RuntimeError(
                f"{path.name}: input {name} came out with fixed axes {fixed} (meant to be dynamic); "
                "the model code specialises them (e.g. len(tensor) or a Python int from a shape)"
            )


def check_export_options(portable: bool, decoder_weights: str) -> None:
    """The one check of an export's options: a ValueError naming the problem and the fix."""
    if decoder_weights not in DECODER_WEIGHTS:
        raise ValueError(
            f"decoder_weights must be one of {DECODER_WEIGHTS}, got {decoder_weights!r}"
        )
    if portable and decoder_weights != "float32":
        raise ValueError(
            f"decoder_weights={decoder_weights!r} needs ONNX Runtime's MatMulNBits kernel, which "
            "a portable (TensorRT) export cannot hold: export portable graphs in float32, or "
            "quantized graphs without --portable"
        )


def quantize_matmul_weights(path: Path, bits: int) -> None:
    """Rewrites the graph at `path` with its constant-weight MatMuls as MatMulNBits (`bits` 8 or
    4; symmetric, blocks of 32; accuracy level 4: the activations quantized to int8 per block,
    the form ONNX Runtime's x86 and ARM kernels run fastest)."""
    import onnx

    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    finally:
        # its import calls logging.basicConfig at INFO: undone, so that the program keeps its own
        # logging (and its libraries' INFO lines stay quiet)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(root_level)

    config = DefaultWeightOnlyQuantConfig(
        block_size=32, is_symmetric=True, accuracy_level=4, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), algo_config=config)
    quantize_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantize_log.level
    quantize_log.setLevel(logging.WARNING)  # a line per node it skips or quantizes
    try:
        quantizer.process()
    finally:
        quantize_log.setLevel(level)
    model = quantizer.model.model
    if not any(node.op_type == "MatMulNBits" for node in model.graph.node):
        raise RuntimeError(f"{path.name}: no matmul weights were quantized")
    onnx.save(model, str(path))


def export_pipeline(
    pipeline_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    verify: bool = True,
    portable: bool = False,
    decoder_weights: str = "float32",
) -> dict:
    """Exports the pipeline directory's sub-models to `out_dir` (replaced atomically); returns the
    manifest. `portable`: standard ONNX operators only (for TensorRT); `decoder_weights`: one of
    DECODER_WEIGHTS (see the module docstring)."""
    check_export_options(portable, decoder_weights)
    from illume_detokenizer import DetokenizerPipeline
    from illume_mllm import IllumeForConditionalGeneration, IllumeProcessor
    from illume_tokenizer import SemanticTokenizer

    pipeline_dir = Path(pipeline_dir)
    check_replaceable(out_dir, EXPORT_KIND)  # before minutes of export, not after
    for part in ("tokenizer", "mllm", "detokenizer"):
        if not (pipeline_dir / part).is_dir():
            raise FileNotFoundError(
                f"{pipeline_dir} has no {part}/: pass a pipeline directory (IllumePipeline.save_pretrained, `illume demo`)"
            )
    tokenizer = SemanticTokenizer.from_pretrained(pipeline_dir / "tokenizer").eval()
    model = IllumeForConditionalGeneration.from_pretrained(pipeline_dir / "mllm").eval()
    processor = IllumeProcessor.from_pretrained(pipeline_dir / "mllm")
    detokenizer = DetokenizerPipeline.from_pretrained(pipeline_dir / "detokenizer")
    with atomic_directory(out_dir, EXPORT_KIND) as tmp:
        manifest = export_models(
            tokenizer,
            model,
            processor,
            detokenizer,
            Path(tmp),
            verify=verify,
            portable=portable,
            decoder_weights=decoder_weights,
        )
    return manifest


@torch.no_grad()
def export_models(
    tokenizer,
    model,
    processor,
    detokenizer,
    out: Path,
    verify: bool = True,
    portable: bool = False,
    decoder_weights: str = "float32",
) -> dict:
    """Exports into `out` (which must exist) and writes the manifest there."""
    check_export_options(portable, decoder_weights)
    out = Path(out)
    graphs: dict[str, tuple[nn.Module, tuple, GraphSpec]] = {}
    size = tokenizer.config.image_size
    h, w = tokenizer.grid
    pixels = torch.rand(2, 3, size, size)
    graphs["tokenizer_encoder"] = (
        _Encoder(tokenizer),
        (pixels,),
        GraphSpec(
            "tokenizer_encoder.onnx", ["pixel_values"], ["codes"], {"pixel_values": {0: "batch"}}
        ),
    )
    codes = torch.randint(0, tokenizer.codebook_size, (2, h, w))
    graphs["tokenizer_decoder"] = (
        _FeatureDecoder(tokenizer),
        (codes,),
        GraphSpec("tokenizer_decoder.onnx", ["codes"], ["features"], {"codes": {0: "batch"}}),
    )

    vision = model.config.vision_config
    image = torch.rand(2, 3, vision.image_size, vision.image_size)
    graphs["vision_adapter"] = (
        _Adapter(model),
        (image,),
        GraphSpec(
            "vision_adapter.onnx",
            ["pixel_values"],
            ["image_features"],
            {"pixel_values": {0: "images"}},
        ),
    )

    # RMSNorm as a division: ONNX Runtime fuses it into one kernel (FlatDecoder's norm_form);
    # rotary attention as ONNX Runtime's contrib kernels unless asked for a portable graph, or the
    # model shares key/value heads between queries (MultiHeadAttention has one head count)
    text = model.config.text_config
    shared_kv = (text.num_key_value_heads or text.num_attention_heads) != text.num_attention_heads
    attention_form = "decomposed" if portable or shared_kv else "contrib"
    decoder = FlatDecoder(model, norm_form="divide", attention_form=attention_form)
    s = decoder.shape
    ids = torch.randint(0, s.vocab, (2, 5))
    grid = decoder.grid_embedding is not None
    cells = (torch.tensor([[-1, 0, 1, h * w - 1, -1], [2, -1, 3, 4, 5]]),) if grid else ()
    cell_names = ["grid_positions"] if grid else []
    embeddings = (_GridEmbeddings if grid else _Embeddings)(decoder)
    graphs["embeddings"] = (
        embeddings,
        (ids, *cells),
        GraphSpec(
            "embeddings.onnx",
            ["input_ids", *cell_names],
            ["inputs_embeds"],
            {n: {0: "batch", 1: "sequence"} for n in ["input_ids", *cell_names]},
        ),
    )
    embeds = torch.randn(2, 5, s.hidden)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    presents = kv_names(s.layers, "present")
    graphs["prefill"] = (
        _Prefill(decoder),
        (embeds, mask, positions),
        GraphSpec(
            "prefill.onnx",
            ["inputs_embeds", "attention_mask", "position_ids"],
            ["logits", *presents],
            {
                "inputs_embeds": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "position_ids": {0: "batch", 1: "sequence"},
            },
        ),
    )
    past_names = kv_names(s.layers, "past_key_values")
    past = tuple(torch.randn(2, s.kv_heads, 5, s.head_dim) for _ in past_names)
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    step_cells = tuple(c[:, 1:2] for c in cells)
    graphs["decode"] = (
        _Decode(decoder),
        (ids[:, :1], step_mask, positions[:, -1:] + 1, *step_cells, *past),
        GraphSpec(
            "decode.onnx",
            ["input_ids", "attention_mask", "position_ids", *cell_names, *past_names],
            ["logits", *presents],
            {
                "input_ids": {0: "batch"},
                "attention_mask": {0: "batch", 1: "past_sequence + 1"},
                "position_ids": {0: "batch"},
                **{n: {0: "batch"} for n in cell_names},
                **{n: {0: "batch", 2: "past_sequence"} for n in past_names},
            },
        ),
    )

    window = 3
    window_mask = torch.cat([mask, torch.ones(2, window, dtype=mask.dtype)], dim=1)
    window_cells = tuple(c[:, 1 : 1 + window] for c in cells)
    graphs["decode_window"] = (
        _DecodeWindow(decoder, processor.vocab.vision_ids),
        (ids[:, :window], window_mask, positions[:, -1:] + 1 + torch.arange(window),
         *window_cells, *past),
        GraphSpec(
            "decode_window.onnx",
            ["input_ids", "attention_mask", "position_ids", *cell_names, *past_names],
            ["vision_logits", *presents],
            {
                "input_ids": {0: "batch", 1: "window"},
                "attention_mask": {0: "batch", 1: "past_sequence + window"},
                "position_ids": {0: "batch", 1: "window"},
                **{n: {0: "batch", 1: "window"} for n in cell_names},
                **{n: {0: "batch", 2: "past_sequence"} for n in past_names},
            },
        ),
    )  # fmt: skip

    conditioner = detokenizer.conditioner
    features = tokenizer.decode_features(codes)
    conditions = conditioner(features)
    condition_names = ["encoder_hidden_states"]
    condition_names += ["spatial"] if conditions.spatial is not None else []
    condition_names += ["text_embeds"] if conditions.pooled is not None else []
    graphs["conditioner"] = (
        _Conditioner(conditioner),
        (features,),
        GraphSpec("conditioner.onnx", ["features"], condition_names, {"features": {0: "batch"}}),
    )
    sample = torch.randn(2, *unet_sample_shape(detokenizer))
    extra_names, extra = [], []
    if conditions.spatial is not None:
        extra_names.append("spatial"), extra.append(conditions.spatial)
    if conditions.pooled is not None:
        extra_names.append("text_embeds"), extra.append(conditions.pooled)
    step = _UNetStep(detokenizer, conditions.spatial is not None, conditions.pooled is not None)
    graphs["unet_step"] = (
        step,
        (sample, torch.tensor([10.0, 500.0]), conditions.encoder_hidden_states, *extra),
        GraphSpec(
            "unet_step.onnx",
            ["sample", "timestep", "encoder_hidden_states", *extra_names],
            ["prediction"],
            {
                n: {0: "batch"}
                for n in ["sample", "timestep", "encoder_hidden_states", *extra_names]
            },
        ),
    )

    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("exporting ONNX graphs", total=len(graphs))
        for name, (module, args, spec) in graphs.items():
            progress.update(task, description=f"exporting {name}")
            _export(module, args, out / spec.file, spec, contrib=attention_form == "contrib")
            if verify:  # the float graph against PyTorch, before any quantization
                _verify(module, args, out / spec.file, spec)
            if decoder_weights != "float32" and name in DECODER_GRAPHS:
                progress.update(task, description=f"quantizing {name} ({decoder_weights})")
                quantize_matmul_weights(out / spec.file, bits=int(decoder_weights[3:]))
                if verify:
                    _check_runs(out / spec.file, spec, args)
            progress.advance(task)

    vocab = processor.vocab
    manifest = {
        "format": "illume-onnx/1",
        "opset": OPSET,
        "dtype": "float32",
        "graphs": {name: asdict(spec) for name, (_, _, spec) in graphs.items()},
        "decoder": asdict(s),
        # "contrib": the decoder graphs use ONNX Runtime's com.microsoft kernels (not TensorRT's)
        "attention_form": attention_form,
        # "int8" / "int4": the decoder layers' matmuls as MatMulNBits (ONNX Runtime only)
        "decoder_weights": decoder_weights,
        # the language model's context: prompt and drawing together must fit it
        "context": int(model.config.text_config.max_position_embeddings),
        "grid_embeddings": grid,
        "vision": {
            "image_size": vision.image_size,
            "image_seq_length": model.config.image_seq_length,
        },
        "tokenizer": {"image_size": size, "grid": [h, w], "codebook_size": tokenizer.codebook_size},
        "vocab": {
            "image": vocab.image,
            "start_of_image": vocab.start_of_image,
            "end_of_image": vocab.end_of_image,
            "end_of_line": vocab.end_of_line,
            "offset": vocab.offset,
            "codebook_size": vocab.codebook_size,
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    # What a deployer needs beside the graphs: the prompt processor, and the null condition that
    # the conditioner graph turns into the unconditional branch of the detokenizer's CFG.
    processor.save_pretrained(out / "processor")
    np.save(out / "null_features.npy", conditioner.null_features.detach().float().numpy())
    text = json.dumps(manifest, indent=2)
    (out / MANIFEST).write_text(text)
    return json.loads(text)  # as a reader sees it (axis numbers become strings)


def unet_sample_shape(pipe) -> tuple[int, int, int]:
    """(C, h, w) of what a DetokenizerPipeline denoises: what its U-Net predicts (the channels it
    takes besides are those the pipeline adds itself: feature grid, coordinates, patch places)."""
    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return pipe.unet.config.out_channels, h, w


def _verify(
    module: nn.Module,
    args: tuple,
    path: Path,
    spec: GraphSpec,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> None:
    """Runs the graph once in ONNX Runtime (CPU) against PyTorch; raises on a mismatch."""
    import numpy as np

    from .ort import onnxruntime

    try:
        ort = onnxruntime()
    except ImportError as err:
        raise ImportError(
            f"{err}; or export with verify=False (`illume export --no-verify`)"
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(spec.inputs, args, strict=True)})
    want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    for name, g, t in zip(spec.outputs, got, want, strict=True):
        t = t.numpy()
        if g.shape != t.shape or not np.allclose(g, t, atol=atol, rtol=rtol):
            raise RuntimeError(
                f"{path.name}: output {name} differs from PyTorch (shapes {g.shape} vs {t.shape}, "
                f"max |diff| {np.abs(g - t).max() if g.shape == t.shape else 'n/a'})"
            )


def _check_runs(path: Path, spec: GraphSpec, args: tuple) -> None:
    """A quantized graph computes other numbers than PyTorch's: it must load and give finite
    outputs of PyTorch's shapes (how close its drawings stay is a benchmark's question)."""
    from .ort import onnxruntime

    session = onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(spec.inputs, args, strict=True)})
    for name, value in zip(spec.outputs, got, strict=True):
        if not np.isfinite(value).all():
            raise RuntimeError(f"{path.name}: output {name} is not finite after quantization")

"""Image-token generation speed: the fast runtimes against the reference, side by side (issue: runtime).

The reference is `illume_mllm.generate_image_tokens` (transformers' `generate`, CFG through a logits
processor). Against it, in one run on the same model and prompts: the fast PyTorch loop
(`TorchImageGenerator`) and the ONNX Runtime loop over exported graphs (`OnnxImageGenerator`).
All three draw the same codes for the same seed, which the benchmark checks as it goes.

- CPU, ShapesWorld-scale model (the `shapes` presets; random weights, since speed does not depend on
  them; `--model DIR` takes a trained pipeline directory instead): image tokens per second with
  CFG for 1, 4 and 16 images; tokenizer encode images/s and one detokenizer U-Net step (CFG batch),
  PyTorch against ONNX Runtime.
- Decode-step roofline: one CFG decode step of the fast loop against the memory-bandwidth bound
  (bytes of weights + KV cache read per step / measured copy bandwidth). On a GPU: a Llama-7B-shaped
  model with random bf16 weights (nothing to download), with the reference's step next to it; on
  a CPU: the ShapesWorld model, as a stand-in until a GPU run; and the exported decode graph's
  step in ONNX Runtime against the same bound, with its rotary attention as ONNX Runtime's fused
  kernels (the export's default) and in standard operators (`portable=True`, TensorRT's).
  Weights counted: the layers and the LM head's vision rows (one row of the embedding table).

- Weight-only quantized decoder graphs (`illume export --decoder-weights int8|int4`): the ONNX
  loop over them in the speed table ("onnx-int8", "onnx-int4": other codes than the reference's
  for a seed, so they are listed beside the exact runtimes, not counted in cpu_speedup_N), their
  decode step against their own bound (their weights' bytes) and the float bound; with `--model`
  and `--data SPLIT_DIR` (validation; its sibling train split names what each code stands for),
  the unseen-prompt text-to-image score at the level of codes (`code_t2i_quality`: what the
  quantization changes, the detokenizer left out) of each export over `--seeds` sampling seeds,
  and each quantized export's paired difference from float32 with a verdict against a 0.02 loss.

- Speculative Jacobi decoding (`--sjd`): the torch loop plain against SJD at each batch size,
  forward passes per call and images per second (at the pipeline's sampling); with `--data
  SPLIT_DIR` (and `--model`), the unseen-prompt text-to-image score of each at the level of codes
  (what the decoding changes; the detokenizer both share is left out) over `--seeds` sampling
  seeds, `--drawings` drawings of every prompt a seed, which SJD must keep (it draws from the
  same distribution): the difference SJD - plain paired by prompt (each prompt's share of correct
  drawings over every seed, so that the prompts' own difficulty drops out), with a verdict of
  equivalence within 0.02 both ways.

Prints tables, then one JSON object on its last line with keys cpu_speedup_1, cpu_speedup_4,
cpu_speedup_16: the fastest runtime over the reference (named in cpu_fastest_N; every runtime's
ratio in cpu_speedups_N: torch, torch-compiled, onnx); and gpu_roofline_fraction, gpu_speedup_1
where a GPU ran; cpu_roofline (the torch loop's step), cpu_roofline_onnx and
cpu_roofline_onnx_portable ({step_ms, bound_ms, roofline_fraction}); cpu_speedup_quantized_N
(each quantized export over the reference), cpu_roofline_onnx_int8 / _int4 (also
float_bound_fraction); with --model and --data, t2i_unseen_codes ({export: score per seed}) and
quantized_difference_EXPORT; with --sjd, sjd_RUNTIME_N ({passes, images_per_second} of plain and sjd,
the torch loop's and ONNX Runtime's) and, with --data, sjd_t2i_unseen_codes (each seed's score, plain
and sjd) and sjd_difference ({mean, low, high, prompts, drawings, within_0.02}).

Run: .venv/bin/python benchmarks/generation_speed.py [--model PIPELINE_DIR] [--repeats 3]
     [--sjd [--data DATA/validation --seeds 0 1 2 --t2i-prompts 1000 --drawings 16]]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle to the left of a yellow circle",
    "a purple square above a cyan triangle",
    "a yellow circle and a red square",
]


#: the weight-only quantized exports timed beside float32 (`illume export --decoder-weights`)
QUANTIZED = ("int8", "int4")

#: timed calls of a single decode step (a millisecond each on the CPU): the best of few is noise
STEP_REPEATS = 50


def shapes_pipeline(root: Path):
    """A ShapesWorld-scale tokenizer, MLLM and detokenizer with random weights (the shipped presets)."""
    from illume_detokenizer import DetokenizerConfig, build_pipeline
    from illume_mllm import LLM_PRESETS, build_model, build_processor, build_word_tokenizer
    from illume_tokenizer import (
        SemanticTokenizer,
        TokenizerConfig,
        VisionEncoder,
        build_siglip,
        siglip_image_processor,
    )

    torch.manual_seed(0)
    words = build_word_tokenizer(
        [*PROMPTS, "generate an image of .", "how many circles are there ?"]
    )
    build_siglip("shapes", vocab_size=len(words)).save_pretrained(root / "encoder")
    siglip_image_processor(32).save_pretrained(root / "encoder")
    config = TokenizerConfig.from_name("shapes")
    tokenizer = SemanticTokenizer(
        config, VisionEncoder.from_pretrained(root / "encoder", config.feature_layer)
    ).eval()
    processor = build_processor(
        words, root / "encoder", tokenizer.codebook_size, tokenizer.grid, preset="shapes"
    )
    model = build_model(
        processor, root / "encoder", LLM_PRESETS["shapes"], vision_feature_layer=-2
    ).eval()
    detok = build_pipeline(
        DetokenizerConfig.from_name("shapes"),
        tokenizer.config.feature_dim,
        tokenizer.grid[0] * tokenizer.grid[1],
        tokenizer.grid,
    )
    return tokenizer, model, processor, detok


def load_pipeline(directory: Path):
    from illume_detokenizer import DetokenizerPipeline
    from illume_mllm import IllumeForConditionalGeneration, IllumeProcessor
    from illume_tokenizer import SemanticTokenizer

    return (
        SemanticTokenizer.from_pretrained(directory / "tokenizer").eval(),
        IllumeForConditionalGeneration.from_pretrained(directory / "mllm").eval(),
        IllumeProcessor.from_pretrained(directory / "mllm"),
        DetokenizerPipeline.from_pretrained(directory / "detokenizer"),
    )


def best_seconds(fn, repeats: int) -> float:
    """Best of `repeats` timed calls after one warm-up (the usual way to time on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best_seconds(runs: dict, repeats: int) -> dict:
    """Best of `repeats` timed calls of each, one call of each in turn per round (after one
    warm-up each): a ratio between runtimes then compares calls made minutes apart neither in
    time nor in the machine's load, which drifts on a shared machine."""
    for fn in runs.values():
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def copy_bandwidth(device: str) -> float:
    """Measured bytes/s of a large tensor copy (read + write) on `device`."""
    n = (1 << 28) if device == "cuda" else (1 << 26)  # 1 GiB / 256 MiB of fp32
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * src.element_size() / seconds


def step_kv_length(processor) -> int:
    """The KV length a timed decode step attends over: a 64-token prompt and one image."""
    h, w = processor.config.image_grid
    return 64 + h * (w + 1) + 2


def step_weight_bytes(model, processor) -> int:
    """Bytes of weights a decode step reads: the layers, the final norm and the vision rows of the
    LM head (of the embedding table it reads one row a token: left out)."""
    lm, embedding = model.language_model, model.language_model.embed_tokens.weight
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if p is not embedding)
    vision = processor.vocab.vision_ids
    rows = model.lm_head.weight[vision.start : vision.stop]
    return weights + rows.numel() * rows.element_size()


def quantized_weight_bytes(path: Path) -> tuple[int, int]:
    """(bytes stored, bytes as float32) of a graph's MatMulNBits weights (codes, scales and zero
    points, against K x N float32 each): what quantization takes off a step's reads."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    sizes = {w.name: numpy_helper.to_array(w).nbytes for w in graph.initializer}
    stored = as_float = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            shape = {a.name: a.i for a in node.attribute}
            stored += sum(sizes.get(name, 0) for name in node.input[1:])
            as_float += shape["K"] * shape["N"] * 4
    return stored, as_float


def onnx_decode_roofline(models, model, processor, repeats: int) -> dict:
    """One CFG decode step (2 rows) of the exported decode graph in ONNX Runtime, fed and read as
    `OnnxImageGenerator` does (OrtValues through IO binding), against the bandwidth bound at the
    KV length of `decode_roofline` (for quantized weights, the bytes they are stored in; and
    float_bound_fraction: against the float32 graph's bound)."""
    import numpy as np

    s = models.manifest["decoder"]
    length, rows = step_kv_length(processor), 2
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": np.zeros((rows, 1), np.int64),
        "attention_mask": np.ones((rows, length), np.int64),
        "position_ids": np.full((rows, 1), length - 1, np.int64),
    }
    if models.manifest.get("grid_embeddings"):
        feeds["grid_positions"] = np.zeros((rows, 1), np.int64)
    for i in range(s["layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (rows, s["kv_heads"], length - 1, s["head_dim"]), dtype=np.float32
            )
    bound_feeds = {k: models.ortvalue(v) for k, v in feeds.items()}
    step = best_seconds(lambda: models.run_bound("decode", bound_feeds), max(repeats, STEP_REPEATS))
    cache = 2 * s["layers"] * rows * s["kv_heads"] * length * s["head_dim"] * 4
    weights = step_weight_bytes(model, processor)
    bandwidth = copy_bandwidth("cpu")
    figures = {}
    if models.manifest.get("decoder_weights", "float32") != "float32":
        stored, as_float = quantized_weight_bytes(models.directory / "decode.onnx")
        figures["float_bound_fraction"] = (weights + cache) / bandwidth / step
        weights += stored - as_float
    bound = (weights + cache) / bandwidth
    return {"step_ms": step * 1e3, "bound_ms": bound * 1e3, "roofline_fraction": bound / step,
            **figures}  # fmt: skip


def decode_roofline(model, processor, device: str, repeats: int, reference: bool) -> dict:
    """One CFG decode step (2 rows) of the fast loop, and optionally of transformers' forward with a
    DynamicCache, against bytes-read / bandwidth at a KV length of prompt + one image."""
    from transformers import DynamicCache

    from illume_mllm import FlatDecoder

    decoder = FlatDecoder(model)
    s, dtype = decoder.shape, decoder.dtype
    length, rows = step_kv_length(processor), 2
    k = torch.randn(s.layers, rows, s.kv_heads, length, s.head_dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    bias = torch.zeros(rows, 1, 1, length, dtype=dtype, device=device)
    slot = torch.tensor([length - 1], device=device)
    position = torch.full((rows, 1), length - 1, device=device)
    token = torch.zeros(rows, 1, dtype=torch.long, device=device)
    vision = processor.vocab.vision_ids

    @torch.no_grad()
    def fast_step():
        hidden = decoder.forward_static(decoder.embed_tokens(token), position, bias, k, v, slot)
        return decoder.logits(hidden, slice(vision.start, vision.stop))

    step = best_seconds(fast_step, max(repeats, STEP_REPEATS))
    weights = step_weight_bytes(model, processor)
    cache = 2 * k.numel() * k.element_size()
    bound = (weights + cache) / copy_bandwidth(device)
    out = {
        "step_ms": step * 1e3,
        "bound_ms": bound * 1e3,
        "roofline_fraction": bound / step,
        "weights_gb": weights / 1e9,
        "kv_gb": cache / 1e9,
    }
    if reference:
        past = DynamicCache()
        for i in range(s.layers):
            past.update(k[i, :, :, :-1], v[i, :, :, :-1], i)
        mask = torch.ones(rows, length, dtype=torch.long, device=device)

        @torch.no_grad()
        def reference_step():
            if past.get_seq_length() == length:  # drop the previous call's token
                past.crop(-1)
            return model(
                input_ids=token,
                attention_mask=mask,
                position_ids=position,
                past_key_values=past,
                use_cache=True,
            ).logits

        out["reference_step_ms"] = best_seconds(reference_step, repeats) * 1e3
    return out


def gpu_model(processor_dir: Path):
    """A Llama-7B-shaped ILLUME MLLM with random bf16 weights on the GPU (Vicuna-7B's sizes)."""
    from illume_mllm import build_model, build_processor, build_word_tokenizer
    from illume_tokenizer import build_siglip, siglip_image_processor

    words = build_word_tokenizer(PROMPTS)
    build_siglip("tiny", vocab_size=len(words)).save_pretrained(processor_dir)
    siglip_image_processor(32).save_pretrained(processor_dir)
    processor = build_processor(words, processor_dir, 16384, (24, 24), preset="shapes")
    llm = {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    }
    with torch.device("meta"):
        model = build_model(processor, processor_dir, llm, load_weights=False)
    model = model.to_empty(device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    # Buffers came from the meta device empty: the rotary table is rebuilt from the config.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.model.language_model.rotary_emb = LlamaRotaryEmbedding(
        model.config.text_config, device="cuda"
    )
    return model.eval(), processor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a trained pipeline directory (default: shapes presets, random weights)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--sjd", action="store_true", help="plain against SJD in the torch loop")
    parser.add_argument("--window", type=int, default=16, help="SJD's window (default 16)")
    parser.add_argument(
        "--data", default=None, help="a validation split: SJD's or the quantized exports' t2i score"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--t2i-prompts", type=int, default=60)
    parser.add_argument(
        "--drawings", type=int, default=2, help="--sjd --data: drawings of each prompt a seed"
    )
    args = parser.parse_args()
    if args.sjd:
        return sjd_main(args)

    from illume_mllm import TorchImageGenerator, generate_image_tokens
    from illume_runtime import OnnxImageGenerator, OnnxModels, export_models
    from illume_runtime.export import unet_sample_shape

    workdir = Path(tempfile.mkdtemp(prefix="illume-speed-"))
    tokenizer, model, processor, detok = (
        load_pipeline(Path(args.model)) if args.model else shapes_pipeline(workdir / "parts")
    )
    figures: dict = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    fast = TorchImageGenerator(model, processor)
    compiled = TorchImageGenerator(model, processor, compile=True)
    onnx_loop, quantized = None, {}
    if not args.skip_onnx:
        start = time.perf_counter()
        export_models(tokenizer, model, processor, detok, _mkdir(workdir / "onnx"))
        figures["export_seconds"] = round(time.perf_counter() - start, 1)
        models = OnnxModels(workdir / "onnx")
        onnx_loop = OnnxImageGenerator(models, processor)
        # the same graphs in standard operators only (TensorRT's), for the decode step's table
        export_models(
            tokenizer, model, processor, detok, _mkdir(workdir / "onnx-portable"), portable=True
        )
        for weights in QUANTIZED:
            directory = _mkdir(workdir / f"onnx-{weights}")
            export_models(tokenizer, model, processor, detok, directory, decoder_weights=weights)
            quantized[f"onnx-{weights}"] = OnnxImageGenerator(OnnxModels(directory), processor)

    tokens_per_image = processor.config.image_grid[0] * processor.config.image_grid[1]
    rows = []
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        conversations = [processor.t2i_messages(p) for p in prompts]
        unconditional = [processor.t2i_messages("")] * batch
        loops = {
            "reference": partial(generate_image_tokens, model, processor),
            "torch": fast,
            "torch-compiled": compiled,
        }
        if onnx_loop is not None:
            loops["onnx"] = onnx_loop
            loops.update(quantized)
        runners = {
            name: partial(loop, conversations, unconditional, guidance=args.guidance)
            for name, loop in loops.items()
        }
        codes = {
            name: run(generator=torch.Generator().manual_seed(0)) for name, run in runners.items()
        }
        # the quantized graphs compute other logits: their codes differ by design
        exact = [name for name in codes if name not in quantized]
        identical = all(torch.equal(codes[name], codes["reference"]) for name in exact)
        seconds = interleaved_best_seconds(
            {
                name: lambda run=run: run(generator=torch.Generator().manual_seed(0))
                for name, run in runners.items()
            },
            args.repeats,
        )
        speed = {name: batch * tokens_per_image / seconds[name] for name in runners}
        rows.append((batch, speed, identical))
        # The headline is the fastest runtime that gives the reference's codes; each one is listed.
        fastest = max((name for name in exact if name != "reference"), key=speed.get)
        if quantized:
            figures[f"cpu_speedup_quantized_{batch}"] = {
                name: round(speed[name] / speed["reference"], 2) for name in quantized
            }
        figures[f"cpu_speedup_{batch}"] = round(speed[fastest] / speed["reference"], 2)
        figures[f"cpu_fastest_{batch}"] = fastest
        figures[f"cpu_speedups_{batch}"] = {
            k: round(v / speed["reference"], 2) for k, v in speed.items() if k != "reference"
        }
        figures[f"tokens_per_second_{batch}"] = {k: round(v, 1) for k, v in speed.items()}
        figures[f"codes_identical_{batch}"] = identical

    if onnx_loop is not None:  # the other sub-models, PyTorch against ONNX Runtime
        pixels = torch.rand(64, 3, tokenizer.config.image_size, tokenizer.config.image_size)
        with torch.no_grad():
            torch_encode = best_seconds(lambda: tokenizer.encode(pixels), args.repeats)
        ort_encode = best_seconds(
            lambda: models.run("tokenizer_encoder", pixel_values=pixels.numpy()), args.repeats
        )
        figures["encode_images_per_second"] = {
            "torch": round(64 / torch_encode, 1),
            "onnx": round(64 / ort_encode, 1),
        }
        codes = torch.randint(0, tokenizer.codebook_size, (2, *tokenizer.grid))
        with torch.no_grad():
            conditions = detok.conditioner(tokenizer.decode_features(codes))
            sample = torch.randn(2, *unet_sample_shape(detok))
            t = torch.tensor([500.0, 500.0])
            torch_step = best_seconds(lambda: detok.predict(sample, t, conditions), args.repeats)
        feeds = {
            "sample": sample.numpy(),
            "timestep": t.numpy(),
            "encoder_hidden_states": conditions.encoder_hidden_states.numpy(),
        }
        if conditions.spatial is not None:
            feeds["spatial"] = conditions.spatial.numpy()
        ort_step = best_seconds(lambda: models.run("unet_step", **feeds), args.repeats)
        figures["unet_step_ms"] = {
            "torch": round(torch_step * 1e3, 2),
            "onnx": round(ort_step * 1e3, 2),
        }

    figures["cpu_roofline"] = {
        k: round(v, 4)
        for k, v in decode_roofline(model, processor, "cpu", args.repeats, True).items()
    }
    if onnx_loop is not None:
        exports = [("onnx", "onnx"), ("onnx_portable", "onnx-portable")]
        exports += [(f"onnx_{w}", f"onnx-{w}") for w in QUANTIZED]
        for name, directory in exports:
            export = OnnxModels(workdir / directory)
            roof = onnx_decode_roofline(export, model, processor, args.repeats)
            figures[f"cpu_roofline_{name}"] = {k: round(v, 4) for k, v in roof.items()} | {
                "attention_form": export.manifest["attention_form"]
            }
        if args.model and args.data:
            figures |= quantized_scores(args, workdir, QUANTIZED)
    if torch.cuda.is_available():
        big, big_processor = gpu_model(workdir / "gpu-processor")
        roof = decode_roofline(big, big_processor, "cuda", args.repeats, reference=True)
        figures["gpu"] = {k: round(v, 4) for k, v in roof.items()} | {
            "device": torch.cuda.get_device_name()
        }
        figures["gpu_roofline_fraction"] = round(roof["roofline_fraction"], 3)
        figures["gpu_speedup_1"] = round(roof["reference_step_ms"] / roof["step_ms"], 2)

    print(f"{'images':>6} {'runtime':<14} {'tokens/s':>10} {'x reference':>12}  same codes")
    for batch, speed, identical in rows:
        for name, value in speed.items():
            same = "no (quantized)" if name.startswith("onnx-int") else identical
            print(
                f"{batch:>6} {name:<14} {value:>10.1f} {value / speed['reference']:>12.2f}  {same}"
            )
    keys = ("encode_images_per_second", "unet_step_ms", "cpu_roofline", "cpu_roofline_onnx")
    keys += ("cpu_roofline_onnx_portable", *(f"cpu_roofline_onnx_{w}" for w in QUANTIZED))
    for key in (*keys, "t2i_unseen_codes", *(f"quantized_difference_{w}" for w in QUANTIZED),
                "gpu"):  # fmt: skip
        if key in figures:
            print(f"{key}: {figures[key]}")
    print(json.dumps(figures))


def quantized_scores(args, workdir: Path, quantized: tuple[str, ...]) -> dict:
    """The unseen-prompt text-to-image score at the level of codes of the float32 export and each
    quantized one, per sampling seed, and each quantized one's paired difference from float32
    (units: sampling seeds, the same prompts in both) against a loss of 0.02."""
    from illume.pipeline import IllumePipeline
    from illume_eval.metrics import paired_difference
    from illume_eval.shapes.evaluation import code_contents, code_t2i_quality
    from illume_eval.shapes.splits import UNSEEN_TAGS

    pipe = IllumePipeline.from_pretrained(args.model)
    contents = code_contents(pipe.tokenizer, Path(args.data).parent / "train")
    scores: dict = {}
    for weights in ("float32", *quantized):
        pipe.use_runtime(
            "onnx", onnx_dir=workdir / ("onnx" if weights == "float32" else f"onnx-{weights}")
        )
        scores[weights] = []
        for seed in args.seeds:
            result = code_t2i_quality(pipe, args.data, contents, n=args.t2i_prompts, seed=seed,
                                      tags=UNSEEN_TAGS)  # fmt: skip
            scores[weights].append(round(result["summary"]["overall"], 4))
            print(f"t2i_unseen (codes) {weights} seed {seed}: {scores[weights][-1]} "
                  f"({result['drawings']} drawings)")  # fmt: skip
    figures: dict = {"t2i_unseen_codes": scores}
    for weights in quantized:
        difference = paired_difference(scores[weights], scores["float32"], margin=0.02)
        figures[f"quantized_difference_{weights}"] = difference.describe()
    return figures


def sjd_scores(args) -> dict:
    """The unseen-prompt text-to-image score at the level of codes of plain sampling and SJD, per
    sampling seed, and SJD - plain paired by prompt: each prompt's share of correct drawings over
    every seed in each decoding. SJD keeps the distribution, so the two must agree: equivalent
    when the interval lies inside +-0.02."""
    from collections import defaultdict

    from illume.pipeline import IllumePipeline
    from illume_eval.metrics import paired_difference
    from illume_eval.shapes.evaluation import code_contents, code_t2i_quality
    from illume_eval.shapes.splits import UNSEEN_TAGS

    pipe = IllumePipeline.from_pretrained(args.model)
    contents = code_contents(pipe.tokenizer, Path(args.data).parent / "train")
    scores: dict = {"plain": [], "sjd": []}
    correct: dict = {"plain": defaultdict(list), "sjd": defaultdict(list)}  # prompt: verdicts
    for seed in args.seeds:
        for decoding in ("plain", "sjd"):
            pipe.sampling.decoding, pipe.sampling.sjd_window = decoding, args.window
            result = code_t2i_quality(pipe, args.data, contents, n=args.t2i_prompts, seed=seed,
                                      images_per_prompt=args.drawings, tags=UNSEEN_TAGS)  # fmt: skip
            scores[decoding].append(round(result["summary"]["overall"], 4))
            for record in result["records"]:
                correct[decoding][record["prompt"]].append(float(record["correct"]))
            print(f"t2i_unseen (codes) seed {seed} {decoding}: {scores[decoding][-1]} "
                  f"({result['drawings']} drawings)")  # fmt: skip
    prompts = sorted(correct["plain"])
    share = {k: [sum(v[p]) / len(v[p]) for p in prompts] for k, v in correct.items()}
    d = paired_difference(share["sjd"], share["plain"], margin=0.02)
    within = d.low > -0.02 and d.high < 0.02
    drawings = len(args.seeds) * args.drawings  # of each prompt, in each decoding
    print(f"SJD - plain, paired by prompt ({len(prompts)} prompts, "
          f"{drawings} drawings each a decoding): {d.mean:+.4f} "
          f"(95% {d.low:+.4f} to {d.high:+.4f}): "
          + ("equivalent within 0.02" if within else "not shown within 0.02"))  # fmt: skip
    difference = {"mean": round(d.mean, 4), "low": round(d.low, 4), "high": round(d.high, 4),
                  "prompts": len(prompts), "drawings": drawings,
                  "within_0.02": within}  # fmt: skip
    return {"sjd_t2i_unseen_codes": scores, "sjd_difference": difference}


def sjd_main(args) -> None:
    """Plain against speculative Jacobi decoding in the torch loop (see the module docstring)."""
    from illume_mllm import TorchImageGenerator

    workdir = Path(tempfile.mkdtemp(prefix="illume-sjd-"))
    tokenizer, model, processor, detok = (
        load_pipeline(Path(args.model)) if args.model else shapes_pipeline(workdir / "parts")
    )
    sampling = {"guidance": args.guidance, "temperature": 1.0}
    if args.model:
        from illume.pipeline import IllumePipeline

        s = IllumePipeline.from_pretrained(args.model).sampling
        sampling = {"guidance": s.guidance, "temperature": s.temperature, "top_k": s.top_k,
                    "top_p": s.top_p}  # fmt: skip
    figures: dict = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                     "sampling": sampling, "window": args.window}  # fmt: skip
    loops = {"torch": TorchImageGenerator(model, processor)}
    if not args.skip_onnx:
        from illume_runtime import OnnxImageGenerator, OnnxModels, export_models

        export_models(tokenizer, model, processor, detok, _mkdir(workdir / "onnx"), verify=False)
        loops["onnx"] = OnnxImageGenerator(OnnxModels(workdir / "onnx"), processor)
    print(f"{'images':>6} {'runtime':<7} {'decoding':<8} {'passes':>7} {'images/s':>9}")
    for batch in args.batches:
        conversations = [processor.t2i_messages(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
        unconditional = [processor.t2i_messages("")] * batch
        for runtime, loop in loops.items():
            row = {}
            for decoding in ("plain", "sjd"):
                passes = []

                def run(decoding=decoding, passes=passes, loop=loop,
                        asked=(conversations, unconditional)):  # fmt: skip
                    loop(*asked, generator=torch.Generator().manual_seed(0), decoding=decoding,
                         window=args.window, **sampling)  # fmt: skip
                    passes.append(loop.forward_passes)

                seconds = best_seconds(run, args.repeats)
                row[decoding] = {
                    "passes": passes[-1],
                    "images_per_second": round(batch / seconds, 2),
                }
                print(
                    f"{batch:>6} {runtime:<7} {decoding:<8} {passes[-1]:>7} {batch / seconds:>9.2f}"
                )
            row["passes_ratio"] = round(row["plain"]["passes"] / row["sjd"]["passes"], 2)
            row["speedup"] = round(
                row["sjd"]["images_per_second"] / row["plain"]["images_per_second"], 2
            )
            figures[f"sjd_{runtime}_{batch}"] = row
    if args.data and args.model:
        figures |= sjd_scores(args)
    print(json.dumps(figures))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main()

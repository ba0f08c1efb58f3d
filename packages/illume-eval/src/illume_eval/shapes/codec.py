"""Figures of the codec's stages on ShapesWorld: the encoder (retrieval), the tokenizer (feature
reconstruction, code use, locality, mean-patch decoding) and the detokenizer (scenes drawn back
from codes), typed by illume-core's `VisionTokenizer` and `Detokenizer`. Images reach a tokenizer
through its encoder's own image processor (`preprocess`), as in serving; the stages train on the
same pixels (integration_tests/test_preprocessing_parity.py). torch is imported inside the
functions (`pip install illume-eval[torch]`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from illume_core import VisionTokenizer, load_image, read_jsonl

from .prompts import PromptSpec, check_spec
from .world import Scene, cell_box

if TYPE_CHECKING:
    import torch


def _scenes(split_dir: Path, n: int | None) -> list[dict]:
    """The first n scenes of a split (all of them when n is None)."""
    rows = read_jsonl(split_dir / "scenes.jsonl")
    rows = rows if n is None else rows[:n]
    if n is not None and len(rows) < n:
        raise ValueError(f"{split_dir} has {len(rows)} scenes, fewer than the {n} asked for")
    return rows


def _images(split_dir: Path, rows: list[dict], key: str = "image") -> list[Image.Image]:
    return [load_image(split_dir / r[key]) for r in rows]


def _uint8(images: list[Image.Image], size: int) -> torch.Tensor:
    """[B, 3, size, size] uint8 pixels of images (bicubic resize where the size differs): the
    originals figures such as PSNR compare with."""
    import torch

    resized = [
        im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BICUBIC)
        for im in images
    ]
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in resized])).permute(
        0, 3, 1, 2
    )


def _eval(module) -> None:
    if hasattr(module, "eval"):  # a torch module: no code-restarts or statistics updates here
        module.eval()


def encoder_retrieval(
    encoder_dir: str | os.PathLike, split_dir: str | os.PathLike, n: int = 100
) -> float:
    """Image-to-caption top-1 among the n captions of a split: right when the retrieved caption is
    true of the image's scene (paraphrases and less specific true captions count)."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    from transformers.utils import logging

    split_dir = Path(split_dir)
    level = logging.get_verbosity()
    logging.set_verbosity_error()  # the text tower's default token ids and skipped keys
    try:
        model = AutoModel.from_pretrained(encoder_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        processor = AutoImageProcessor.from_pretrained(encoder_dir)
    finally:
        logging.set_verbosity(level)
    rows = _scenes(split_dir, n)
    tokenizer.padding_side = "left"
    ids = tokenizer(
        [r["caption"] for r in rows],
        padding="max_length",
        max_length=model.config.text_config.max_position_embeddings,
        truncation=True,
        return_tensors="pt",
    )["input_ids"]
    pixels = processor(images=_images(split_dir, rows), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    best = out.logits_per_image.argmax(-1).tolist()
    correct = [
        check_spec(
            PromptSpec.from_geneval(rows[j]["spec"]), Scene.from_dict(rows[i]["scene"]).objects
        ).correct
        for i, j in enumerate(best)
    ]
    return float(np.mean(correct))


def tokenizer_quality(
    tokenizer: VisionTokenizer,
    split_dir: str | os.PathLike,
    n: int | None = None,
    batch_size: int = 100,
) -> dict[str, float]:
    """Mean cos(x, x_rec), share of the codebook used, and code perplexity over n images of a split."""
    import torch

    split_dir = Path(split_dir)
    rows = _scenes(split_dir, n)
    cosines, codes = [], []
    _eval(tokenizer)
    for start in range(0, len(rows), batch_size):
        pixels = tokenizer.preprocess(_images(split_dir, rows[start : start + batch_size]))
        with torch.no_grad():
            x = tokenizer.features(pixels)
            c = tokenizer.encode(pixels).codes
            x_rec = tokenizer.decode_features(c)
        cosines.append(torch.nn.functional.cosine_similarity(x_rec, x, dim=-1).mean(-1))
        codes.append(c.reshape(-1))
    counts = torch.bincount(torch.cat(codes), minlength=tokenizer.codebook_size).float()
    share = counts / counts.sum()
    perplexity = float(torch.exp(-(share[share > 0] * share[share > 0].log()).sum()))
    return {
        "cosine": float(torch.cat(cosines).mean()),
        "code_usage": float((counts > 0).float().mean()),
        "perplexity": perplexity,
    }


def code_locality(
    tokenizer: VisionTokenizer, split_dir: str | os.PathLike, n: int = 200, batch_size: int = 100
) -> dict[str, float]:
    """How local the codes are, over the recolour edits among the first n of a split's edits.jsonl:
    the share of code positions that change between source and target inside the recoloured
    object's cell (the code rows and columns that overlap it) and outside it. An edit can copy the
    untouched part of an image only when `code_change_outside` is small; a patch-local tokenizer
    has it 0."""
    import torch

    split_dir = Path(split_dir)
    rows = [r for r in read_jsonl(split_dir / "edits.jsonl")[:n] if r["kind"] == "recolor"]
    if not rows:
        raise ValueError(f"{split_dir / 'edits.jsonl'}: no recolour edits among the first {n}")
    _eval(tokenizer)
    (h, w), inside, outside = tokenizer.grid, [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [_images(split_dir, chunk, key) for key in ("source", "target")]
        size = images[0][0].width  # the split's image size
        with torch.no_grad():
            source, target = (tokenizer.encode(tokenizer.preprocess(im)).codes for im in images)
        for r, change in zip(chunk, source != target, strict=True):  # change: [h, w]
            # the code positions whose patches overlap the cell's pixels
            x0, y0, x1, y1 = cell_box((r["edited"]["row"], r["edited"]["col"]), size)
            cell = torch.zeros(h, w, dtype=torch.bool)
            cell[y0 * h // size : -(-y1 * h // size), x0 * w // size : -(-x1 * w // size)] = True
            inside.append(change[cell].float().mean())
            outside.append(change[~cell].float().mean())
    return {
        "code_change_inside": float(torch.stack(inside).mean()),
        "code_change_outside": float(torch.stack(outside).mean()),
        "recolour_edits": len(rows),
    }


def read_drawings(
    images, rows: list[dict]
) -> tuple[list[list[tuple]], list[bool], dict, list[tuple[str, bool]]]:
    """The exact scorer on drawings of a split's scenes (`rows` of scenes.jsonl), one detection per
    image: what it drew (`summary` per image), whether each whole scene was recovered, each image
    scored on its own caption by the GenEval-style rules (per category and overall), and those
    verdicts one by one as (category, correct)."""
    from ..metrics import geneval_summary
    from .detection import detect, summary

    detected = [detect(image) for image in images]
    drawn = [summary(objects) for objects in detected]
    recovered = [
        d == Scene.from_dict(r["scene"]).summary() for d, r in zip(drawn, rows, strict=True)
    ]
    verdicts = [
        (spec.tag, check_spec(spec, objects).correct)
        for spec, objects in zip(
            (PromptSpec.from_geneval(r["spec"]) for r in rows), detected, strict=True
        )
    ]
    return drawn, recovered, geneval_summary(verdicts), verdicts


def to_patches(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, 3, S, S] -> [B, h * w, 3 * p * p]: the image cut into the grid's patches, row by row."""
    import torch.nn.functional as F

    size, (h, w) = pixels.shape[-1], grid
    if size % h or h != w:
        raise ValueError(
            f"a {size}-pixel image does not tile into a {h}x{w} grid of square patches"
        )
    return F.pixel_unshuffle(pixels, size // h).flatten(2).transpose(1, 2)


def from_patches(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `to_patches`: [B, h * w, 3 * p * p] -> [B, 3, S, S]."""
    import torch.nn.functional as F

    b, _, d = patches.shape
    return F.pixel_shuffle(patches.transpose(1, 2).reshape(b, d, *grid), math.isqrt(d // 3))


def mean_patches(codes: torch.Tensor, patches: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """codes [M], patches [M, D] -> [codebook_size, D]: each code's mean patch (zeros if unused)."""
    import torch

    counts = torch.bincount(codes, minlength=codebook_size).to(patches.dtype)
    sums = torch.zeros(codebook_size, patches.shape[-1], dtype=patches.dtype)
    return sums.index_add_(0, codes, patches) / counts.clamp_min(1)[:, None]


def mean_patch_decode(
    tokenizer: VisionTokenizer,
    train_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    n_train: int | None = None,
    n: int = 400,
    batch_size: int = 200,
) -> dict:
    """How much of each scene the codes alone keep, with no detokenizer: every code is drawn as the
    mean of the training patches it stands for, and the exact scorer reads the result.

    Meant for patch-local tokenizers (`feature_layer` 0), whose code at a place is a function of
    that patch's pixels; seconds instead of a detokenizer's training. ShapesWorld's 4x4-pixel
    patches need about 1,000 codes to keep circles apart from squares (benchmarks/RESULTS.md).
    {"scene_recovery", "t2i" (each image scored on its own caption, by category),
    "patch_mse" (validation pixels in [0, 1])}."""
    import torch

    grid = tokenizer.grid
    _eval(tokenizer)

    def codes_and_patches(split: Path, rows: list[dict]):
        codes, patches = [], []
        for start in range(0, len(rows), batch_size):
            images = _images(split, rows[start : start + batch_size])
            normalized = tokenizer.preprocess(images)
            with torch.no_grad():
                codes.append(tokenizer.encode(normalized).codes.flatten(1))
            pixels = _uint8(images, normalized.shape[-1])
            patches.append(to_patches(pixels.float() / 255, grid))
        return torch.cat(codes), torch.cat(patches)

    train_codes, train_patches = codes_and_patches(
        Path(train_dir), _scenes(Path(train_dir), n_train)
    )
    table = mean_patches(
        train_codes.flatten(), train_patches.flatten(0, 1), tokenizer.codebook_size
    )
    rows = _scenes(Path(split_dir), n)
    codes, patches = codes_and_patches(Path(split_dir), rows)
    decoded = table[codes]  # [n, h * w, 3 * p * p]
    images = (from_patches(decoded, grid) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    _, recovered, t2i, _ = read_drawings(images, rows)
    return {
        "scene_recovery": float(np.mean(recovered)),
        "t2i": t2i,
        "patch_mse": float((decoded - patches).pow(2).mean()),
    }


def object_errors(drawn: list[list[tuple]], scenes: list[Scene]) -> dict[str, int]:
    """Where drawings go wrong, per object, matched by grid cell: wrong shape, wrong colour,
    missing (nothing drawn in its cell), extra (something drawn in an empty cell)."""
    errors = {"objects": 0, "right": 0, "shape": 0, "colour": 0, "missing": 0, "extra": 0}
    for found, scene in zip(drawn, scenes, strict=True):
        by_cell = {(row, col): (shape, color) for shape, color, row, col in found}
        truth = {(row, col): (shape, color) for shape, color, row, col in scene.summary()}
        errors["extra"] += len(by_cell.keys() - truth.keys())
        for cell, (shape, color) in truth.items():
            errors["objects"] += 1
            if cell not in by_cell:
                errors["missing"] += 1
                continue
            errors["right"] += by_cell[cell] == (shape, color)
            errors["shape"] += by_cell[cell][0] != shape
            errors["colour"] += by_cell[cell][1] != color
    return errors


def detokenizer_quality(
    tokenizer: VisionTokenizer,
    pipe,
    split_dir: str | os.PathLike,
    n: int = 200,
    samplers: tuple[tuple[str, int], ...] = (("dpm++", 20),),
    guidance: float = 3.0,
    batch_size: int = 50,
    seed: int = 0,
    condition: str = "codes",
) -> dict:
    """Image -> codes -> features -> detokenizer -> image on n images of a split; `pipe`: an
    illume_detokenizer.DetokenizerPipeline.

    `condition="encoder"` conditions on the encoder's own features instead of their reconstruction
    from codes: a diagnostic that separates what quantization costs from what the U-Net costs.

    For each (sampler, steps): the share of images whose whole scene illume-eval's exact scorer
    recovers (every object with its shape, colour and cell, nothing else), the PSNR against the
    original, seconds per image, the per-object `errors` (`object_errors`), and `t2i`: each image
    scored on its own caption by the GenEval-style rules (per category and overall), the
    text-to-image figure of an MLLM that drew every image's own codes (the codec's ceiling). Returns
    {"<sampler>@<steps>": {...}} plus the best as top-level `scene_recovery` and `psnr`.
    """
    if condition not in ("codes", "encoder"):
        raise ValueError(f"condition must be 'codes' or 'encoder', got {condition!r}")
    import torch

    split_dir = Path(split_dir)
    rows = _scenes(split_dir, n)
    images = _images(split_dir, rows)
    _eval(tokenizer)
    features, originals = [], []
    for i in range(0, n, batch_size):
        pixels = tokenizer.preprocess(images[i : i + batch_size])
        originals.append(_uint8(images[i : i + batch_size], pixels.shape[-1]))
        with torch.no_grad():
            if condition == "encoder":
                features.append(tokenizer.features(pixels))
            else:
                features.append(tokenizer.decode_features(tokenizer.encode(pixels).codes))
    features, originals = torch.cat(features), torch.cat(originals)
    scenes = [Scene.from_dict(r["scene"]) for r in rows]
    results: dict = {}
    for sampler, steps in samplers:
        pipe.use_scheduler(sampler)
        start = time.perf_counter()
        pixels = []
        for i in range(0, n, batch_size):
            generators = [
                torch.Generator().manual_seed(seed + j) for j in range(i, min(n, i + batch_size))
            ]
            with torch.no_grad():
                out = pipe(
                    features[i : i + batch_size],
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generators,
                    output_type="pt",
                )
            pixels.append(out.pixels.cpu())
        seconds = (time.perf_counter() - start) / n
        pixels = torch.cat(pixels)
        drawings = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        # scene_recovered's rule, on detections kept for the error breakdown
        drawn, recovered, t2i, verdicts = read_drawings(drawings, rows)
        mse = ((pixels - originals.float() / 255) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        results[f"{sampler}@{steps}"] = {
            "scene_recovery": float(np.mean(recovered)),
            "psnr": float((10 * torch.log10(1 / mse)).mean()),
            "seconds_per_image": round(seconds, 4),
            "errors": object_errors(drawn, scenes),
            "t2i": t2i,
            "t2i_verdicts": verdicts,
        }
    best = max(results.values(), key=lambda r: r["scene_recovery"])
    return {"scene_recovery": best["scene_recovery"], "psnr": best["psnr"], "by_sampler": results}

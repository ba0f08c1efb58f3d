"""Quality figures of trained stages on ShapesWorld (used by the benchmarks and `illume demo`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from illume_core import load_image
from illume_eval.shapes import PromptSpec, Scene, check_spec

from .data import to_tensor
from .stages.common import Normalizer


def _scenes(split_dir: Path, n: int | None) -> list[dict]:
    """The first n scenes of a split (all of them when n is None)."""
    rows = [json.loads(line) for line in (split_dir / "scenes.jsonl").read_text().splitlines()]
    rows = rows if n is None else rows[:n]
    if n is not None and len(rows) < n:
        raise ValueError(f"{split_dir} has {len(rows)} scenes, fewer than the {n} asked for")
    return rows


def _pixels(split_dir: Path, rows: list[dict], size: int) -> torch.Tensor:
    return torch.stack([to_tensor(load_image(split_dir / r["image"]), size) for r in rows])


@torch.no_grad()
def encoder_retrieval(
    encoder_dir: str | os.PathLike, split_dir: str | os.PathLike, n: int = 100
) -> float:
    """Image-to-caption top-1 among the n captions of a split: right when the retrieved caption is
    true of the image's scene (paraphrases and less specific true captions count)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from illume_tokenizer.encoder import quiet_transformers

    split_dir = Path(split_dir)
    with quiet_transformers():
        model = AutoModel.from_pretrained(encoder_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        processor = AutoImageProcessor.from_pretrained(encoder_dir)
    rows = _scenes(split_dir, n)
    size = model.config.vision_config.image_size
    tokenizer.padding_side = "left"
    ids = tokenizer(
        [r["caption"] for r in rows],
        padding="max_length",
        max_length=model.config.text_config.max_position_embeddings,
        truncation=True,
        return_tensors="pt",
    )["input_ids"]
    out = model(
        input_ids=ids,
        pixel_values=Normalizer.for_processor(processor)(_pixels(split_dir, rows, size)),
    )
    best = out.logits_per_image.argmax(-1).tolist()
    correct = [
        check_spec(
            PromptSpec.from_geneval(rows[j]["spec"]), Scene.from_dict(rows[i]["scene"]).objects
        ).correct
        for i, j in enumerate(best)
    ]
    return float(np.mean(correct))


@torch.no_grad()
def tokenizer_quality(
    tokenizer, split_dir: str | os.PathLike, n: int | None = None, batch_size: int = 100
) -> dict[str, float]:
    """Mean cos(x, x_rec), share of the codebook used, and code perplexity over n images of a split."""
    split_dir = Path(split_dir)
    rows = _scenes(split_dir, n)
    normalize = Normalizer.for_processor(tokenizer.encoder.image_processor)
    cosines, codes = [], []
    tokenizer.eval()
    for start in range(0, len(rows), batch_size):
        pixels = normalize(
            _pixels(split_dir, rows[start : start + batch_size], tokenizer.config.image_size)
        )
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

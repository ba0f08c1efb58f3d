"""Degradations that generated images suffer, to test that the scorer is robust to them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

DEGRADATIONS = ("blur", "noise", "jpeg", "resize")


def degrade(array: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 -> degraded copy. Kinds: blur (Gaussian, sigma 0.8 px), noise (additive Gaussian,
    sigma 0.05 of full range), jpeg (quality 75), resize (2x down and back up, bilinear), all (in that order)."""
    if kind == "all":
        for step in DEGRADATIONS:
            array = degrade(array, step, rng)
        return array
    image = Image.fromarray(array)
    if kind == "blur":
        return np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)))
    if kind == "noise":
        noisy = array.astype(np.float64) / 255.0 + rng.normal(0.0, 0.05, array.shape)
        return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=75)
        return np.asarray(Image.open(buf).convert("RGB"))
    if kind == "resize":
        h, w = array.shape[:2]
        small = image.resize((w // 2, h // 2), Image.Resampling.BILINEAR)
        return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))
    raise ValueError(f"unknown degradation {kind!r}; expected one of {(*DEGRADATIONS, 'all')}")

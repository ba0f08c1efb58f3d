"""The exact scorer's eyes: image -> objects (shape, colour, cell), by colour segmentation and shape analysis.

No learning. Each pixel is explained as the background blended with one palette colour
(p = bg + alpha * (colour - bg)); alpha is its coverage by that colour, and the colour with the
smallest residual wins. Objects are confined to their grid cell, so each cell is examined alone:
the dominant colour's coverage mass says whether an object is there and which colour it is, and
its shape is the template (circle, square, triangle, rendered at the measured centroid and area)
that overlaps the coverage map best, with circle against square settled by the fourth cumulant
along the diagonals against the axes, which blur leaves alone. This holds up under blur, noise,
JPEG and resampling (benchmarks/scorer_accuracy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .world import (
    BACKGROUND,
    CELLS,
    COLOR_NAMES,
    COLORS,
    GRID,
    SHAPES,
    Scene,
    cell_box,
    render_coverage,
)

_PALETTE = np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32)  # [K, 3]
_DIRECTIONS = _PALETTE - np.asarray(BACKGROUND, np.float32)  # [K, 3]
_NORM2 = (_DIRECTIONS**2).sum(axis=1)  # [K]

#: A pixel counts for a colour when its coverage exceeds MIN_ALPHA and the blend explains it
#: (residual under MAX_RESIDUAL of the colour's distance from the background).
MIN_ALPHA = 0.25
MAX_RESIDUAL = 0.45
#: An object is present when the winning colour covers this fraction of the cell's area
#: (the smallest object, a triangle of side 0.55 cell, covers about 0.15).
MIN_MASS = 0.045


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image. `mass` is its coverage in cell areas, `shape_score` the template IoU."""

    shape: str
    color: str
    row: int
    col: int
    mass: float
    shape_score: float

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def _as_array(image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image (H x W x 3), got shape {array.shape}; convert it to RGB first"
        )
    if array.shape[0] != array.shape[1]:
        raise ValueError(f"ShapesWorld images are square; got {array.shape[1]}x{array.shape[0]}")
    return array.astype(np.float32)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of [N, 3] RGB colours."""
    r, g, b = (rgb[:, i].astype(np.float64) for i in range(3))
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


_PALETTE_HUES = _hue(_PALETTE)


def nearest_hue(pixels: np.ndarray, weights: np.ndarray) -> int:
    """Palette index whose hue is closest to the weighted mean of [N, 3] pixels."""
    mean = (pixels * weights).sum(axis=0, keepdims=True) / max(float(weights.sum()), 1e-6)
    distance = np.abs((_hue(mean)[0] - _PALETTE_HUES + 180.0) % 360.0 - 180.0)
    return int(distance.argmin())


def _blend_fit(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and palette colour: coverage alpha [H, W, K] and relative residual [H, W, K]."""
    alpha = pixels @ _DIRECTIONS.T / _NORM2
    residual = np.linalg.norm(
        pixels[..., None, :] - alpha[..., None] * _DIRECTIONS, axis=-1
    ) / np.sqrt(_NORM2)
    return alpha, residual


def colour_coverage(image) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the explaining palette colour [H, W] (-1: background) and its coverage [H, W]."""
    return _best_colour(*_blend_fit(_as_array(image) - np.asarray(BACKGROUND, np.float32)))


def _best_colour(alpha: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    residual = np.where(alpha > MIN_ALPHA, residual, np.inf)
    best = residual.argmin(axis=-1)
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    coverage = np.clip(np.take_along_axis(alpha, best[..., None], -1)[..., 0], 0.0, 1.0)
    explained = best_residual < MAX_RESIDUAL
    return np.where(explained, best, -1), np.where(explained, coverage, 0.0)


#: Blur levels (Gaussian sigma in pixels at 32x32, scaled with the image) a template may be
#: softened by to match the image: generated, compressed or resampled images are never crisp.
BLUR_LEVELS = (0.0, 0.5, 0.8, 1.1)


@lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] matrix that convolves a length-n signal with a Gaussian (mass leaving the ends is lost)."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / (sigma * np.sqrt(2 * np.pi))).astype(np.float32)


def _template_iou(mask: np.ndarray, box: tuple[int, int, int, int], shape: str, size: int) -> float:
    """Best soft IoU of the coverage `mask` with `shape` drawn at the mask's centroid, over the
    blur levels. The template goes through the same blur and MIN_ALPHA cut as the image, and its
    size is fitted so that what survives the cut has the mask's area."""
    area = float(mask.sum())
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
    cx, cy = float((mask * xs).sum() / area), float((mask * ys).sum() / area)
    side = {
        "circle": 2 * np.sqrt(area / np.pi),
        "square": np.sqrt(area),
        "triangle": np.sqrt(2 * area),
    }[shape]
    pad = int(np.ceil(3 * max(BLUR_LEVELS) * size / 32))
    padded = (x0 - pad, y0 - pad, x1 + pad, y1 + pad)
    best = 0.0
    for sigma in BLUR_LEVELS:
        sigma = sigma * size / 32
        fitted = side
        for _ in range(3):  # fit the size: the cut removes blurred edges, so grow until areas agree
            # a triangle's centroid sits a sixth of its height below its box centre
            centre_y = cy - fitted / 6 if shape == "triangle" else cy
            template = render_coverage(
                shape, cx, centre_y, fitted, padded, supersample=4 if size <= 32 else 2
            )
            rows, cols = (
                _blur_matrix(template.shape[0], sigma),
                _blur_matrix(template.shape[1], sigma),
            )
            soft = (rows @ template @ cols.T)[pad:-pad, pad:-pad]
            soft = np.where(soft > MIN_ALPHA, soft, 0.0)
            fitted *= float(np.sqrt(area / max(soft.sum(), 1e-6)))
        iou = float(np.minimum(mask, soft).sum() / max(np.maximum(mask, soft).sum(), 1e-6))
        best = max(best, iou)
    return best


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by `steps` pixels (4-neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


#: The diagonal / axis kurtosis ratio is 0.5 for a square and 1.0 for a circle; between these
#: bounds it is left to the templates to decide.
SQUARE_BELOW = 0.68
CIRCLE_ABOVE = 0.86


def diagonal_kurtosis_ratio(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Fourth cumulant of the mass along the diagonals over that along the axes.

    Blurring adds a Gaussian, whose fourth cumulant is zero, so the ratio survives blur: about 0.5
    for a square (its mass reaches further along the diagonals) and 1.0 for a circle (isotropic).
    """
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
    area = float(mask.sum())
    dx = xs - float((mask * xs).sum()) / area
    dy = ys - float((mask * ys).sum()) / area

    def cumulant4(u: np.ndarray) -> float:
        var = float((mask * u**2).sum()) / area
        return float((mask * u**4).sum()) / area - 3 * var * var

    axis = (cumulant4(dx) + cumulant4(dy)) / 2
    diagonal = (cumulant4((dx + dy) / np.sqrt(2)) + cumulant4((dx - dy) / np.sqrt(2))) / 2
    return diagonal / axis if axis < 0 else 1.0


def detect(image) -> list[DetectedObject]:
    """Objects in a ShapesWorld image (an HxWx3 array or a PIL image), at most one per cell."""
    array = _as_array(image)
    size = array.shape[0]
    alpha, residual = _blend_fit(array - np.asarray(BACKGROUND, np.float32))
    index, coverage = _best_colour(alpha, residual)
    cell_area = (size / GRID) ** 2
    found = []
    for cell in CELLS:
        x0, y0, x1, y1 = box = cell_box(cell, size)
        idx, cov = index[y0:y1, x0:x1], coverage[y0:y1, x0:x1]
        foreground = idx >= 0
        if cov[foreground].sum() / cell_area < MIN_MASS:
            continue
        # Colour by hue of the coverage-weighted mean colour: the solid core decides, and hue
        # survives what JPEG and blur do to edges (desaturation toward grey, chroma bleed).
        weights = (cov**2)[..., None]
        k = nearest_hue(array[y0:y1, x0:x1].reshape(-1, 3), weights.reshape(-1, 1))
        # One object per cell: every foreground pixel of the cell is its extent.
        mask = np.where(foreground, np.clip(alpha[y0:y1, x0:x1, k], 0.0, 1.0), 0.0)
        mass = float(mask.sum()) / cell_area
        if mass < MIN_MASS:
            continue
        scores = {shape: _template_iou(mask, box, shape, size) for shape in SHAPES}
        shape = max(scores, key=scores.get)
        if shape != "triangle":  # circle vs square: the corner statistic is sharper than templates
            # Raw coverage near the object, blurred tails included (the cut above would round corners).
            near = _dilate(foreground, max(1, round(2 * size / 32)))
            soft = np.where(near, np.clip(alpha[y0:y1, x0:x1, k], 0.0, 1.0), 0.0)
            ratio = diagonal_kurtosis_ratio(soft, box)
            if ratio < SQUARE_BELOW:
                shape = "square"
            elif ratio > CIRCLE_ABOVE:
                shape = "circle"
        found.append(DetectedObject(shape, COLOR_NAMES[k], cell[0], cell[1], mass, scores[shape]))
    return found


def summary(objects) -> list[tuple[str, str, int, int]]:
    return sorted((o.shape, o.color, o.row, o.col) for o in objects)


def scene_recovered(image, scene: Scene) -> bool:
    """Whether the image shows exactly the scene's objects (shape, colour, cell)."""
    return summary(detect(image)) == scene.summary()

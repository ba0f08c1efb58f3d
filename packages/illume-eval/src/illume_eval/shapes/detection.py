"""The exact scorer's eyes: image -> objects (shape, colour, cell), by colour segmentation and shape analysis.

No learning. Each pixel is explained as the background blended with one palette colour
(p = bg + alpha * (colour - bg)); alpha is its coverage by that colour, and the colour with the
smallest residual wins. Objects are confined to their grid cell, so each cell is examined alone:
the dominant colour's coverage mass says whether an object is there and which colour it is, and
its shape is the template (circle, square, triangle, rendered at the measured centroid and area)
that overlaps the coverage map best, with circle against square settled by the fourth cumulant
along the diagonals against the axes, which blur leaves alone. This holds up under blur, noise,
JPEG and resampling (benchmarks/scorer_accuracy.py).

The scorer is strict: a blob that is no ShapesWorld shape (a plus sign, an ellipse, a bar, a ring,
a diamond, half a shape, speckle, two blobs, a triangle upside down) is reported with the shape
`MALFORMED`, and a shape whose colour is not a palette colour (orange, grey, pink, ...) with the
colour `OFF_PALETTE`. Either way the object matches no prompt and no scene, so the image is wrong,
as a person would judge it. `DetectedObject.flaw` says what failed. The tests that decide it are
ones blur, noise, JPEG and resampling leave alone: the template fit, how elongated the mass is
(covariance), which way it is skewed (a triangle's apex is up), the corner statistic, and the
hue and chroma of the object's solid core (benchmarks/scorer_accuracy.py, `malformed`).
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

#: What the strict checks report in place of a shape or a colour that is not ShapesWorld's.
MALFORMED = "malformed"
OFF_PALETTE = "off-palette"
#: Strict checks. A shape must fit its template at least this well (soft IoU over the blur
#: levels: clean renders score 0.9 or more, the benchmark's hardest degradation about 0.6 or more
#: for triangles, 0.7 for circles and squares; a ring or speckle 0.55 or less, a plus 0.69) ...
MIN_SHAPE_FIT = {"circle": 0.64, "square": 0.64, "triangle": 0.6}
#: ... be no more elongated than this (smaller over larger eigenvalue of the mass's covariance: 1
#: for a circle or square, 0.75 for a triangle, down to 0.8 and 0.6 after JPEG; an ellipse, a bar,
#: half a shape or two blobs less) ...
MIN_ROUNDNESS = {"circle": 0.65, "square": 0.65, "triangle": 0.5}
#: ... be symmetric where its shape is: a circle's or square's columns and rows, a triangle's
#: columns (skewness within these bounds; noise moves a small triangle's to 0.45 at times, a
#: circle's or square's under 0.2; half a shape leans further) ...
MAX_SYMMETRIC_SKEW = 0.3
MAX_TRIANGLE_SIDE_SKEW = 0.5
#: ... and a triangle's rows must trail off toward its apex, upward: vertical skewness about -0.55
#: sharp (blur and resampling shrink it toward 0, never past +0.05), +0.55 upside down. A diamond
#: has 0 and a corner statistic of about 2 (a triangle 1, rarely 1.6 after JPEG or resampling).
MAX_TRIANGLE_SKEW = 0.25
DIAMOND_KURTOSIS_RATIO = 1.6
#: A circle's or square's corner statistic (see `diagonal_kurtosis_ratio`) at most this (0.5
#: square, 1.0 circle, about 2 for a diamond, more for a plus), unless its template fits at
#: SURE_FIT or better (noise lifts a small circle's statistic to 2 at times, never its fit under
#: 0.91; a diamond fits at most 0.9) and the statistic stays under twice the bound.
MAX_KURTOSIS_RATIO = 1.5
SURE_FIT = 0.91
#: The object's mean colour must lie within this many degrees of hue of its palette colour
#: (degraded renders stay within 10; orange, pink, lime, brown are 27 or more away) ...
MAX_HUE_DISTANCE = 18.0
#: ... and have this much chroma (max - min channel, 0-255; degraded palette colours keep 45 or
#: more, grey and white have none).
MIN_CHROMA = 30.0


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image. `mass` is its coverage in cell areas, `shape_score` the template
    IoU; `flaw` says why a strict check failed (then `shape` is MALFORMED or `color` OFF_PALETTE)."""

    shape: str
    color: str
    row: int
    col: int
    mass: float
    shape_score: float
    flaw: str | None = None

    @property
    def valid(self) -> bool:
        return self.flaw is None

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
    return _hue_match(pixels, weights)[0]


def _hue_match(pixels: np.ndarray, weights: np.ndarray) -> tuple[int, float, float]:
    """(palette index of the nearest hue, its distance in degrees, chroma) of the weighted mean
    of [N, 3] pixels."""
    mean = (pixels * weights).sum(axis=0, keepdims=True) / max(float(weights.sum()), 1e-6)
    distance = np.abs((_hue(mean)[0] - _PALETTE_HUES + 180.0) % 360.0 - 180.0)
    k = int(distance.argmin())
    return k, float(distance[k]), float(mean.max() - mean.min())


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


def mass_moments(mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """(roundness, horizontal skewness, vertical skewness) of a coverage mask: the smaller over the
    larger eigenvalue of its covariance (1 isotropic, near 0 a line), and the third standardised
    moments of its columns and rows (negative: a tail toward the left or the top, as an apex-up
    triangle's rows have)."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
    area = float(mask.sum())
    dx = xs - float((mask * xs).sum()) / area
    dy = ys - float((mask * ys).sum()) / area
    cxx, cyy = float((mask * dx * dx).sum()) / area, float((mask * dy * dy).sum()) / area
    cxy = float((mask * dx * dy).sum()) / area
    eigen = np.linalg.eigvalsh(np.array([[cxx, cxy], [cxy, cyy]]))
    roundness = float(eigen[0] / eigen[1]) if eigen[1] > 0 else 0.0
    skew_x = float((mask * dx**3).sum()) / area / max(cxx, 1e-9) ** 1.5
    skew_y = float((mask * dy**3).sum()) / area / max(cyy, 1e-9) ** 1.5
    return roundness, skew_x, skew_y


def shape_flaw(
    shape: str, fit: float, roundness: float, skew: tuple[float, float], kurtosis_ratio: float
) -> str | None:
    """Why a blob classified as `shape` is no ShapesWorld shape, or None (the strict checks).
    `skew`: (horizontal, vertical) skewness from `mass_moments`."""
    skew_x, skew_y = skew
    if fit < MIN_SHAPE_FIT[shape]:
        return f"fits a {shape} at {fit:.2f} < {MIN_SHAPE_FIT[shape]}"
    if roundness < MIN_ROUNDNESS[shape]:
        return f"elongated (roundness {roundness:.2f} < {MIN_ROUNDNESS[shape]})"
    if abs(skew_x) > (MAX_TRIANGLE_SIDE_SKEW if shape == "triangle" else MAX_SYMMETRIC_SKEW):
        return f"lopsided (horizontal skew {skew_x:.2f})"
    if shape == "triangle":
        if skew_y > MAX_TRIANGLE_SKEW:
            return f"upside down (vertical skew {skew_y:.2f} > {MAX_TRIANGLE_SKEW})"
        if skew_y > -0.1 and kurtosis_ratio > DIAMOND_KURTOSIS_RATIO:
            return f"a diamond (vertical skew {skew_y:.2f}, kurtosis ratio {kurtosis_ratio:.2f})"
        return None
    if abs(skew_y) > MAX_SYMMETRIC_SKEW:
        return f"lopsided (vertical skew {skew_y:.2f})"
    if kurtosis_ratio > MAX_KURTOSIS_RATIO and (
        fit < SURE_FIT or kurtosis_ratio > 2 * MAX_KURTOSIS_RATIO
    ):
        return f"corners on the axes (kurtosis ratio {kurtosis_ratio:.2f} > {MAX_KURTOSIS_RATIO})"
    return None


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
        k, hue_distance, chroma = _hue_match(
            array[y0:y1, x0:x1].reshape(-1, 3), weights.reshape(-1, 1)
        )
        # One object per cell: every foreground pixel of the cell is its extent.
        mask = np.where(foreground, np.clip(alpha[y0:y1, x0:x1, k], 0.0, 1.0), 0.0)
        mass = float(mask.sum()) / cell_area
        if mass < MIN_MASS:
            continue
        scores = {shape: _template_iou(mask, box, shape, size) for shape in SHAPES}
        shape = max(scores, key=scores.get)
        # Raw coverage near the object, blurred tails included (the cut above would round corners).
        near = _dilate(foreground, max(1, round(2 * size / 32)))
        soft = np.where(near, np.clip(alpha[y0:y1, x0:x1, k], 0.0, 1.0), 0.0)
        ratio = diagonal_kurtosis_ratio(soft, box)
        if shape != "triangle":  # circle vs square: the corner statistic is sharper than templates
            if ratio < SQUARE_BELOW:
                shape = "square"
            elif ratio > CIRCLE_ABOVE:
                shape = "circle"
        roundness, *skew = mass_moments(soft, box)
        flaw = shape_flaw(shape, scores[shape], roundness, (skew[0], skew[1]), ratio)
        color_flaw = None
        if hue_distance > MAX_HUE_DISTANCE:
            color_flaw = f"hue {hue_distance:.0f} degrees from {COLOR_NAMES[k]}"
        elif chroma < MIN_CHROMA:
            color_flaw = f"grey (chroma {chroma:.0f} < {MIN_CHROMA:.0f})"
        flaws = "; ".join(f for f in (flaw, color_flaw) if f) or None
        shape_name = MALFORMED if flaw else shape
        color_name = OFF_PALETTE if color_flaw else COLOR_NAMES[k]
        found.append(
            DetectedObject(shape_name, color_name, cell[0], cell[1], mass, scores[shape], flaws)
        )
    return found


def summary(objects) -> list[tuple[str, str, int, int]]:
    return sorted((o.shape, o.color, o.row, o.col) for o in objects)


def scene_recovered(image, scene: Scene) -> bool:
    """Whether the image shows exactly the scene's objects (shape, colour, cell)."""
    return summary(detect(image)) == scene.summary()

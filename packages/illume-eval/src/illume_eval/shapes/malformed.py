"""Drawings that are not ShapesWorld objects, to test that the exact scorer rejects them.

A generated image can hold a blob of the right colour that is no circle, square or triangle, or a
clean shape in a colour that is not in the palette. A scorer that snaps every blob to its nearest
shape and every hue to its nearest palette colour reads such drawings as right, and then a
figure measures how often a model puts paint in the right cell, not whether it draws. Each probe
here replaces one object of a clean render with something malformed in the same cell; the scorer
must not report a valid object there (benchmarks/scorer_accuracy.py, the `malformed` condition).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .world import (
    COLORS,
    GRID,
    SHAPES,
    Scene,
    ShapeObject,
    object_geometry,
    render,
    render_coverage,
)

#: Colours no palette colour is close to: hue 25 or more degrees from every palette hue, or grey.
OFF_PALETTE: dict[str, tuple[int, int, int]] = {
    "orange": (235, 120, 20),
    "grey": (150, 150, 150),
    "pink": (235, 90, 160),
    "lime": (140, 220, 30),
    "white": (235, 235, 235),
    "brown": (140, 80, 30),
}

Painter = Callable[[float, float, float, np.ndarray, np.random.Generator], np.ndarray]
"""(cx, cy, side in pixels, pixel grids (ys, xs) of the image, rng) -> coverage [H, W] in [0, 1]."""


def _supersampled(inside: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int) -> np.ndarray:
    """Anti-aliased coverage [size, size] of a point predicate, 4x4 samples a pixel."""
    k = 4
    offsets = (np.arange(k) + 0.5) / k
    coords = (np.arange(size)[:, None] + offsets[None, :]).reshape(-1)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    return inside(xs, ys).astype(np.float32).reshape(size, k, size, k).mean(axis=(1, 3))


def plus_sign(cx, cy, side, size, rng):
    arm = side * rng.uniform(0.22, 0.3) / 2
    half = side / 2
    return _supersampled(
        lambda x, y: (
            ((np.abs(x - cx) <= arm) & (np.abs(y - cy) <= half))
            | ((np.abs(y - cy) <= arm) & (np.abs(x - cx) <= half))
        ),
        size,
    )


def flat_ellipse(cx, cy, side, size, rng):
    a, b = side / 2, side / 2 * rng.uniform(0.35, 0.5)
    if rng.random() < 0.5:
        a, b = b, a
    return _supersampled(lambda x, y: ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1, size)


def thin_bar(cx, cy, side, size, rng):
    half_long, half_thin = side / 2, side * rng.uniform(0.1, 0.18) / 2
    if rng.random() < 0.5:
        return _supersampled(
            lambda x, y: (np.abs(x - cx) <= half_thin) & (np.abs(y - cy) <= half_long), size
        )
    return _supersampled(
        lambda x, y: (np.abs(x - cx) <= half_long) & (np.abs(y - cy) <= half_thin), size
    )


def ring(cx, cy, side, size, rng):
    outer = side / 2
    inner = outer * rng.uniform(0.5, 0.65)
    return _supersampled(
        lambda x, y: (
            ((x - cx) ** 2 + (y - cy) ** 2 <= outer**2) & ((x - cx) ** 2 + (y - cy) ** 2 > inner**2)
        ),
        size,
    )


def diamond(cx, cy, side, size, rng):
    half = side / 2
    return _supersampled(lambda x, y: np.abs(x - cx) + np.abs(y - cy) <= half, size)


def half_shape(cx, cy, side, size, rng):
    """A circle, square or triangle with one half (left, right, top or bottom) missing. Not a
    triangle's bottom: its top half is a smaller triangle, a valid shape."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    full = render_coverage(shape, cx, cy, side, (0, 0, size, size))
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    halves = [xs < cx, xs >= cx, ys >= cy] + ([] if shape == "triangle" else [ys < cy])
    keep = halves[int(rng.integers(len(halves)))]
    return full * keep


def speckle(cx, cy, side, size, rng):
    """Scattered pixels over the object's box, about a third of it covered."""
    out = np.zeros((size, size), np.float32)
    x0, x1 = max(0, int(cx - side / 2)), min(size, int(np.ceil(cx + side / 2)))
    y0, y1 = max(0, int(cy - side / 2)), min(size, int(np.ceil(cy + side / 2)))
    out[y0:y1, x0:x1] = (rng.random((y1 - y0, x1 - x0)) < 0.35).astype(np.float32)
    return out


def two_blobs(cx, cy, side, size, rng):
    """Two small overlapping discs side by side: a figure eight, no single shape."""
    r = side * 0.3
    d = side * 0.22
    vertical = rng.random() < 0.5
    (ax, ay), (bx, by) = ((cx, cy - d), (cx, cy + d)) if vertical else ((cx - d, cy), (cx + d, cy))
    return _supersampled(
        lambda x, y: (
            ((x - ax) ** 2 + (y - ay) ** 2 <= r**2) | ((x - bx) ** 2 + (y - by) ** 2 <= r**2)
        ),
        size,
    )


def inverted_triangle(cx, cy, side, size, rng):
    half = side / 2
    bottom = cy + half
    return _supersampled(lambda x, y: (y >= cy - half) & (np.abs(x - cx) <= (bottom - y) / 2), size)


#: Malformed outlines, drawn in the replaced object's own palette colour.
MALFORMED_SHAPES: dict[str, Painter] = {
    "plus": plus_sign,
    "ellipse": flat_ellipse,
    "bar": thin_bar,
    "ring": ring,
    "diamond": diamond,
    "half": half_shape,
    "speckle": speckle,
    "two_blobs": two_blobs,
    "upside_down": inverted_triangle,
}
#: Every probe kind: the outlines above, and a clean shape in each off-palette colour.
MALFORMED_KINDS: tuple[str, ...] = (*MALFORMED_SHAPES, *(f"color_{c}" for c in OFF_PALETTE))


def paint(image: np.ndarray, coverage: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """`image` with `rgb` blended in by `coverage` [H, W] (a copy, uint8)."""
    alpha = coverage[..., None]
    out = image.astype(np.float32) * (1 - alpha) + np.asarray(rgb, np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def malformed_render(
    scene: Scene, victim: ShapeObject, kind: str, size: int, rng: np.random.Generator
) -> np.ndarray:
    """The scene rendered with `victim` replaced by a malformed drawing of the given kind, inside
    the victim's cell (its centre and size)."""
    if kind not in MALFORMED_KINDS:
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
    image = render(scene.without(victim), size)
    cx, cy, side = object_geometry(victim, size)
    if kind.startswith("color_"):
        coverage = render_coverage(victim.shape, cx, cy, side, (0, 0, size, size))
        return paint(image, coverage, OFF_PALETTE[kind.removeprefix("color_")])
    coverage = MALFORMED_SHAPES[kind](cx, cy, side, size, rng)
    # Stay inside the victim's cell, as objects do: a probe tests one cell's verdict.
    cell = size / GRID
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    inside = (
        (xs >= victim.col * cell)
        & (xs < (victim.col + 1) * cell)
        & (ys >= victim.row * cell)
        & (ys < (victim.row + 1) * cell)
    )
    return paint(image, coverage * inside, COLORS[victim.color])

"""ShapesWorld scenes and their renderer.

A scene is 0-3 objects on a plain dark background, each a shape of one colour in one cell of a
3x3 grid, with a small jitter of position and size stored in the scene, so that rendering is a pure
function of the scene and edits leave untouched objects pixel-identical. Every object lies inside
its own cell (size <= 0.70 cell, offset <= 0.08 cell), which is what makes exact scoring possible.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (30, 60, 230),
    "yellow": (230, 210, 30),
    "purple": (160, 50, 200),
    "cyan": (40, 200, 200),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BACKGROUND: tuple[int, int, int] = (16, 16, 16)
GRID = 3
DEFAULT_SIZE = 32

#: Object size (side / diameter) and centre offset, as fractions of a cell.
SCALE_RANGE = (0.55, 0.70)
OFFSET_RANGE = 0.08

#: Cell (row, col) -> its name in instructions and answers.
CELL_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "top left",
    (0, 1): "top middle",
    (0, 2): "top right",
    (1, 0): "middle left",
    (1, 1): "center",
    (1, 2): "middle right",
    (2, 0): "bottom left",
    (2, 1): "bottom middle",
    (2, 2): "bottom right",
}
CELLS: tuple[tuple[int, int], ...] = tuple(CELL_NAMES)

#: Spatial relations between two objects, by grid cell: "A left of B" means A's column < B's.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}


def relation_holds(relation: str, a: ShapeObject, b: ShapeObject) -> bool:
    """Whether `a <relation> b` holds on the grid."""
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: one of SHAPES.
        color: one of COLOR_NAMES.
        row, col: grid cell, 0..2 from the top left.
        dx, dy: centre offset from the cell centre, in cells (|.| <= OFFSET_RANGE).
        scale: side (square, triangle) or diameter (circle), in cells.
    """

    shape: str
    color: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 0.62

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLOR_NAMES}")
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise ValueError(f"cell ({self.row}, {self.col}) is outside the {GRID}x{GRID} grid")

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells. JSON-serialisable with `to_dict` / `from_dict`."""

    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)

    def __post_init__(self):
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell in {cells}")

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(tuple(ShapeObject(**o) for o in data["objects"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def at(self, cell: tuple[int, int]) -> ShapeObject | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def free_cells(self) -> list[tuple[int, int]]:
        taken = {o.cell for o in self.objects}
        return [c for c in CELLS if c not in taken]

    def without(self, obj: ShapeObject) -> Scene:
        return Scene(tuple(o for o in self.objects if o != obj))

    def with_object(self, obj: ShapeObject) -> Scene:
        return Scene((*self.objects, obj))

    def replaced(self, old: ShapeObject, new: ShapeObject) -> Scene:
        return Scene(tuple(new if o == old else o for o in self.objects))

    def summary(self) -> list[tuple[str, str, int, int]]:
        """(shape, colour, row, col) per object, sorted: what exact recovery compares."""
        return sorted((o.shape, o.color, o.row, o.col) for o in self.objects)


def jittered_object(
    rng: np.random.Generator, shape: str, color: str, cell: tuple[int, int]
) -> ShapeObject:
    """An object with random offset and size inside `cell`."""
    return ShapeObject(
        shape=shape,
        color=color,
        row=cell[0],
        col=cell[1],
        dx=round(float(rng.uniform(-OFFSET_RANGE, OFFSET_RANGE)), 4),
        dy=round(float(rng.uniform(-OFFSET_RANGE, OFFSET_RANGE)), 4),
        scale=round(float(rng.uniform(*SCALE_RANGE)), 4),
    )


def moved(obj: ShapeObject, rng: np.random.Generator, cell: tuple[int, int]) -> ShapeObject:
    fresh = jittered_object(rng, obj.shape, obj.color, cell)
    return replace(obj, row=cell[0], col=cell[1], dx=fresh.dx, dy=fresh.dy)


def shape_coverage(
    shape: str, cx: float, cy: float, side: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """1.0 where the points (xs, ys) lie inside the shape centred (bounding box) at (cx, cy)."""
    half = side / 2
    if shape == "circle":
        return ((xs - cx) ** 2 + (ys - cy) ** 2 <= half**2).astype(np.float32)
    if shape == "square":
        return ((np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)).astype(np.float32)
    if shape == "triangle":  # apex up, base at the bottom
        top = cy - half
        return ((ys <= cy + half) & (np.abs(xs - cx) <= (ys - top) / 2)).astype(np.float32)
    raise ValueError(f"unknown shape {shape!r}")


def render_coverage(
    shape: str,
    cx: float,
    cy: float,
    side: float,
    box: tuple[int, int, int, int],
    supersample: int = 4,
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape over the pixel box (x0, y0, x1, y1), shape [y1-y0, x1-x0]."""
    x0, y0, x1, y1 = box
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    inside = shape_coverage(shape, cx, cy, side, grid_x, grid_y)
    h, w = y1 - y0, x1 - x0
    return inside.reshape(h, supersample, w, supersample).mean(axis=(1, 3))


def object_geometry(obj: ShapeObject, size: int) -> tuple[float, float, float]:
    """(cx, cy, side) in pixels for an image of `size` x `size`."""
    cell = size / GRID
    return (obj.col + 0.5 + obj.dx) * cell, (obj.row + 0.5 + obj.dy) * cell, obj.scale * cell


def cell_box(cell: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a grid cell; the boxes tile the image."""
    edges = [round(i * size / GRID) for i in range(GRID + 1)]
    row, col = cell
    return edges[col], edges[row], edges[col + 1], edges[row + 1]


def _object_box(cx: float, cy: float, side: float, size: int) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, x1, y1) a shape can touch, with a pixel of margin, inside the image."""
    return (
        max(0, int(np.floor(cx - side / 2)) - 1),
        max(0, int(np.floor(cy - side / 2)) - 1),
        min(size, int(np.ceil(cx + side / 2)) + 1),
        min(size, int(np.ceil(cy + side / 2)) + 1),
    )


def render(scene: Scene, size: int = DEFAULT_SIZE, supersample: int = 4) -> np.ndarray:
    """The scene as an [size, size, 3] uint8 RGB array (anti-aliased, deterministic)."""
    if size < 12:
        raise ValueError(f"size {size} is too small to draw a 3x3 grid of shapes; use 12 or more")
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUND
    for obj in scene.objects:
        cx, cy, side = object_geometry(obj, size)
        box = _object_box(cx, cy, side, size)
        alpha = render_coverage(obj.shape, cx, cy, side, box, supersample)[..., None]
        x0, y0, x1, y1 = box
        patch = image[y0:y1, x0:x1]
        image[y0:y1, x0:x1] = (
            patch * (1 - alpha) + np.asarray(COLORS[obj.color], np.float32) * alpha
        )
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


#: Classes of `patch_labels`: 0 is background, then every (shape, colour) in this order.
PATCH_CLASSES: tuple[tuple[str, str] | None, ...] = (
    None,
    *((shape, color) for shape in SHAPES for color in COLORS),
)


def patch_labels(
    scene: Scene, size: int = DEFAULT_SIZE, patch: int = 4, min_coverage: float = 0.25
) -> np.ndarray:
    """[size/patch, size/patch] int64 index into PATCH_CLASSES of what each patch of the rendered
    scene shows: the object covering most of it (at least `min_coverage`), else background. The
    dense, exact labels of a ShapesWorld image, for training local features."""
    if size % patch:
        raise ValueError(f"patch {patch} does not tile an image of {size} px")
    n = size // patch
    best = np.full((n, n), min_coverage, np.float32)
    labels = np.zeros((n, n), np.int64)
    for obj in scene.objects:
        cx, cy, side = object_geometry(obj, size)
        x0, y0, x1, y1 = _object_box(cx, cy, side, size)
        coverage = np.zeros((size, size), np.float32)
        coverage[y0:y1, x0:x1] = render_coverage(obj.shape, cx, cy, side, (x0, y0, x1, y1))
        per_patch = coverage.reshape(n, patch, n, patch).mean(axis=(1, 3))
        wins = per_patch >= best
        best = np.where(wins, per_patch, best)
        labels[wins] = PATCH_CLASSES.index((obj.shape, obj.color))
    return labels


def render_pil(scene: Scene, size: int = DEFAULT_SIZE):
    from PIL import Image

    return Image.fromarray(render(scene, size))

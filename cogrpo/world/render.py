"""Drawing of the shapes world: coloured shapes on a neutral grey background.

Images are uint8 RGB arrays of shape (H, W, 3). The world is designed with its
tokenizer: shapes are drawn without antialiasing, so every object pixel carries
exactly one palette colour; boxes are 12 or 16 pixels wide and start on the
4-pixel grid of the VQ tokenizer's patches, so each patch holds one of a small
set of shape pieces; and objects keep a gap of at least one patch, so
reconstruction noise never joins two objects into one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
BACKGROUND = (128, 128, 128)
GRID_ALIGN = 4  # boxes start on multiples of the tokenizer's patch size
MIN_GAP = 4

# The ten GenEval colours, as saturated RGB values far enough from each other
# and from the grey background for a nearest-colour rule to separate them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (245, 230, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 200),
    "pink": (240, 90, 180),
    "brown": (120, 70, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

SIZES: tuple[int, ...] = (12, 16)


@dataclass(frozen=True)
class DrawnObject:
    """One drawn shape: its class, colour and bounding box (x0, y0, size)."""

    shape: str
    color: str
    x0: int
    y0: int
    size: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Box as (x1, y1, x2, y2) in pixel-edge coordinates, like a detector's."""
        return (float(self.x0), float(self.y0), float(self.x0 + self.size), float(self.y0 + self.size))


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Return a (size, size) bool mask of ``shape`` filling its square box."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        r = size / 2
        return (xs - r) ** 2 + (ys - r) ** 2 <= r * r
    if shape == "triangle":
        # Apex at the top centre, base along the bottom row.
        rel_y = ys / size
        return np.abs(xs - size / 2) <= rel_y * size / 2
    # cross: a plus sign whose arms are a third of the box wide
    arm = max(2, int(round(size / 3)))
    lo = (size - arm) // 2
    hi = lo + arm
    horizontal = (ys >= lo) & (ys < hi)
    vertical = (xs >= lo) & (xs < hi)
    return horizontal | vertical


def draw(objects: list[DrawnObject], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Render ``objects`` on the grey background and return a (H, W, 3) uint8 image."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        mask = shape_mask(obj.shape, obj.size)
        region = image[obj.y0 : obj.y0 + obj.size, obj.x0 : obj.x0 + obj.size]
        if region.shape[:2] != mask.shape:
            raise ValueError(f"object {obj} does not fit in a {image_size}x{image_size} image")
        region[mask] = PALETTE[obj.color]
    return image


def boxes_apart(a: DrawnObject, b: DrawnObject, gap: int = MIN_GAP) -> bool:
    """Return True when the boxes of ``a`` and ``b`` are at least ``gap`` pixels apart."""
    return (
        a.x0 + a.size + gap <= b.x0
        or b.x0 + b.size + gap <= a.x0
        or a.y0 + a.size + gap <= b.y0
        or b.y0 + b.size + gap <= a.y0
    )

"""A detector for the shapes world that returns GenEval-style detections.

Foreground pixels are those far from the grey background. Each 8-connected
foreground component is one object (objects are drawn with a gap, so they do
not touch); a component whose pixels split into two large colour groups is
split by colour. The class comes from a nearest-centroid rule over mask
features (fill ratio, row and column thirds, corners), with centroids measured
on clean renders of every shape at every size. The score is the class
probability times a fit term, so blobs that look like no shape get low scores
and fail GenEval's 0.9 counting threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage

from cogrpo.benchmarks.geneval import Detection
from cogrpo.world.render import BACKGROUND, COLORS, PALETTE, SHAPES, shape_mask

FOREGROUND_DISTANCE = 48.0  # RGB distance from the background above which a pixel is foreground
MIN_AREA = 10  # components smaller than this (in pixels) are noise
FULL_CONFIDENCE_AREA = 20  # components at least this large are not penalised for size
SPLIT_SHARE = 0.3  # a second colour covering this share of a component splits it
SOFTMAX_TEMPERATURE = 0.02
FIT_SCALE = 0.6

_PALETTE_RGB = np.asarray([PALETTE[c] for c in COLORS], dtype=np.float32)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def mask_features(mask: np.ndarray) -> np.ndarray:
    """Return the shape features of a bool mask cropped to its bounding box."""
    h, w = mask.shape
    m = mask.astype(np.float32)
    t_h, t_w = max(1, h // 3), max(1, w // 3)
    c_h, c_w = max(1, (h + 2) // 4), max(1, (w + 2) // 4)
    corners = [m[:c_h, :c_w], m[:c_h, -c_w:], m[-c_h:, :c_w], m[-c_h:, -c_w:]]
    return np.asarray(
        [
            m.mean(),
            m[:t_h].mean(),
            m[t_h : h - t_h].mean() if h - 2 * t_h > 0 else m.mean(),
            m[-t_h:].mean(),
            m[:, :t_w].mean(),
            m[:, t_w : w - t_w].mean() if w - 2 * t_w > 0 else m.mean(),
            m[:, -t_w:].mean(),
            float(np.mean([c.mean() for c in corners[:2]])),
            float(np.mean([c.mean() for c in corners[2:]])),
            min(h, w) / max(h, w),
        ],
        dtype=np.float32,
    )


BLUR_SIGMAS = (0.6, 0.9, 1.2)  # pixels; the blur levels of the noisy prototypes


@lru_cache(maxsize=1)
def shape_prototypes() -> np.ndarray:
    """Return the (classes, prototypes, features) features of reference masks.

    Each class has the masks of clean renders at sizes 6 to 16, and the
    foreground masks of the same renders after a Gaussian blur of 0.6 to 1.2
    pixels, which stand in for a tokenizer's reconstruction noise (rounded
    corners, thickened thin parts) without depending on any trained tokenizer.
    """
    per_class = []
    for shape in SHAPES:
        features = []
        for size in range(6, 17):
            mask = shape_mask(shape, size)
            features.append(mask_features(_crop(mask)))
            padded = np.pad(mask.astype(np.float32), 4)
            for sigma in BLUR_SIGMAS:
                blurred = ndimage.gaussian_filter(padded, sigma) > 0.5
                if blurred.any():
                    features.append(mask_features(_crop(blurred)))
        per_class.append(np.stack(features))
    count = min(len(f) for f in per_class)
    return np.stack([f[:count] for f in per_class])


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def classify_mask(mask: np.ndarray) -> tuple[str, float]:
    """Return the most likely shape of a cropped mask and its score in [0, 1]."""
    features = mask_features(mask)
    # Distance to the nearest clean render of each class, whatever its size.
    d2 = ((shape_prototypes() - features) ** 2).sum(axis=-1).min(axis=1)
    logits = -d2 / SOFTMAX_TEMPERATURE
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = int(np.argmax(probs))
    fit = float(np.exp(-d2[best] / FIT_SCALE))
    return SHAPES[best], float(probs[best]) * fit


def nearest_colors(pixels: np.ndarray) -> np.ndarray:
    """Return the palette index nearest to each RGB row of ``pixels`` (N, 3)."""
    d2 = ((pixels[:, None, :].astype(np.float32) - _PALETTE_RGB[None]) ** 2).sum(-1)
    return d2.argmin(axis=1)


def classify_region_color(image: np.ndarray, mask: np.ndarray) -> str:
    """Return the GenEval colour of the pixels of ``image`` (H, W, 3) under ``mask``."""
    pixels = np.asarray(image)[mask]
    if len(pixels) == 0:
        raise ValueError("empty mask: a colour needs at least one pixel")
    median = np.median(pixels.reshape(-1, 3).astype(np.float32), axis=0)
    return COLORS[int(nearest_colors(median[None])[0])]


def _components(image: np.ndarray) -> list[np.ndarray]:
    distance = np.sqrt(((image.astype(np.float32) - np.asarray(BACKGROUND, np.float32)) ** 2).sum(-1))
    foreground = distance > FOREGROUND_DISTANCE
    labels, count = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    masks = []
    for index in range(1, count + 1):
        component = labels == index
        if component.sum() < MIN_AREA:
            continue
        color_index = nearest_colors(image[component])
        counts = np.bincount(color_index, minlength=len(COLORS))
        order = np.argsort(counts)[::-1]
        if counts[order[1]] >= max(MIN_AREA, SPLIT_SHARE * component.sum()):
            # Two objects of different colours touch: split the component by colour.
            colour_map = np.full(image.shape[:2], -1)
            colour_map[component] = color_index
            for c in order[:2]:
                sub, n_sub = ndimage.label(colour_map == c, structure=_EIGHT_CONNECTED)
                masks += [sub == j for j in range(1, n_sub + 1) if (sub == j).sum() >= MIN_AREA]
        else:
            masks.append(component)
    return masks


def detect(image: np.ndarray) -> list[Detection]:
    """Detect the shapes of a (H, W, 3) uint8 image as GenEval-style detections."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    detections = []
    for mask in _components(image):
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        label, score = classify_mask(mask[y0:y1, x0:x1])
        score *= min(1.0, mask.sum() / FULL_CONFIDENCE_AREA)
        detections.append(Detection(label=label, box=(float(x0), float(y0), float(x1), float(y1)), score=score, mask=mask))
    return detections


def color_classifier(image: np.ndarray):
    """Return a GenEval colour classifier bound to ``image``."""

    def classify(_class_name: str, objects: Sequence[Detection]) -> list[str]:
        return [classify_region_color(image, obj.mask) for obj in objects]

    return classify

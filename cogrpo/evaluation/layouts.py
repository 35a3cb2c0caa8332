"""Image folder layouts of the public benchmarks, as their official scoring scripts read them.

* ``hps``: ``<style>/<index:05d>.jpg``, one image per prompt, the index counted within
  the style's prompt list. The official ``hpsv2`` evaluation (tgxs002/HPSv2,
  ``hpsv2/evaluation.py``, ``BenchmarkDataset``) opens ``f"{idx:05d}.jpg"`` for each
  prompt index, and the zero-padded names also sort in prompt order.
* ``imagereward``: ``<prompt id>_<k>.png``, k = 0..9, in one folder per model
  (THUDM/ImageReward, ``test-benchmark.py``).
* ``dpg``: ``<item_id>.png``, one 2x2 grid of four generations per prompt. The
  official script (TencentQQGYLab/ELLA, ``dpg_bench/compute_dpg_bench.py``) takes the
  item id as the file name before the first "." and accepts any image type.

A layout maps (entry, image index) to a path, finds an existing image in the file
types the official script reads, and returns the prompt that a stray file's name refers to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

# JPEG quality of the images written in the hps layout. NOTE: the HPS v2 authors do
# not state the quality of their benchmark images; 95 is this project's choice.
JPEG_QUALITY = 95


@dataclass(frozen=True)
class FolderLayout:
    """The file naming rule of one benchmark's image folder."""

    name: str
    # File types the official scorer reads; the first is the one written.
    extensions: tuple[str, ...]
    # Image files per prompt the official layout allows (None: any number).
    max_images_per_prompt: int | None = None

    def prompt_key(self, entry: dict[str, Any]) -> str:
        """Return the part of a file's relative path (without the type) that names the prompt."""
        raise NotImplementedError

    def image_path(self, root: Path, entry: dict[str, Any], sample: int) -> Path:
        """Return where image ``sample`` of ``entry`` is written."""
        if self.max_images_per_prompt is not None and sample >= self.max_images_per_prompt:
            raise ValueError(
                f"the {self.name} layout has {self.max_images_per_prompt} image file(s) per prompt, "
                f"so image {sample} has no file name; pass --images-per-prompt {self.max_images_per_prompt}"
            )
        return root / f"{self.sample_stem(entry, sample)}{self.extensions[0]}"

    def sample_stem(self, entry: dict[str, Any], sample: int) -> str:
        return self.prompt_key(entry)

    def find_image(self, root: Path, entry: dict[str, Any], sample: int) -> Path | None:
        """Return the existing file of image ``sample`` in the first accepted type, or None."""
        path = self.image_path(root, entry, sample)
        for extension in self.extensions:
            candidate = path.with_suffix(extension)
            if candidate.is_file():
                return candidate
        return None

    def file_prompt_key(self, relative: PurePosixPath) -> str | None:
        """Return the prompt key a file at ``relative`` (to the image root) would belong to."""
        raise NotImplementedError


class HPSLayout(FolderLayout):
    def prompt_key(self, entry: dict[str, Any]) -> str:
        return f"{entry['style']}/{entry['style_index']:05d}"

    def file_prompt_key(self, relative: PurePosixPath) -> str | None:
        if len(relative.parts) != 2:
            return None
        return f"{relative.parts[0]}/{relative.name.split('.')[0]}"


class ImageRewardLayout(FolderLayout):
    def prompt_key(self, entry: dict[str, Any]) -> str:
        return str(entry["prompt_id"])

    def sample_stem(self, entry: dict[str, Any], sample: int) -> str:
        return f"{entry['prompt_id']}_{sample}"

    def file_prompt_key(self, relative: PurePosixPath) -> str | None:
        if len(relative.parts) != 1:
            return None
        prompt_id, separator, _ = relative.name.split(".")[0].rpartition("_")
        return prompt_id if separator else None


class DPGLayout(FolderLayout):
    def prompt_key(self, entry: dict[str, Any]) -> str:
        return str(entry["item_id"])

    def file_prompt_key(self, relative: PurePosixPath) -> str | None:
        if len(relative.parts) != 1:
            return None
        return relative.name.split(".")[0]


LAYOUTS: dict[str, FolderLayout] = {
    "hps": HPSLayout("hps", (".jpg",), max_images_per_prompt=1),
    "imagereward": ImageRewardLayout("imagereward", (".png",)),
    "dpg": DPGLayout("dpg", (".png", ".jpg", ".jpeg", ".webp"), max_images_per_prompt=1),
}


def extra_files(
    layout: FolderLayout, root: Path, entries: list[dict[str, Any]], images_per_prompt: int
) -> list[dict[str, Any]]:
    """List the files under ``root`` that are not an image of the evaluation.

    Each item has the file's ``path`` relative to ``root`` and ``prompt_index``. That
    is the index of the prompt the file name refers to, as for an eleventh ImageReward
    image or a PNG in the HPS layout. It is None when the name refers to no prompt,
    as for a folder that is not an HPS style.
    """
    if not root.is_dir():
        return []
    expected: set[Path] = set()
    index_of: dict[str, int] = {}
    for index, entry in enumerate(entries):
        index_of[layout.prompt_key(entry)] = index
        for sample in range(images_per_prompt):
            expected.add(layout.find_image(root, entry, sample) or layout.image_path(root, entry, sample))
    extras = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path in expected:
            continue
        relative = PurePosixPath(path.relative_to(root).as_posix())
        key = layout.file_prompt_key(relative)
        extras.append({"path": str(relative), "prompt_index": index_of.get(key) if key is not None else None})
    return extras


def compose_grid(tiles: list[np.ndarray]) -> np.ndarray:
    """Join 1 or 4 equal (H, W, 3) tiles into one image, the inverse of ``dpg.split_grid``.

    Four tiles go top-left, top-right, bottom-left, bottom-right, the order in
    which the official DPG-Bench script crops them.
    """
    if len(tiles) == 1:
        return tiles[0]
    if len(tiles) != 4:
        raise ValueError(f"got {len(tiles)} tiles; a grid has 1 or 4")
    shapes = {tile.shape for tile in tiles}
    if len(shapes) != 1:
        raise ValueError(f"grid tiles differ in shape: {sorted(shapes)}; expected equal tiles")
    top = np.concatenate([tiles[0], tiles[1]], axis=1)
    bottom = np.concatenate([tiles[2], tiles[3]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, bottom], axis=0))

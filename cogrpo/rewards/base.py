"""The scorer interface shared by training rewards and benchmarks, and image checks.

A scorer turns images, their prompts and optional GenEval-style metadata into
float32 scores, one per image, with NaN for an image that could not be scored.
Weights are described by ``WeightsSpec`` (hub repository, pinned revision and
file, or a local path), resolved once when the scorer is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray


class MissingWeightsError(FileNotFoundError):
    """Weights that are neither in the local cache nor at the given local path."""


@dataclass(frozen=True)
class WeightsSpec:
    """The source of a scorer's weights: a hub file at a pinned revision, or a local path.

    ``revision`` is None only in records of sources that take no revision (a plain
    download URL, whose ``repo_id`` is the URL's folder, or an unpinned ModelScope model).
    """

    repo_id: str
    filename: str
    revision: str | None
    # The command-line option or argument that takes a local copy, named in error messages.
    # None when only the Hugging Face cache can supply the file.
    option: str | None = None
    sha256: str | None = None

    def _local_copy_hint(self) -> str:
        if self.option is not None:
            return f"pass a local copy with {self.option} PATH"
        return ("copy a Hugging Face cache that holds it to this machine and point HF_HOME (or HF_HUB_CACHE) "
                "at it")

    def local_file(self) -> Path | None:
        """Return the cached file if it is already on this machine, else None."""
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            return None
        found = try_to_load_from_cache(self.repo_id, self.filename, revision=self.revision)
        return Path(found) if isinstance(found, str) else None

    def resolve(self, local_path: str | os.PathLike[str] | None = None) -> Path:
        """Return a path to the weights, downloading them unless ``HF_HUB_OFFLINE`` is set.

        Raises ``MissingWeightsError`` naming the hub file, the local path looked
        at and the option that points at a local copy.
        """
        if local_path is not None:
            path = Path(local_path)
            if path.is_dir():
                path = path / self.filename
            if not path.is_file():
                raise MissingWeightsError(
                    f"weights not found at {path}; expected {self.filename} from hub repo {self.repo_id} "
                    f"(revision {self.revision}). Pass the path of that file{' with ' + self.option if self.option else ''}."
                )
            return path
        cached = self.local_file()
        if cached is not None:
            return cached
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
        if offline:
            raise MissingWeightsError(
                f"{self.filename} from hub repo {self.repo_id} (revision {self.revision}) is not in the local "
                f"Hugging Face cache and HF_HUB_OFFLINE is set. Download it on a machine with access "
                f"(hf download {self.repo_id} {self.filename} --revision {self.revision}) "
                f"or {self._local_copy_hint()}."
            )
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.repo_id, self.filename, revision=self.revision))
        except Exception as error:  # the hub client raises many transport error types
            raise MissingWeightsError(
                f"could not download {self.filename} from hub repo {self.repo_id} (revision {self.revision}): "
                f"{error}. Download it elsewhere and {self._local_copy_hint()}."
            ) from error


@dataclass
class ScoreResult:
    """Scores of one batch: float32 (N,), NaN where ``errors`` has a message."""

    scores: np.ndarray
    errors: list[str | None] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)


class Scorer:
    """Base class of every reward and benchmark scorer.

    Subclasses set ``name``, ``version`` and ``higher_is_better``, list their
    ``weights`` and implement ``score_batch``.
    """

    name: str = "scorer"
    version: str = "0"
    higher_is_better: bool = True
    weights: tuple[WeightsSpec, ...] = ()
    # Range of the scores when they are bounded, used to check mixes and logs.
    bounds: tuple[float, float] | None = None
    # Local weight files or folders that this instance loaded, set by subclasses once the
    # weights are resolved. Result JSON records the SHA-256 of the weight files among them.
    weight_paths: tuple[Path, ...] = ()
    # True for scorers that judge GenEval metadata (tag, include and exclude clauses), which
    # prompt lists without metadata cannot give.
    needs_metadata: bool = False
    # The object classes this scorer can detect, or None when unknown. Metadata naming any other
    # class is rejected before training or scoring, because such objects would never be found.
    metadata_classes: tuple[str, ...] | None = None

    @classmethod
    def declared_weights(cls, *args: Any, **options: Any) -> tuple[WeightsSpec, ...]:
        """Return the pinned weights that ``cls(*args, **options)`` would load, without building it.

        The default is the class's ``weights``. Scorers whose weights depend on a
        constructor option (a model version, a detector or VQA backend name) override it.
        """
        return tuple(cls.weights)

    def score(self, images: Sequence[ImageLike], prompts: Sequence[str], metadata: Sequence[dict | None] | None = None) -> np.ndarray:
        """Return float32 scores (N,), NaN for images that failed."""
        return self.score_detailed(images, prompts, metadata).scores

    def score_detailed(
        self, images: Sequence[ImageLike], prompts: Sequence[str], metadata: Sequence[dict | None] | None = None
    ) -> ScoreResult:
        """Score a batch and report per-sample failures instead of raising."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if metadata is not None and len(metadata) != len(images):
            raise ValueError(f"got {len(images)} images but {len(metadata)} metadata entries; pass one per image")
        metadata = list(metadata) if metadata is not None else [None] * len(images)
        arrays: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for index, image in enumerate(images):
            try:
                arrays.append(to_rgb_array(image))
                errors.append(None)
            except (ValueError, OSError) as error:
                logger.warning("%s: image %d could not be read: %s", self.name, index, error)
                arrays.append(None)
                errors.append(str(error))
        valid = [i for i, a in enumerate(arrays) if a is not None]
        scores = np.full(len(images), np.nan, dtype=np.float32)
        details: list[dict[str, Any]] = [{} for _ in images]
        if valid:
            result = self.score_batch([arrays[i] for i in valid], [prompts[i] for i in valid], [metadata[i] for i in valid])
            for position, index in enumerate(valid):
                scores[index] = result.scores[position]
                if result.errors and result.errors[position]:
                    errors[index] = result.errors[position]
                if result.details:
                    details[index] = result.details[position]
        return ScoreResult(scores=scores, errors=errors, details=details)

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Score RGB uint8 arrays (H, W, 3); implemented by subclasses."""
        raise NotImplementedError


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Convert a PIL image or array to an (H, W, 3) uint8 RGB array.

    Greyscale, RGBA (composited on black, as a PIL ``convert("RGB")`` does),
    palette and 16-bit images are converted; arrays in [0, 1] floats are scaled.
    Raises ``ValueError`` for empty or unreadable images.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            opened.load()
            image = opened.copy()
    if isinstance(image, Image.Image):
        if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
            array = np.asarray(image, dtype=np.float64)
            array = (array / max(1.0, float(array.max())) * 255.0).round().astype(np.uint8)
            image = Image.fromarray(array)
        image = image.convert("RGB")
        array = np.asarray(image)
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected an image of shape (H, W, 3), got {array.shape}")
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        if array.shape[2] == 4:
            array = array[..., :3]
        if array.dtype == np.uint16:
            array = (array.astype(np.float64) / 257.0).round().astype(np.uint8)
        elif np.issubdtype(array.dtype, np.floating):
            if not np.all(np.isfinite(array)):
                raise ValueError("image contains NaN or infinite values")
            array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        elif array.dtype != np.uint8:
            raise ValueError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    return np.ascontiguousarray(array)

"""GenEval as a scorer: a detector, a colour model and the official judging rules.

The detector and the colour model are plugged in (see
``cogrpo.benchmarks.geneval_detectors`` and ``cogrpo.benchmarks.geneval_colors``);
thresholds, the per-class limit and the judging come unchanged from
``cogrpo.benchmarks.geneval``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cogrpo.benchmarks.geneval import ColorClassifier, Detection, judge, keep_detections, partial_credit
from cogrpo.benchmarks import geneval_colors, geneval_detectors
from cogrpo.benchmarks.geneval_colors import ColorModel, build_color_model
from cogrpo.benchmarks.geneval_detectors import GenEvalDetector, build_detector
from cogrpo.rewards.base import MissingWeightsError, ScoreResult, Scorer, WeightsSpec

logger = logging.getLogger(__name__)

# Errors that fail one detector batch instead of the whole run. Torch raises
# RuntimeError subclasses, CUDA out of memory included.
DETECTOR_ERRORS = (RuntimeError, ValueError, OSError)


class GenEvalScorer(Scorer):
    """GenEval judging of images against their prompt metadata, as a score in [0, 1].

    ``strict=True`` gives 1.0 when the official rules judge the image correct and
    0.0 otherwise (the benchmark score). ``strict=False`` gives partial credit,
    the mean clause credit of ``cogrpo.benchmarks.geneval.partial_credit``.
    Every image needs its GenEval metadata (tag, include, exclude).

    ``detector`` is a ``GenEvalDetector`` or a name: ``mask2former`` (default;
    transformers, a different checkpoint from the official one, so numbers are
    close but not identical), ``mmdet`` (the official model, optional extra
    ``geneval-mmdet``) or ``shapes``. ``colors`` is a ``ColorModel`` or a name:
    ``clip`` (GenEval's classifier) or ``palette`` (the shapes world's rule);
    None picks ``palette`` for the shapes detector and ``clip`` otherwise. Both
    are built here, so missing weights fail before any image is scored.
    """

    version = "1"
    higher_is_better = True
    bounds = (0.0, 1.0)

    @classmethod
    def declared_weights(
        cls,
        strict: bool = True,
        *,
        detector: GenEvalDetector | str = "mask2former",
        colors: ColorModel | str | None = None,
        **options: Any,
    ) -> tuple[WeightsSpec, ...]:
        """Return the pinned weights of the detector and the colour model, without loading either."""
        if isinstance(detector, str):
            detector_weights = geneval_detectors.declared_detector_weights(detector)
            detector_name = detector
        else:
            detector_weights = tuple(getattr(detector, "weights", ()))
            detector_name = detector.name
        if colors is None:
            colors = "palette" if detector_name == "shapes" else "clip"
        if isinstance(colors, str):
            color_weights = geneval_colors.declared_color_weights(colors)
        else:
            color_weights = tuple(getattr(colors, "weights", ()))
        return detector_weights + color_weights

    def __init__(
        self,
        strict: bool = True,
        *,
        detector: GenEvalDetector | str = "mask2former",
        colors: ColorModel | str | None = None,
        detector_weights: str | os.PathLike[str] | None = None,
        clip_weights: str | os.PathLike[str] | None = None,
        device: str | None = None,
    ):
        self.strict = strict
        self.name = "geneval" if strict else "geneval-partial"
        if isinstance(detector, str):
            detector = build_detector(detector, weights=detector_weights, device=device)
        elif detector_weights is not None:
            raise ValueError("detector_weights only applies to a detector given by name")
        if colors is None:
            colors = "palette" if detector.name == "shapes" else "clip"
        if isinstance(colors, str):
            colors = build_color_model(colors, weights=clip_weights, device=device)
        elif clip_weights is not None:
            raise ValueError("clip_weights only applies to a colour model given by name")
        self.detector = detector
        self.colors = colors
        self.weights = tuple(getattr(detector, "weights", ())) + tuple(getattr(colors, "weights", ()))
        self.weight_paths = tuple(getattr(detector, "weight_paths", ())) + tuple(getattr(colors, "weight_paths", ()))
        self.comparable_with_official = bool(getattr(detector, "comparable_with_official", False)) and colors.name == "clip"
        self.version = f"1/{detector.name}/{colors.name}"
        if not self.comparable_with_official:
            logger.warning(
                "geneval: scores with the %s detector and %s colours are not comparable with published GenEval numbers",
                detector.name, colors.name,
            )

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Detect objects in all images with metadata in one call, then judge each image."""
        scores = np.full(len(images), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * len(images)
        details: list[dict[str, Any]] = [{} for _ in images]
        positions = []
        for index, entry in enumerate(metadata):
            if not isinstance(entry, dict) or "include" not in entry or "tag" not in entry:
                errors[index] = "missing GenEval metadata; the geneval reward needs tag and include/exclude clauses"
            else:
                positions.append(index)
        if not positions:
            return ScoreResult(scores=scores, errors=errors, details=details)

        try:
            detections = self.detector.detect([images[i] for i in positions])
        except DETECTOR_ERRORS as error:
            logger.warning("geneval: the %s detector failed on a batch of %d images: %s", self.detector.name, len(positions), error)
            for index in positions:
                errors[index] = f"detector failed: {error}"
            return ScoreResult(scores=scores, errors=errors, details=details)

        for index, found in zip(positions, detections):
            entry = metadata[index]
            kept = keep_detections(found, entry["tag"])
            classify = _memoized(self.colors.bind(images[index]))
            try:
                verdict = judge(kept, entry, classify)
                credit = partial_credit(kept, entry, classify)
            except DETECTOR_ERRORS as error:
                logger.warning("geneval: the %s colour model failed on image %d: %s", self.colors.name, index, error)
                errors[index] = f"colour model failed: {error}"
                continue
            scores[index] = float(verdict.correct) if self.strict else credit
            details[index] = {
                "correct": verdict.correct,
                "reason": verdict.reason,
                "partial": credit,
                "detected": ", ".join(f"{len(objects)} {name}" for name, objects in sorted(kept.items())),
                "detector": self.detector.name,
            }
        return ScoreResult(scores=scores, errors=errors, details=details)


def check_weights_available(
    detector: str,
    *,
    detector_weights: str | os.PathLike[str] | None = None,
    clip_weights: str | os.PathLike[str] | None = None,
) -> None:
    """Raise what building ``GenEvalScorer`` would raise for missing weights, without loading any model.

    Checks the local paths when given; otherwise, with ``HF_HUB_OFFLINE`` set,
    the Hugging Face cache. For ``mmdet`` it also imports mmdetection. Used
    before a long generation run, so missing weights fail first.
    """
    if detector == "mask2former":
        if detector_weights is not None:
            if not Path(detector_weights).is_dir():
                raise MissingWeightsError(
                    f"no Mask2Former folder at {detector_weights}; pass a save_pretrained folder with --detector-weights PATH"
                )
        else:
            geneval_detectors.check_hub_model_cached(
                geneval_detectors.DEFAULT_MASK2FORMER_MODEL, geneval_detectors.DEFAULT_MASK2FORMER_REVISION,
                "--detector-weights",
            )
    elif detector == "mmdet":
        geneval_detectors.import_mmdet()
        if detector_weights is None or not Path(detector_weights).is_file():
            raise MissingWeightsError(
                f"the mmdet Mask2Former checkpoint is missing ({detector_weights or 'no path given'}). Download "
                f"{geneval_detectors.MMDET_CHECKPOINT_URL} and pass the .pth file with --detector-weights PATH."
            )
    if detector == "shapes":
        return

    if clip_weights is not None:
        if not Path(clip_weights).is_file():
            raise MissingWeightsError(f"CLIP weights not found at {clip_weights}; pass an open_clip ViT-L-14 file with --clip-weights PATH")
        return
    import open_clip

    name, tag = geneval_colors.DEFAULT_MODEL_NAME, geneval_colors.DEFAULT_PRETRAINED
    geneval_colors.check_tag_weights_available(name, tag, open_clip.get_pretrained_cfg(name, tag), "--clip-weights")


def _memoized(classify: ColorClassifier) -> ColorClassifier:
    """Return ``classify`` with its results cached, so the strict and partial judgements share one CLIP pass.

    The key is the identity of the detections, which stay alive in the caller's
    ``kept`` dictionary for as long as this wrapper is used.
    """
    results: dict[tuple[str, tuple[int, ...]], list[str]] = {}

    def classify_once(object_name: str, objects: Sequence[Detection]) -> list[str]:
        key = (object_name, tuple(id(obj) for obj in objects))
        if key not in results:
            results[key] = list(classify(object_name, objects))
        return results[key]

    return classify_once


class PartialGenEvalScorer(GenEvalScorer):
    """GenEval with partial credit in [0, 1], the training reward."""

    def __init__(self, **options: Any) -> None:
        super().__init__(strict=False, **options)

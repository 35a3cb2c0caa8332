"""Rewards of the shapes world, from GenEval's judging with the shapes detector."""

from __future__ import annotations

import numpy as np

from cogrpo.benchmarks.geneval import judge, keep_detections, partial_credit
from cogrpo.rewards.base import ScoreResult, Scorer
from cogrpo.world.detector import color_classifier, detect


class ShapesReward(Scorer):
    """GenEval judging of shapes-world images, as a reward in [0, 1].

    ``strict=True`` gives 1.0 when GenEval's rules judge the image correct and
    0.0 otherwise. ``strict=False`` (the default training reward) gives partial
    credit: the mean over the prompt's clauses of the count, colour, position and
    exclusion credits, each clamped to [0, 1] (see
    ``cogrpo.benchmarks.geneval.partial_credit``). Every image needs its GenEval
    metadata.
    """

    version = "1"
    higher_is_better = True
    bounds = (0.0, 1.0)

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.name = "shapes-strict" if strict else "shapes"

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        scores = np.full(len(images), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * len(images)
        details: list[dict] = [{} for _ in images]
        for index, (image, entry) in enumerate(zip(images, metadata)):
            if entry is None:
                errors[index] = "missing GenEval metadata; the shapes reward needs include/exclude clauses"
                continue
            kept = keep_detections(detect(image), entry["tag"])
            classify = color_classifier(image)
            verdict = judge(kept, entry, classify)
            credit = partial_credit(kept, entry, classify)
            scores[index] = float(verdict.correct) if self.strict else credit
            details[index] = {"correct": verdict.correct, "reason": verdict.reason, "partial": credit}
        return ScoreResult(scores=scores, errors=errors, details=details)


class StrictShapesReward(ShapesReward):
    """The strict (0 or 1) shapes reward."""

    def __init__(self) -> None:
        super().__init__(strict=True)

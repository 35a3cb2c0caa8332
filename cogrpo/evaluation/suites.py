"""Benchmark suites: prompts, images per prompt, the scorer, the folder layout and the aggregation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cogrpo.benchmarks.geneval import TAGS, summarize
from cogrpo.evaluation.layouts import LAYOUTS, extra_files


@dataclass
class BenchmarkSuite:
    """One benchmark: its prompts (with metadata), how many images each, how to score and aggregate."""

    name: str
    version: str
    entries: list[dict[str, Any]]
    prompt_sha256: str
    images_per_prompt: int
    make_scorer: Callable[[], Any]
    aggregate: Callable[[list[dict[str, Any]]], dict[str, float]]
    layout: str = "geneval"
    categories: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    # Generated tiles per image file: 4 for DPG-Bench's 2x2 grids, else 1.
    tiles: int = 1
    # Keys of the scorer's per-image details that the score records keep even when
    # they are not scalars (they must be JSON values).
    detail_keys: tuple[str, ...] = ()

    def image_path(self, root: Path, index: int, sample: int) -> Path:
        """Return where image ``sample`` of prompt ``index`` lives, in the benchmark's official layout."""
        if self.layout == "geneval":
            return root / f"{index:05d}" / "samples" / f"{sample:05d}.png"
        if self.layout in LAYOUTS:
            return LAYOUTS[self.layout].image_path(root, self.entries[index], sample)
        return root / f"{index:05d}" / f"{sample:05d}.png"

    def find_image(self, root: Path, index: int, sample: int) -> Path | None:
        """Return the existing file of image ``sample`` of prompt ``index``, or None.

        Layouts whose official scorer reads several image types (DPG-Bench) accept
        each of them, so images from the official scripts are found.
        """
        if self.layout in LAYOUTS:
            return LAYOUTS[self.layout].find_image(root, self.entries[index], sample)
        path = self.image_path(root, index, sample)
        return path if path.exists() else None

    def extra_files(self, root: Path, images_per_prompt: int) -> list[dict[str, Any]] | None:
        """List the files under ``root`` that are no image of the evaluation; None when the layout is not checked."""
        if self.layout not in LAYOUTS:
            return None
        return extra_files(LAYOUTS[self.layout], root, self.entries, images_per_prompt)

    def write_prompt_files(self, root: Path, index: int) -> None:
        """Write the per-prompt files of the layout (GenEval: ``metadata.jsonl``)."""
        if self.layout == "geneval":
            folder = root / f"{index:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            entry = {k: v for k, v in self.entries[index].items() if k in {"tag", "include", "exclude", "prompt"}}
            (folder / "metadata.jsonl").write_text(json.dumps(entry) + "\n", encoding="utf-8")


def geneval_aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """GenEval's aggregation: per-tag accuracy and the mean of the tags as ``overall``.

    A failed sample (no score) counts as incorrect, so missing images lower the
    score instead of shrinking the denominator.
    """
    pairs = [(r["tag"], bool(r.get("score") == 1.0)) for r in records]
    return summarize(pairs)


def _sha256_entries(entries: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(json.dumps(entry, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def shapes_suite() -> BenchmarkSuite:
    """Build the held-out shapes benchmark: GenEval rules with the shapes detector, 4 images per prompt."""
    from importlib import resources

    from cogrpo.rewards.shapes import StrictShapesReward
    from cogrpo.world.prompts import EVAL_SET_RESOURCE, load_eval_set

    entries = load_eval_set()
    raw = resources.files("cogrpo.data").joinpath(EVAL_SET_RESOURCE).read_bytes()
    return BenchmarkSuite(
        name="shapes",
        version="1",
        entries=entries,
        prompt_sha256=hashlib.sha256(raw).hexdigest(),
        images_per_prompt=4,
        make_scorer=StrictShapesReward,
        aggregate=geneval_aggregate,
        layout="geneval",
        categories=TAGS,
    )


def geneval_suite(
    detector: str = "mask2former",
    *,
    detector_weights: str | None = None,
    clip_weights: str | None = None,
    data_dir: str | None = None,
) -> BenchmarkSuite:
    """Build the official GenEval benchmark: 553 prompts, 4 images each, strict judging.

    The metadata is djghosh13/geneval's ``prompts/evaluation_metadata.jsonl`` at
    the pinned commit, checked against its pinned SHA-256 (see
    ``cogrpo.benchmarks.geneval.fetch_official_files`` for where it is found).
    ``detector`` is ``mask2former`` (transformers; close to, but not identical
    with, the official numbers), ``mmdet`` (the official model) or ``shapes``.
    The weights are checked here and loaded when scoring starts.
    """
    from functools import partial

    from cogrpo.benchmarks.geneval import OFFICIAL_COMMIT, OFFICIAL_METADATA_SHA256, OFFICIAL_REPO, load_official_metadata
    from cogrpo.benchmarks.geneval_detectors import DETECTOR_NAMES
    from cogrpo.rewards.geneval import GenEvalScorer, check_weights_available

    if detector not in DETECTOR_NAMES:
        raise ValueError(f"unknown detector {detector!r}; allowed: {', '.join(DETECTOR_NAMES)}")
    # Missing weights fail here, before any image is generated.
    check_weights_available(detector, detector_weights=detector_weights, clip_weights=clip_weights)
    return BenchmarkSuite(
        name="geneval",
        version=f"1/{detector}",
        entries=load_official_metadata(data_dir),
        prompt_sha256=OFFICIAL_METADATA_SHA256,
        images_per_prompt=4,
        make_scorer=partial(GenEvalScorer, strict=True, detector=detector,
                            detector_weights=detector_weights, clip_weights=clip_weights),
        aggregate=geneval_aggregate,
        layout="geneval",
        categories=TAGS,
        info={"detector": detector, "metadata_source": f"{OFFICIAL_REPO}@{OFFICIAL_COMMIT}",
              "comparable_with_official": detector == "mmdet"},
    )


def mean_aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean score over all samples, failed samples excluded (reported as n_failed)."""
    scores = [r["score"] for r in records if r.get("score") is not None]
    return {"overall": float(np.mean(scores)) if scores else float("nan")}

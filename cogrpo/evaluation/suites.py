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

    def image_path(self, root: Path, index: int, sample: int) -> Path:
        """Return where image ``sample`` of prompt ``index`` lives, in the benchmark's official layout."""
        if self.layout == "geneval":
            return root / f"{index:05d}" / "samples" / f"{sample:05d}.png"
        if self.layout == "hps":
            style = self.entries[index].get("style", "all")
            return root / style / f"{index:05d}-{sample}.jpg"
        return root / f"{index:05d}" / f"{sample:05d}.png"

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


def mean_aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean score over all samples, failed samples excluded (reported as n_failed)."""
    scores = [r["score"] for r in records if r.get("score") is not None]
    return {"overall": float(np.mean(scores)) if scores else float("nan")}

"""The evaluation runner: generate, score and aggregate a benchmark, resumably and in shards.

Per-image seeds derive from (seed, prompt index, image index), so results do
not depend on batch size or on how prompts are split across processes. Images
are written in the benchmark's official layout (write to a temporary file, then
rename), scores are appended to one JSONL file per process keyed by the image's
SHA-256, and a rerun of the same command skips every image and score already
done. Rank 0 gathers the records and writes the result JSON atomically.

The result JSON identifies what was measured. It records the benchmark version
and prompt file SHA-256, the model, the scorer's class, version and weight
revisions, the SHA-256 of the local weight files the scorer loaded, seeds,
dtype, batch size, world size, library versions, git commit and determinism
settings. ``samples_sha256`` is the SHA-256 of the ordered
per-sample (prompt index, image index, prompt, image SHA-256, score) list, so
two runs that generated and scored the same images the same way have the same
value. Failed samples are counted in ``n_failed`` and set ``incomplete``. A
metric that is not finite is written as null, with its reason under
``null_metrics``.

A grid layout (DPG-Bench: one 2x2 grid per prompt) generates each tile with its
own seed, (seed, prompt index, image index x tiles + tile index), and writes the
grid file only when all of its tiles are decoded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cogrpo.checkpoint_io import atomic_write_bytes, atomic_write_json
from cogrpo.determinism import determinism_record
from cogrpo.evaluation.layouts import JPEG_QUALITY, compose_grid
from cogrpo.evaluation.suites import BenchmarkSuite
from cogrpo.rewards.base import Scorer, WeightsSpec
from cogrpo.rewards.guard import GuardedScorer
from cogrpo.models.precision import dtype_name
from cogrpo.rl.trainer import derive_seed
from cogrpo.weight_digests import weight_sha256

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass
class EvalCounters:
    """How much work a run did (for tests and logs)."""

    generated: int = 0
    scored: int = 0
    reused_images: int = 0
    reused_scores: int = 0


@dataclass
class EvalRequest:
    """Settings of one evaluation: steps, seed, images per prompt, limit and batch size."""

    steps: int
    seed: int = 0
    images_per_prompt: int | None = None
    limit: int | None = None
    batch_size: int = 32
    schedule_name: str = "default"
    score_only: bool = False
    model_info: dict[str, Any] = field(default_factory=dict)
    # Seconds one scorer batch call may take (0 disables the timeout), and retries after a call raises.
    score_timeout_s: float = 600.0
    score_retries: int = 2
    # Compute dtype of the generating model, e.g. "bfloat16". None takes the backend's, and stays None
    # for --score-only runs, whose images were generated elsewhere.
    dtype: str | None = None
    # Recorded in the result: the caller accepts failed samples (`cogrpo eval --allow-partial`).
    allow_partial: bool = False


SETTINGS_FILE = "eval_settings.json"


class EvalSettingsMismatch(ValueError):
    """An output folder contains images or scores made with other settings than the requested run."""


def _generation_settings(suite: BenchmarkSuite, request: EvalRequest) -> dict[str, Any]:
    """Return what the images depend on: benchmark, prompts, model, schedule, steps, seed and dtype."""
    return {
        "benchmark": suite.name,
        "version": suite.version,
        "prompt_sha256": suite.prompt_sha256,
        # The table label does not change the images, so a rerun may correct it.
        "model": {key: value for key, value in request.model_info.items() if key != "label"},
        "schedule": request.schedule_name,
        "steps": request.steps,
        "seed": request.seed,
        "dtype": request.dtype,
    }


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return found
    return [] if old == new else [f"{prefix}: {old!r} there, {new!r} now"]


def check_settings(out_dir: Path, suite: BenchmarkSuite, request: EvalRequest, write: bool) -> None:
    """Check that ``out_dir`` contains no images or scores made with other settings, then record these (``write``).

    ``OUT/eval_settings.json`` keeps the generation settings (None for images made
    elsewhere and scored with ``--score-only``) and the scorer's description. A
    rerun that generates must match the recorded generation settings, because it
    reuses the images. A rerun must match the recorded scorer while score files
    exist, because it reuses the scores. Raises ``EvalSettingsMismatch`` naming
    each differing field.
    """
    path = out_dir / SETTINGS_FILE
    scoring = json.loads(json.dumps(scorer_description(suite)))
    generation = None if request.score_only else json.loads(json.dumps(_generation_settings(suite, request)))
    record = {"generation": generation, "scoring": scoring}
    if path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise EvalSettingsMismatch(
                f"{path} is not valid JSON ({error}); it records how the images in {out_dir} were made. "
                f"Restore it, or evaluate into a new --out folder") from error
        differences = []
        if any(out_dir.glob("scores-rank*.jsonl")):
            differences += _differences(recorded.get("scoring"), scoring, "scorer")
        if generation is not None:
            if recorded.get("generation") is None:
                differences.append("images: made elsewhere (a --score-only run) there, generated now")
            else:
                differences += _differences(recorded["generation"], generation, "")
        if differences:
            raise EvalSettingsMismatch(
                f"{out_dir} contains an evaluation made with other settings, and a rerun would reuse its images and "
                f"scores: {'; '.join(differences)}. Evaluate into a new --out folder, or rerun with the recorded "
                f"settings to resume (recorded in {path})")
        # A --score-only rerun keeps the record of how the images were generated.
        record["generation"] = recorded.get("generation") if generation is None else generation
        if record == recorded:
            return
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)


def image_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(image: np.ndarray, suffix: str) -> bytes:
    """Encode ``image`` as JPEG (quality ``JPEG_QUALITY``) for a .jpg or .jpeg path, else as PNG."""
    if suffix.lower() not in {".jpg", ".jpeg"}:
        return _png_bytes(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries that shape the numbers."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("cogrpo", "torch", "torchvision", "diffusers", "transformers", "open-clip-torch", "numpy", "pillow",
                 "mmdet", "mmcv-full", "modelscope"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def _read_records(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    records = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: skipping a truncated line (an interrupted run); it will be scored again", path)
                continue
            records[(record["index"], record["sample"])] = record
    return records


def run_benchmark(
    suite: BenchmarkSuite,
    request: EvalRequest,
    out_dir: Path,
    backend=None,
    schedule=None,
    accelerator=None,
    counters: EvalCounters | None = None,
) -> dict[str, Any] | None:
    """Generate missing images, score missing samples and write ``result.json`` (rank 0).

    ``backend`` and ``schedule`` are needed unless ``request.score_only``.
    Returns the result dictionary on rank 0 and None elsewhere.
    """
    counters = counters if counters is not None else EvalCounters()
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    images_per_prompt = request.images_per_prompt if request.images_per_prompt is not None else suite.images_per_prompt
    if images_per_prompt < 1:
        raise ValueError(f"invalid images_per_prompt={images_per_prompt}; expected at least 1")
    count = len(suite.entries) if request.limit is None else min(request.limit, len(suite.entries))
    if count < 1:
        raise ValueError(f"invalid limit={request.limit}; expected at least 1 prompt")
    image_root = out_dir / "images"
    my_indices = [i for i in range(count) if i % world == rank]
    jobs = [(i, k) for i in my_indices for k in range(images_per_prompt)]

    if not request.score_only:
        if backend is None:
            raise ValueError("a backend is needed to generate images; pass --score-only to score existing images")
        if request.dtype is None:
            compute_dtype = getattr(backend, "compute_dtype", torch.float32)
            request = dataclasses.replace(request, dtype=dtype_name(compute_dtype))
    check_settings(out_dir, suite, request, write=rank == 0)
    if not request.score_only:
        _generate(suite, request, image_root, backend, schedule, jobs, counters)
    scores_path = out_dir / f"scores-rank{rank:03d}-of-{world:03d}.jsonl"
    weights_path = out_dir / f"scorer-weights-rank{rank:03d}-of-{world:03d}.json"
    _score(suite, request, image_root, jobs, scores_path, weights_path, counters)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if rank != 0:
        return None
    records: dict[tuple[int, int], dict[str, Any]] = {}
    for path in sorted(out_dir.glob(f"scores-rank*-of-{world:03d}.jsonl")):
        records.update(_read_records(path))
    ordered = [records[(i, k)] for i in range(count) for k in range(images_per_prompt) if (i, k) in records]
    loaded_weights: dict[str, str] = {}
    for path in sorted(out_dir.glob(f"scorer-weights-rank*-of-{world:03d}.json")):
        loaded_weights.update(json.loads(path.read_text(encoding="utf-8")))
    result = _result(suite, request, ordered, count, images_per_prompt, world, dict(sorted(loaded_weights.items())))
    extras = suite.extra_files(image_root, images_per_prompt)
    if extras is not None:
        # Files that no prompt's image path names are listed, never scored or dropped silently.
        result["extra_files"] = extras
        if extras:
            logger.warning("%s: %d files are not images of this evaluation and were not scored, e.g. %s",
                           image_root, len(extras), extras[0]["path"])
    atomic_write_json(out_dir / RESULT_FILE, result)
    return result


def _generate(suite, request, image_root, backend, schedule, jobs, counters) -> None:
    from cogrpo.sampling.sampler import image_generators, sample

    missing = []
    for index, sample_index in jobs:
        if suite.find_image(image_root, index, sample_index) is not None:
            counters.reused_images += 1
        else:
            missing.append((index, sample_index))
    # Batches hold tiles. An image file (a 2x2 grid when suite.tiles is 4) is written
    # only once all its tiles are decoded, so a killed run leaves no partial grid and
    # a rerun regenerates only the grids that were in progress. Tile t of image k
    # uses the seed (seed, prompt index, k * tiles + t), which is (seed, i, k) for tiles=1.
    tiles = suite.tiles
    tile_jobs = [(i, k, t) for i, k in missing for t in range(tiles)]
    pending: dict[tuple[int, int], list[np.ndarray | None]] = {}
    for start in range(0, len(tile_jobs), request.batch_size):
        batch = tile_jobs[start : start + request.batch_size]
        prompts = [suite.entries[i]["prompt"] for i, _, _ in batch]
        seeds = [derive_seed(request.seed, i, k * tiles + t) for i, k, t in batch]
        trajectory = sample(backend, prompts, image_generators(seeds), steps=request.steps, schedule=schedule,
                            schedule_mode="mean", chunk_size=request.batch_size)
        images = backend.decode(trajectory.tokens.view(-1, *trajectory.grid))
        for (index, sample_index, tile), image in zip(batch, images):
            parts = pending.setdefault((index, sample_index), [None] * tiles)
            parts[tile] = image
            if any(part is None for part in parts):
                continue
            del pending[(index, sample_index)]
            suite.write_prompt_files(image_root, index)
            path = suite.image_path(image_root, index, sample_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _image_bytes(compose_grid(parts), path.suffix))
            counters.generated += 1


def scorer_weight_sha256(scorer: Scorer) -> dict[str, str]:
    """Return the SHA-256 of the local weight files that ``scorer`` loaded, keyed by path (see ``weight_sha256``)."""
    inner = getattr(scorer, "inner", scorer)
    digests: dict[str, str] = {}
    for path in getattr(inner, "weight_paths", ()):
        digests.update(weight_sha256(path))
    return digests


def _record_scorer_weights(scorer: Scorer, weights_path: Path) -> None:
    """Add the digests of the scorer's weight files to this process's ``scorer-weights`` file.

    A rerun that scores nothing builds no scorer, so the digests of earlier runs
    are kept in this file instead of being computed again.
    """
    digests = json.loads(weights_path.read_text(encoding="utf-8")) if weights_path.exists() else {}
    digests.update(scorer_weight_sha256(scorer))
    atomic_write_json(weights_path, digests)


def _score(suite, request, image_root, jobs, scores_path, weights_path, counters) -> None:
    done = _read_records(scores_path)
    todo = []
    for index, sample_index in jobs:
        path = suite.find_image(image_root, index, sample_index) or suite.image_path(image_root, index, sample_index)
        digest = image_sha256(path) if path.exists() else None
        previous = done.get((index, sample_index))
        # A failed score (timeout, scorer error) is retried on a rerun; a missing image stays
        # failed until the image appears, which changes its digest.
        settled = previous is not None and (previous.get("score") is not None or digest is None)
        if settled and previous.get("image_sha256") == digest:
            counters.reused_scores += 1
            continue
        todo.append((index, sample_index, path, digest))
    if not todo:
        return
    scorer = GuardedScorer.wrap(suite.make_scorer(), timeout_s=request.score_timeout_s, retries=request.score_retries)
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    _record_scorer_weights(scorer, weights_path)
    with scores_path.open("a", encoding="utf-8") as handle:
        for start in range(0, len(todo), request.batch_size):
            batch = todo[start : start + request.batch_size]
            images, prompts, metadata, rows = [], [], [], []
            for index, sample_index, path, digest in batch:
                entry = suite.entries[index]
                record = {"index": index, "sample": sample_index, "prompt": entry["prompt"], "tag": entry.get("tag"),
                          "image": str(path.relative_to(image_root)), "image_sha256": digest, "score": None}
                if digest is None:
                    record["error"] = "missing image"
                    handle.write(json.dumps(record) + "\n")
                    counters.scored += 1
                    continue
                images.append(path)
                prompts.append(entry["prompt"])
                # GenEval-style entries carry their clauses, DPG entries the item id of their questions.
                metadata.append(entry if "include" in entry or "item_id" in entry else None)
                rows.append(record)
            if images:
                result = scorer.score_detailed(images, prompts, metadata)
                for record, score, error, detail in zip(rows, result.scores, result.errors, result.details):
                    record["score"] = float(score) if np.isfinite(score) else None
                    if error or record["score"] is None:
                        record["error"] = error or "score is not finite"
                    if detail:
                        record["details"] = {k: v for k, v in detail.items()
                                             if isinstance(v, (str, int, float, bool)) or k in suite.detail_keys}
                    handle.write(json.dumps(record) + "\n")
                    counters.scored += 1
            handle.flush()
            os.fsync(handle.fileno())


def samples_sha256(records: list[dict[str, Any]]) -> str:
    """Return the SHA-256 of the ordered (prompt index, image index, prompt, image SHA-256, score) records."""
    digest = hashlib.sha256()
    for record in records:
        row = [record["index"], record["sample"], record["prompt"], record.get("image_sha256"), record.get("score")]
        digest.update(json.dumps(row, allow_nan=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def scorer_description(suite: BenchmarkSuite) -> dict[str, Any]:
    """Describe the suite's scorer without building it: class, name, version and pinned weights.

    ``make_scorer`` may be a Scorer subclass or a ``functools.partial`` of one, whose
    arguments go to the class's ``declared_weights`` (so the GenEval detector and colour
    model, and the DPG-Bench VQA model, are listed). Any other factory is described by
    the suite's ``scorer`` label only.
    """
    description: dict[str, Any] = {}
    if suite.info.get("scorer"):
        description["label"] = suite.info["scorer"]
    factory = suite.make_scorer
    args: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        # An outer partial's arguments come after (positional) or over (keyword) the inner one's.
        args = factory.args + args
        keywords = {**factory.keywords, **keywords}
        factory = factory.func
    if isinstance(factory, type) and issubclass(factory, Scorer):
        specs = factory.declared_weights(*args, **keywords)
        description.update({
            "class": f"{factory.__module__}.{factory.__qualname__}",
            "name": factory.name,
            "version": factory.version,
            "weights": [{"repo_id": spec.repo_id, "filename": spec.filename, "revision": spec.revision,
                         "sha256": spec.sha256} for spec in specs if isinstance(spec, WeightsSpec)],
        })
    return description


def _null_metric_reasons(metrics: dict[str, Any]) -> dict[str, str]:
    """Return why each non-finite metric is written as null."""
    return {key: f"the value was {value!r}, usually because none of its samples was scored"
            for key, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)}


def _result(suite, request, records, count, images_per_prompt, world, loaded_weights) -> dict[str, Any]:
    expected = count * images_per_prompt
    failed = [r for r in records if r.get("score") is None]
    # Missing records (a shard that never reported) also count as failures.
    n_failed = len(failed) + (expected - len(records))
    metrics = suite.aggregate(records)
    result = {
        "benchmark": {"name": suite.name, "version": suite.version, "prompt_sha256": suite.prompt_sha256,
                      "n_prompts": count, "n_prompts_total": len(suite.entries), **suite.info},
        "model": request.model_info,
        "schedule": request.schedule_name,
        "steps": request.steps,
        "seed": request.seed,
        "seed_rule": ("derive_seed(seed, prompt_index, image_index)" if suite.tiles == 1 else
                      f"derive_seed(seed, prompt_index, image_index * {suite.tiles} + tile_index)"),
        "images_per_prompt": images_per_prompt,
        "tiles_per_image": suite.tiles,
        "dtype": request.dtype,
        "batch_size": request.batch_size,
        "world_size": world,
        "score_only": request.score_only,
        "partial": count < len(suite.entries),
        "scorer": {**scorer_description(suite), "weight_sha256": loaded_weights},
        "determinism": determinism_record(),
        "versions": library_versions(),
        "git_commit": _git_commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": metrics,
        "n_samples": expected,
        "n_failed": n_failed,
        "incomplete": n_failed > 0,
        "allow_partial": request.allow_partial,
        "samples_sha256": samples_sha256(records),
        "samples": records,
    }
    null_metrics = _null_metric_reasons(metrics)
    if null_metrics:
        result["null_metrics"] = null_metrics
    return result


def evaluate_in_memory(
    suite: BenchmarkSuite,
    backend,
    schedule,
    *,
    steps: int,
    seed: int = 0,
    limit: int | None = None,
    images_per_prompt: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Evaluate without writing files (used for the trainer's periodic and final tables)."""
    from cogrpo.sampling.sampler import image_generators, sample

    if suite.tiles != 1:
        raise ValueError(f"benchmark {suite.name!r} scores grids of {suite.tiles} tiles; evaluate it with run_benchmark")
    total = len(suite.entries)
    # A limited evaluation takes evenly spaced prompts, so every tag stays represented.
    indices = list(range(total)) if limit is None or limit >= total else sorted({int(i) for i in np.linspace(0, total - 1, limit)})
    k = images_per_prompt or suite.images_per_prompt
    jobs = [(i, j) for i in indices for j in range(k)]
    scorer = suite.make_scorer()
    records = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        entries = [suite.entries[i] for i, _ in batch]
        seeds = [derive_seed(seed, i, j) for i, j in batch]
        trajectory = sample(backend, [e["prompt"] for e in entries], image_generators(seeds), steps=steps,
                            schedule=schedule, schedule_mode="mean", chunk_size=batch_size)
        images = list(backend.decode(trajectory.tokens.view(-1, *trajectory.grid)))
        result = scorer.score_detailed(images, [e["prompt"] for e in entries],
                                       [e if "include" in e else None for e in entries])
        for (i, j), entry, score in zip(batch, entries, result.scores):
            records.append({"index": i, "sample": j, "tag": entry.get("tag"),
                            "score": float(score) if np.isfinite(score) else None})
    metrics = suite.aggregate(records)
    metrics["n_samples"] = len(records)
    return metrics

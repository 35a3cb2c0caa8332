"""Suites of the public benchmarks: HPD v2 with HPS v2.1, the ImageReward benchmark, and DPG-Bench.

Each factory loads the benchmark's prompt file (a pinned download, or a local copy
passed as ``prompts``), checks its checksum, and records the file's SHA-256 as the
suite's ``prompt_sha256``. ``prompt_sha256`` as an argument pins the expected
value, for a file whose checksum the project does not record or for a deliberately
different file. Images go in the official folder layouts of ``layouts.py``, so the
official scripts can score our images and ``--score-only`` can score theirs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cogrpo.benchmarks import download
from cogrpo.benchmarks.download import PinnedFile
from cogrpo.evaluation.layouts import JPEG_QUALITY
from cogrpo.evaluation.suites import BenchmarkSuite

# --------------------------------------------------------------------------- HPD v2 (HPS v2.1)


def hpdv2_prompt_sha256(file_sha256: dict[str, str]) -> str:
    """Return the SHA-256 of a ``sha256sum``-style manifest of the style files, in style order.

    The manifest has one line ``<sha256>  benchmark/<style>.json`` per style.
    """
    manifest = "".join(f"{digest}  benchmark/{style}.json\n" for style, digest in file_sha256.items())
    return hashlib.sha256(manifest.encode()).hexdigest()


def hps_suite(prompts: str | os.PathLike[str] | None = None, prompt_sha256: str | None = None) -> BenchmarkSuite:
    """Build the HPD v2 benchmark: 4 styles x 800 prompts, one image each, scored with HPS v2.1.

    ``prompts`` is a folder with ``<style>.json`` files (or ``benchmark/<style>.json``).
    Without it the files come from the Hugging Face cache or are downloaded from the
    hub dataset ``zhwang/HPDv2`` at its pinned revision, unless ``HF_HUB_OFFLINE`` is
    set. ``prompt_sha256`` pins the manifest digest that results record as
    ``prompt_sha256`` (see ``hpdv2_prompt_sha256``).
    """
    from cogrpo.rewards.hps import HPDV2_REVISION, HPDV2_STYLES, HPSScorer, hpdv2_prompt_file, load_hpdv2_prompts

    prompts_by_style = load_hpdv2_prompts(local_dir=prompts)
    paths = {style: hpdv2_prompt_file(style, prompts) for style in HPDV2_STYLES}
    file_sha256 = {style: download.file_checksums(path)[0] for style, path in paths.items()}
    digest = hpdv2_prompt_sha256(file_sha256)
    if prompt_sha256 is not None and digest != prompt_sha256.lower():
        listing = ", ".join(f"{path} (SHA-256 {file_sha256[style]})" for style, path in paths.items())
        raise download.ChecksumMismatchError(
            f"the HPD v2 prompt files {listing} have manifest SHA-256 {digest}, expected {prompt_sha256.lower()} "
            f"(the pinned value). Pass the prompt files that the pin was taken from, or pin {digest} after "
            f"checking these files."
        )

    entries = [
        {"prompt": prompt, "style": style, "style_index": index, "tag": style}
        for style in HPDV2_STYLES
        for index, prompt in enumerate(prompts_by_style[style])
    ]
    source = str(Path(prompts).resolve()) if prompts is not None else f"hf://datasets/zhwang/HPDv2@{HPDV2_REVISION}/benchmark"
    return BenchmarkSuite(
        name="hps",
        version="1",
        entries=entries,
        prompt_sha256=digest,
        images_per_prompt=1,
        make_scorer=HPSScorer,
        aggregate=hps_aggregate,
        layout="hps",
        categories=tuple(HPDV2_STYLES),
        info={
            "scorer": "HPS v2.1 (xswu/HPSv2 HPS_v2.1_compressed.pt), cosine x 100",
            "prompt_source": source,
            "prompt_files_sha256": file_sha256,
            "jpeg_quality": JPEG_QUALITY,
            "failed_samples": "left out of the style means and counted in n_failed",
        },
    )


def hps_aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Return the HPS x 100 per style and ``overall``, the mean of the style means.

    A style's mean covers its scored images, so a failed or missing image leaves the
    mean and counts only in ``n_failed``. A style with no scored image is NaN, and so
    is ``overall`` then. With all 800 images of a style, the mean equals the official
    mean of ten 80-image chunk means.
    """
    from cogrpo.rewards.hps import HPDV2_STYLES

    scores_by_style: dict[str, list[float]] = {}
    for record in records:
        scores = scores_by_style.setdefault(record["tag"], [])
        if record.get("score") is not None:
            scores.append(record["score"])
    per_style = {}
    for style in HPDV2_STYLES:
        if style in scores_by_style:
            scores = scores_by_style[style]
            per_style[style] = 100.0 * float(np.mean(scores)) if scores else math.nan
    overall = float(np.mean(list(per_style.values()))) if per_style else math.nan
    return {"overall": overall, **per_style}


def _checksum_fix(prompt_sha256: str | None) -> str:
    if prompt_sha256 is None:
        return "Pass an unmodified copy of that file, or pin a different file on purpose with --prompts-sha256 SHA256."
    return "Pass the file whose SHA-256 was pinned, or change --prompts-sha256."


# --------------------------------------------------------------------------- ImageReward benchmark

IMAGEREWARD_PROMPTS_FILE = PinnedFile(
    repo="THUDM/ImageReward",
    commit="c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb",
    path="benchmark/benchmark-prompts.json",
    sha256="34682e824ebb3ad8e2531b3cde1b362dc72e1e29946ff6fab77bb49e9edb4b21",
)
IMAGEREWARD_IMAGES_PER_PROMPT = 10


def load_imagereward_prompts(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read ``benchmark-prompts.json``, a JSON list of ``{"id", "prompt"}`` objects, in file order.

    Returns ``[{"prompt_id": ..., "prompt": ...}, ...]``. Raises ``ValueError`` naming
    the file and the first invalid item when the file has another form, repeats an id,
    or has an id that cannot be part of a file name.
    """
    path = Path(path)
    try:
        items = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: invalid JSON ({error}); expected a list of {{\"id\", \"prompt\"}} objects") from error
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{\"id\", \"prompt\"}} objects")
    entries = []
    seen: set[str] = set()
    for position, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("prompt"), str)):
            raise ValueError(f"{path}: item {position} is {item!r}; expected {{\"id\": str, \"prompt\": str}}")
        prompt_id = item["id"]
        if not prompt_id or "/" in prompt_id or "\\" in prompt_id or prompt_id.startswith("."):
            raise ValueError(f"{path}: item {position} has id {prompt_id!r}, which cannot name an image file")
        if prompt_id in seen:
            raise ValueError(f"{path}: id {prompt_id!r} appears twice; expected unique ids")
        seen.add(prompt_id)
        entries.append({"prompt_id": prompt_id, "prompt": item["prompt"]})
    return entries


def imagereward_suite(prompts: str | os.PathLike[str] | None = None, prompt_sha256: str | None = None) -> BenchmarkSuite:
    """Build the ImageReward benchmark: 100 DiffusionDB prompts, 10 images each, scored with ImageReward v1.0.

    ``prompts`` is a local ``benchmark-prompts.json``. Without it the file is
    downloaded from GitHub at the pinned commit (cached under
    ``$XDG_CACHE_HOME/cogrpo/imagereward``), unless ``HF_HUB_OFFLINE`` is set. The
    file must have the recorded SHA-256, or ``prompt_sha256`` when given.
    """
    from cogrpo.rewards.imagereward import ImageRewardScorer

    pinned = IMAGEREWARD_PROMPTS_FILE
    if prompts is None:
        path = download.fetch_pinned(pinned, download.default_cache_dir("imagereward"), local_option="--prompts PATH")
        source = pinned.url
    else:
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"ImageReward prompt file {path} not found; expected a copy of {pinned.url}")
        source = str(path.resolve())
    fix = _checksum_fix(prompt_sha256)
    digest = download.verify_file(path, pinned, expected_sha256=prompt_sha256, fix=fix)
    return BenchmarkSuite(
        name="imagereward",
        version="1",
        entries=load_imagereward_prompts(path),
        prompt_sha256=digest,
        images_per_prompt=IMAGEREWARD_IMAGES_PER_PROMPT,
        make_scorer=ImageRewardScorer,
        aggregate=imagereward_aggregate,
        layout="imagereward",
        info={
            "scorer": "ImageReward v1.0 (THUDM/ImageReward ImageReward.pt)",
            "prompt_source": source,
            "failed_samples": "left out of the prompt means and counted in n_failed",
        },
    )


def imagereward_aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Return ``overall``, the mean over prompts of each prompt's mean reward, and ``prompt_std``.

    ``prompt_std`` is the population standard deviation of the per-prompt means. A
    prompt whose images all failed leaves both.
    """
    scores_by_prompt: dict[int, list[float]] = defaultdict(list)
    for record in records:
        if record.get("score") is not None:
            scores_by_prompt[record["index"]].append(record["score"])
    means = [float(np.mean(scores)) for scores in scores_by_prompt.values()]
    if not means:
        return {"overall": math.nan, "prompt_std": math.nan}
    return {"overall": float(np.mean(means)), "prompt_std": float(np.std(means))}


# --------------------------------------------------------------------------- DPG-Bench

DPG_TILES = 4
DPG_DETAIL_KEYS: tuple[str, ...] = ("category_scores", "tile_scores", "answers")


def dpg_suite(
    prompts: str | os.PathLike[str] | None = None,
    prompt_sha256: str | None = None,
    vqa: str = "blip",
    *,
    legacy: bool = False,
) -> BenchmarkSuite:
    """Build DPG-Bench: one 2x2 grid of four generations per prompt, scored by VQA questions.

    ``prompts`` is a local ``dpg_bench.csv``, the question table whose ``text``
    column contains the prompts. Without it the file is downloaded from GitHub at the
    pinned commit (cached under ``$XDG_CACHE_HOME/cogrpo/dpg_bench``), unless
    ``HF_HUB_OFFLINE`` is set. The file must have the recorded git blob id, or the
    SHA-256 ``prompt_sha256`` when given. Prompts keep the CSV's order.

    ``vqa`` is ``"blip"`` (``TransformersVQA``, not comparable with published numbers)
    or ``"mplug"`` (the official mPLUG-large, needs modelscope). ``legacy=True`` keeps
    the official script's bugs, so with mPLUG the scoring follows the script behind
    the published numbers. NOTE: the mPLUG path has not been run against published
    numbers, so ``comparable_with_published`` states the design, not a measured match.
    """
    from cogrpo.benchmarks import dpg

    if vqa not in dpg.VQA_BACKENDS:
        raise ValueError(f"invalid VQA backend {vqa!r}; choose one of {', '.join(dpg.VQA_BACKENDS)}")
    pinned = dpg.QUESTIONS_FILE
    if prompts is None:
        path = dpg.fetch_questions()
        source = pinned.url
    else:
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"DPG-Bench question file {path} not found; expected a copy of {pinned.url}")
        source = str(path.resolve())
    fix = _checksum_fix(prompt_sha256)
    digest = download.verify_file(path, pinned, expected_sha256=prompt_sha256, fix=fix)

    all_questions = dpg.load_questions(path)
    scoring_questions = dpg.load_questions(path, legacy=True) if legacy else all_questions
    entries = []
    for item_id, questions in all_questions.items():
        if not questions[0].prompt:
            raise dpg.QuestionFileError(f"{path}:{questions[0].line}: empty text for item {item_id!r}; expected its prompt")
        entries.append({"item_id": item_id, "prompt": questions[0].prompt})

    def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
        return dpg_aggregate(records, entries, scoring_questions, legacy=legacy)

    official_vqa = vqa == "mplug"
    return BenchmarkSuite(
        name="dpg-legacy" if legacy else "dpg",
        version="1",
        entries=entries,
        prompt_sha256=digest,
        images_per_prompt=1,
        make_scorer=partial(dpg.DPGScorer, scoring_questions, vqa=vqa, tiles=DPG_TILES, legacy=legacy),
        aggregate=aggregate,
        layout="dpg",
        tiles=DPG_TILES,
        detail_keys=DPG_DETAIL_KEYS,
        info={
            "scorer": f"DPG-Bench rules ({'official bugs kept' if legacy else 'official bugs fixed'}), VQA {vqa}",
            "prompt_source": source,
            "legacy": legacy,
            "vqa_backend": vqa,
            "vqa_model": dpg.MPLUG_VQA_MODEL if official_vqa else f"{dpg.BLIP_VQA_MODEL}@{dpg.BLIP_VQA_REVISION}",
            "vqa_comparable_with_published": official_vqa,
            "comparable_with_published": official_vqa and legacy,
            "failed_samples": (
                "left out of the averages as in the official script, and counted in n_failed"
                if legacy
                else "score 0 in the overall and category averages, and counted in n_failed"
            ),
        },
    )


def dpg_legacy_suite(
    prompts: str | os.PathLike[str] | None = None, prompt_sha256: str | None = None, vqa: str = "blip"
) -> BenchmarkSuite:
    """Build DPG-Bench with the official script's bugs kept (see ``dpg_suite``)."""
    return dpg_suite(prompts, prompt_sha256, vqa, legacy=True)


def dpg_aggregate(
    records: list[dict[str, Any]], entries: list[dict[str, Any]], questions: dict[str, list[Any]], *, legacy: bool
) -> dict[str, float]:
    """Return DPG-Bench's ``overall`` and ``l1/``, ``l2/`` category scores (x 100) from score records.

    Each scored record carries its per-category values in ``details.category_scores``.
    A failed record scores 0 for every question by default, and is left out with
    ``legacy=True``, as ``dpg.aggregate`` does.
    """
    from cogrpo.benchmarks import dpg

    prompt_records = []
    for record in records:
        item_id = entries[record["index"]]["item_id"]
        if record.get("score") is None:
            error = record.get("error") or "not scored"
            prompt_records.append(
                dpg.failed_record(item_id, questions.get(item_id, []), error, tiles=DPG_TILES, legacy=legacy)
            )
            continue
        categories = (record.get("details") or {}).get("category_scores")
        if categories is None:
            raise ValueError(
                f"the score record of DPG item {item_id!r} has no details.category_scores; "
                f"delete the scores-*.jsonl files of this run and score it again"
            )
        prompt_records.append(
            dpg.PromptRecord(item_id=item_id, score=float(record["score"]), legacy=legacy, category_scores=categories)
        )
    metrics = dpg.aggregate(prompt_records, legacy=legacy)
    return {key: float(value) for key, value in metrics.items() if key not in {"n_samples", "n_failed"}}

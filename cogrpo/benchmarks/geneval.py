"""GenEval: prompt metadata, the official judging rules and the tag aggregation.

The rules follow ``evaluation/evaluate_images.py`` and ``summary_scores.py`` of
djghosh13/geneval at commit af4902f24d3ca90ebbb446dd9891a59e0f82725f:

* detections of a class are sorted by score and kept while the score is
  strictly above 0.3 (0.9 for every class when the prompt's tag is
  ``counting``), at most 16 per class, with no extra non-maximum suppression;
* ``include`` clauses are AND-ed: the top-``count`` detections of the class must
  exist, ``count`` of them must have the requested colour, and a ``position``
  clause compares each of them with every object matched by its target clause;
* ``exclude`` clauses are OR-ed: ``count`` or more detections of the class fail
  the image;
* the overall score is the unweighted mean of the six tag means.

The detector and the colour classifier are plugged in by the caller, so the same
rules judge the official benchmark (with Mask2Former and CLIP) and the embedded
shapes world (with its own detector).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cogrpo.benchmarks import download
from cogrpo.benchmarks.download import PinnedFile

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

SCORE_THRESHOLD = 0.3
COUNTING_SCORE_THRESHOLD = 0.9
MAX_OBJECTS_PER_CLASS = 16
POSITION_THRESHOLD = 0.1

OFFICIAL_REPO = "djghosh13/geneval"
OFFICIAL_COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
OFFICIAL_METADATA_PATH = "prompts/evaluation_metadata.jsonl"
OFFICIAL_METADATA_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"
OFFICIAL_OBJECT_NAMES_PATH = "evaluation/object_names.txt"
OFFICIAL_OBJECT_NAMES_SHA256 = "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd"


class MetadataError(ValueError):
    """A GenEval metadata line that does not follow the schema."""


@dataclass
class Detection:
    """One detected object: class name, box (x1, y1, x2, y2) in pixels, score and optional mask."""

    label: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Judgement:
    """The verdict on one image: ``correct`` and the reasons it failed, if any."""

    correct: bool
    reason: str
    tag: str


# --------------------------------------------------------------------------- metadata


def _fail(source: str, line_number: int, message: str) -> MetadataError:
    return MetadataError(f"{source}:{line_number}: {message}")


def validate_metadata(
    entry: Any,
    *,
    source: str = "<metadata>",
    line_number: int = 0,
    allowed_classes: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Check one metadata object against the GenEval schema and return it.

    ``allowed_classes`` limits the object classes (the official file uses GenEval's
    80 COCO names, the shapes world its own shapes); ``None`` accepts any name.
    """
    classes = sorted(allowed_classes) if allowed_classes is not None else None
    if not isinstance(entry, dict):
        raise _fail(source, line_number, f"expected a JSON object, got {type(entry).__name__}")
    tag = entry.get("tag")
    if tag not in TAGS:
        raise _fail(source, line_number, f"invalid tag {tag!r}; allowed: {', '.join(TAGS)}")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail(source, line_number, f"missing or empty 'prompt' (got {prompt!r})")
    include = entry.get("include")
    if not isinstance(include, list) or not include:
        raise _fail(source, line_number, "'include' must be a non-empty list of clauses")
    exclude = entry.get("exclude", [])
    if not isinstance(exclude, list):
        raise _fail(source, line_number, "'exclude' must be a list of clauses")
    unknown_keys = set(entry) - {"tag", "prompt", "include", "exclude"}
    if unknown_keys:
        raise _fail(source, line_number, f"unknown keys {sorted(unknown_keys)}; allowed: tag, prompt, include, exclude")
    for kind, clauses in (("include", include), ("exclude", exclude)):
        for index, clause in enumerate(clauses):
            where = f"{kind}[{index}]"
            if not isinstance(clause, dict):
                raise _fail(source, line_number, f"{where} must be an object, got {clause!r}")
            unknown = set(clause) - {"class", "count", "color", "position"}
            if unknown:
                raise _fail(source, line_number, f"{where} has unknown keys {sorted(unknown)}; allowed: class, count, color, position")
            name = clause.get("class")
            if not isinstance(name, str) or (classes is not None and name not in classes):
                allowed = ", ".join(classes) if classes is not None else "a class name"
                raise _fail(source, line_number, f"{where}: unknown class {name!r}; allowed: {allowed}")
            count = clause.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise _fail(source, line_number, f"{where}: invalid count {count!r}; expected an integer >= 1")
            if "color" in clause and clause["color"] not in COLORS:
                raise _fail(source, line_number, f"{where}: unknown color {clause['color']!r}; allowed: {', '.join(COLORS)}")
            if "position" in clause:
                position = clause["position"]
                if kind != "include":
                    raise _fail(source, line_number, f"{where}: 'position' is only allowed in include clauses")
                if not (isinstance(position, list) and len(position) == 2):
                    raise _fail(source, line_number, f"{where}: 'position' must be [relation, clause index], got {position!r}")
                relation, target = position
                if relation not in RELATIONS:
                    raise _fail(source, line_number, f"{where}: unknown relation {relation!r}; allowed: {', '.join(RELATIONS)}")
                if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < index:
                    allowed = f"0..{index - 1}" if index > 0 else "none, because clause 0 has no earlier clause"
                    raise _fail(
                        source, line_number,
                        f"{where}: position target {target!r} must be the index of an earlier include clause ({allowed})",
                    )
    return entry


def load_metadata(path: str | os.PathLike[str], allowed_classes: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Read a GenEval metadata JSONL file, one validated object per non-empty line."""
    path = Path(path)
    classes = list(allowed_classes) if allowed_classes is not None else None
    entries = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                text = line.strip()
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise _fail(
                    str(path), line_number,
                    f"malformed JSON ({error.msg} at column {error.colno}) in {shown!r}; expected one JSON object per line",
                ) from None
            entries.append(validate_metadata(entry, source=str(path), line_number=line_number, allowed_classes=classes))
    if not entries:
        raise MetadataError(f"{path}: no prompts found; expected one JSON object per line")
    return entries


def dump_metadata(entries: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write metadata objects as JSONL with GenEval's key order."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(json.dumps(canonical_entry(entry)) + "\n")


def canonical_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``entry`` with keys in GenEval's order (tag, include, exclude, prompt)."""
    out: dict[str, Any] = {"tag": entry["tag"], "include": entry["include"]}
    if entry.get("exclude"):
        out["exclude"] = entry["exclude"]
    out["prompt"] = entry["prompt"]
    return out


def load_object_names(path: str | os.PathLike[str]) -> list[str]:
    """Read GenEval's ``object_names.txt`` (one class name per line)."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise MetadataError(f"{path}: no class names found")
    return names


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- judging


def keep_detections(detections: Iterable[Detection], tag: str) -> dict[str, list[Detection]]:
    """Group detections by class, keeping those GenEval keeps, highest score first."""
    threshold = COUNTING_SCORE_THRESHOLD if tag == "counting" else SCORE_THRESHOLD
    by_class: dict[str, list[Detection]] = {}
    for detection in detections:
        by_class.setdefault(detection.label, []).append(detection)
    kept = {}
    for label, items in by_class.items():
        # The official code orders by np.argsort(scores)[::-1]; doing the same keeps its order for tied scores.
        order = np.argsort(np.asarray([d.score for d in items], dtype=np.float64))[::-1]
        ordered = [items[i] for i in order if items[i].score > threshold][:MAX_OBJECTS_PER_CLASS]
        if ordered:
            kept[label] = ordered
    return kept


def relative_position(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """Return the relations of box A to box B ("left of", "above", ...), GenEval's rule."""
    boxes = np.asarray([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


ColorClassifier = Callable[[str, Sequence[Detection]], Sequence[str]]


def judge(
    detected: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    classify_colors: ColorClassifier | None = None,
) -> Judgement:
    """Judge one image from its kept detections (see ``keep_detections``).

    ``classify_colors(class_name, objects)`` returns one colour name per object; it
    is only called for clauses that request a colour.
    """
    correct = True
    reasons: list[str] = []
    matched_groups: list[Sequence[Detection] | None] = []
    for clause in metadata.get("include", []):
        name = clause["class"]
        count = clause["count"]
        matched = True
        found = list(detected.get(name, []))[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                if classify_colors is None:
                    raise ValueError("this prompt needs a colour classifier; pass classify_colors")
                colors = list(classify_colors(name, found))
                if colors.count(clause["color"]) < count:
                    correct = matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(
                        f"expected {clause['color']} {name}>={count}, found {colors.count(clause['color'])} "
                        f"{clause['color']}; and {seen}"
                    )
            if "position" in clause and matched:
                expected, target_index = clause["position"]
                targets = matched_groups[target_index] if target_index < len(matched_groups) else None
                if targets is None:
                    correct = matched = False
                    reasons.append(f"no target for {name} to be {expected}")
                else:
                    for obj in found:
                        for target in targets:
                            relations = relative_position(obj.box, target.box)
                            if expected not in relations:
                                correct = matched = False
                                reasons.append(f"expected {name} {expected} target, found {' and '.join(sorted(relations))} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        name = clause["class"]
        present = len(detected.get(name, []))
        if present >= clause["count"]:
            correct = False
            reasons.append(f"expected {name}<{clause['count']}, found {present}")
    return Judgement(correct=correct, reason="\n".join(reasons), tag=metadata["tag"])


def judge_detections(
    detections: Iterable[Detection],
    metadata: Mapping[str, Any],
    classify_colors: ColorClassifier | None = None,
) -> Judgement:
    """Apply the score threshold and the per-class limit, then judge the image."""
    return judge(keep_detections(detections, metadata["tag"]), metadata, classify_colors)


def summarize(judgements: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Return the per-tag accuracy and ``overall`` (mean of the tags present).

    ``judgements`` yields ``(tag, correct)``; a tag with no images is absent from
    the result, and ``overall`` is the unweighted mean of the tags present, as in
    GenEval's ``summary_scores.py``.
    """
    totals: dict[str, list[int]] = {}
    for tag, correct in judgements:
        totals.setdefault(tag, [0, 0])
        totals[tag][0] += int(bool(correct))
        totals[tag][1] += 1
    scores = {tag: totals[tag][0] / totals[tag][1] for tag in TAGS if tag in totals}
    scores["overall"] = float(np.mean(list(scores.values()))) if scores else math.nan
    return scores


def partial_credit(
    detected: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    classify_colors: ColorClassifier | None = None,
) -> float:
    """Return a reward in [0, 1]: the mean credit of the include and exclude clauses.

    Count credit is ``max(0, 1 - |count - n| / count)`` over the kept detections,
    colour credit is the share of the top-``count`` objects with the right colour,
    position credit is 1 when the strict rule passes for that clause, and each
    exclude clause gives 1 when it is respected. Unlike the reward server used by
    flow_grpo, every clause credit is clamped to [0, 1] and a failed position
    check counts once.
    """
    credits: list[float] = []
    matched_groups: list[Sequence[Detection] | None] = []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        objects = list(detected.get(name, []))
        credits.append(max(0.0, 1.0 - abs(count - len(objects)) / count))
        found = objects[:count]
        matched = len(found) >= count
        if "color" in clause:
            if found:
                colors = list(classify_colors(name, found)) if classify_colors else []
                credits.append(colors.count(clause["color"]) / count)
                matched = matched and colors.count(clause["color"]) >= count
            else:
                credits.append(0.0)
        if "position" in clause:
            expected, target_index = clause["position"]
            targets = matched_groups[target_index] if target_index < len(matched_groups) else None
            ok = bool(matched and targets) and all(
                expected in relative_position(obj.box, target.box) for obj in found for target in targets
            )
            credits.append(1.0 if ok else 0.0)
            matched = matched and ok
        matched_groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        credits.append(1.0 if len(detected.get(clause["class"], [])) < clause["count"] else 0.0)
    return float(np.clip(np.mean(credits), 0.0, 1.0)) if credits else 0.0


# --------------------------------------------------------------------------- official files

# Environment variable naming a folder with unmodified copies of evaluation_metadata.jsonl and object_names.txt.
OFFICIAL_DATA_ENV = "COGRPO_GENEVAL_DIR"


def official_pinned_files() -> tuple[PinnedFile, PinnedFile]:
    """Return the ``PinnedFile`` of the official metadata and of the object names."""
    return (
        PinnedFile(OFFICIAL_REPO, OFFICIAL_COMMIT, OFFICIAL_METADATA_PATH, sha256=OFFICIAL_METADATA_SHA256),
        PinnedFile(OFFICIAL_REPO, OFFICIAL_COMMIT, OFFICIAL_OBJECT_NAMES_PATH, sha256=OFFICIAL_OBJECT_NAMES_SHA256),
    )


def fetch_official_files(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> tuple[Path, Path]:
    """Return the paths of the official metadata and object names, checked against their pinned SHA-256.

    ``data_dir`` (default: the folder in ``$COGRPO_GENEVAL_DIR``, when set) is a
    folder with local copies named ``evaluation_metadata.jsonl`` and
    ``object_names.txt``. Without one, the files are downloaded from GitHub at
    the pinned commit into ``cache_dir`` (default
    ``$XDG_CACHE_HOME/cogrpo/geneval``), or ``FileNotFoundError`` is raised
    when they are not cached and ``HF_HUB_OFFLINE`` is set. A checksum mismatch
    raises ``ChecksumMismatchError``.
    """
    pinned = official_pinned_files()
    folder = data_dir if data_dir is not None else os.environ.get(OFFICIAL_DATA_ENV) or None
    if folder is not None:
        paths = []
        for item in pinned:
            path = Path(folder) / Path(item.path).name
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found; copy {item.url} there, or unset {OFFICIAL_DATA_ENV} to download it"
                )
            download.verify_file(path, item, fix=f"Replace it with an unmodified copy of {item.url}.")
            paths.append(path)
        return paths[0], paths[1]
    directory = Path(cache_dir) if cache_dir is not None else download.default_cache_dir("geneval")
    option = f"a folder with the files in {OFFICIAL_DATA_ENV}"
    metadata = download.fetch_pinned(pinned[0], directory, timeout=timeout, local_option=option)
    names = download.fetch_pinned(pinned[1], directory, timeout=timeout, local_option=option)
    return metadata, names


def load_official_metadata(data_dir: str | os.PathLike[str] | None = None, **fetch_options: Any) -> list[dict[str, Any]]:
    """Return the 553 official prompts, validated against the official 80 class names.

    The files are found or fetched by ``fetch_official_files``.
    """
    metadata_path, names_path = fetch_official_files(data_dir, **fetch_options)
    return load_metadata(metadata_path, allowed_classes=load_object_names(names_path))

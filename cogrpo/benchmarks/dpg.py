"""DPG-Bench: question table, VQA backends, the official scoring rules and their fixes.

DPG-Bench (the Dense Prompt Graph benchmark from TencentQQGYLab/ELLA, commit
3c228f1dc6c4d3cad0a47493816151a419f14db3, ``dpg_bench/compute_dpg_bench.py``)
asks a VQA model yes/no questions about each generated image:

* every prompt has its own questions, one CSV row each, and a question may
  depend on parent questions of the same prompt (``dependency`` 0 = none);
* each image file is a 2x2 grid of four generations, cropped at (0, 0), (r, 0),
  (0, r), (r, r) with r the tile side;
* per tile, an answer scores 1 only when it equals ``"yes"`` exactly. Then, in
  CSV order, a question is zeroed when any of its parents currently scores 0,
  so zeroing cascades through later questions;
* tile score = mean over the prompt's questions, image score = mean over the
  tiles, benchmark score = mean over images x 100;
* category scores are question-weighted means x 100 per L2 category (the
  ``tuple`` column up to "(") and per L1 category (the L2 name up to "-").

The official script has three bugs, fixed here unless ``legacy=True``:

1. it skips the first data row of the CSV, so that prompt loses question 1, its
   children raise ``KeyError`` and the whole prompt drops out of the average;
2. a missing or unreadable image is skipped and shrinks the denominator (fixed:
   it scores 0 and is counted in ``n_failed``);
3. category scores use the last tile only, before dependency zeroing (fixed:
   all tiles, after zeroing).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cogrpo.benchmarks import download
from cogrpo.benchmarks.download import PinnedFile
from cogrpo.rewards.base import ImageLike, MissingWeightsError, Scorer, ScoreResult, WeightsSpec, to_rgb_array
from cogrpo.weight_digests import hub_snapshot_folder

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
)
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
YES = "yes"
MAX_TILES = 4

BLIP_VQA_MODEL = "Salesforce/blip-vqa-base"
# The hub commit "Update tokenizer_config.json (#4)". It ships pytorch_model.bin
# only (model.safetensors was added by a later commit).
BLIP_VQA_REVISION = "15155863e700256a7b53791e9cba2d8df9258ab3"
BLIP_VQA_WEIGHTS = WeightsSpec(repo_id=BLIP_VQA_MODEL, filename="pytorch_model.bin", revision=BLIP_VQA_REVISION)
MPLUG_VQA_MODEL = "damo/mplug_visual-question-answering_coco_large_en"
# The whole ModelScope model folder, so no file name. NOTE: the revision is not pinned,
# as in the official DPG-Bench script, so None is recorded.
MPLUG_VQA_WEIGHTS = WeightsSpec(repo_id=f"modelscope:{MPLUG_VQA_MODEL}", filename="", revision=None)
VQA_BACKENDS: tuple[str, ...] = ("blip", "mplug")


class QuestionFileError(ValueError):
    """A DPG-Bench question CSV that does not follow the official schema."""


# NOTE: the CSV content was not available when this module was written, so its
# SHA-256 is not recorded. fetch_questions checks the git blob id from the
# commit's tree instead and logs the SHA-256, which should be recorded here.
QUESTIONS_FILE = PinnedFile(
    repo="TencentQQGYLab/ELLA",
    commit="3c228f1dc6c4d3cad0a47493816151a419f14db3",
    path="dpg_bench/dpg_bench.csv",
    sha256=None,
    git_blob_sha1="98457fc9901943f51ff9a30367250fc292533bed",
)


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """One row of the question CSV."""

    item_id: str
    proposition_id: int
    # Parent proposition ids within the same prompt, where 0 means "no parent".
    dependency: tuple[int, ...]
    question: str
    tuple_text: str
    category_broad: str = ""
    category_detailed: str = ""
    prompt: str = ""
    keywords: str = ""
    line: int = 0

    @property
    def l2_category(self) -> str:
        """The ``tuple`` text before "(", e.g. ``"entity - whole"``."""
        return l2_category(self.tuple_text)

    @property
    def l1_category(self) -> str:
        """The L2 category before "-", e.g. ``"entity"``."""
        return l1_category(self.l2_category)


def l2_category(tuple_text: str) -> str:
    """Return the L2 category of a ``tuple`` value, the text before "(" without outer spaces."""
    return tuple_text.split("(")[0].strip()


def l1_category(l2_name: str) -> str:
    """Return the L1 category of an L2 name, the text before "-" without outer spaces."""
    return l2_name.split("-")[0].strip()


def _fail(source: str, line: int, message: str) -> QuestionFileError:
    return QuestionFileError(f"{source}:{line}: {message}")


def _parse_proposition_id(value: str, source: str, line: int) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) < 1:
        raise _fail(source, line, f"invalid proposition_id {value!r}; expected an integer >= 1")
    return int(text)


def _parse_dependency(value: str, source: str, line: int) -> tuple[int, ...]:
    parents = []
    for part in value.split(","):
        text = part.strip()
        if not text.isdigit():
            raise _fail(
                source, line,
                f"invalid dependency {value!r}; expected comma-separated proposition ids, or 0 for no parent",
            )
        parents.append(int(text))
    return tuple(parents)


def _parse_row(row: Mapping[str, str], source: str, line: int) -> Question:
    item_id = row["item_id"].strip()
    if not item_id:
        raise _fail(source, line, "empty item_id; expected the prompt's id, e.g. 'partiprompts97'")
    question = row["question_natural_language"].strip()
    if not question:
        raise _fail(source, line, "empty question_natural_language; expected a yes/no question")
    tuple_text = row["tuple"].strip()
    if not l2_category(tuple_text):
        raise _fail(source, line, f"invalid tuple {row['tuple']!r}; expected e.g. 'entity - whole (cat)'")
    return Question(
        item_id=item_id,
        proposition_id=_parse_proposition_id(row["proposition_id"], source, line),
        dependency=_parse_dependency(row["dependency"], source, line),
        question=question,
        tuple_text=tuple_text,
        category_broad=row["category_broad"].strip(),
        category_detailed=row["category_detailed"].strip(),
        prompt=row["text"].strip(),
        keywords=row["keywords"].strip(),
        line=line,
    )


def _read_rows(path: Path) -> list[Question]:
    source = str(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise QuestionFileError(f"{source}: file is empty; expected a CSV header with columns {', '.join(COLUMNS)}")
        header = [name.strip() for name in header]
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise _fail(
                source, 1,
                f"missing columns {', '.join(missing)}; found {', '.join(header)}; expected {', '.join(COLUMNS)}",
            )
        questions = []
        while True:
            # line_num counts physical lines, so a row starts one line after the previous row ended.
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise _fail(source, line, f"malformed CSV row ({error})") from None
            if not fields or all(not value.strip() for value in fields):
                continue
            if len(fields) != len(header):
                raise _fail(source, line, f"expected {len(header)} fields as in the header, got {len(fields)}")
            questions.append(_parse_row(dict(zip(header, fields)), source, line))
    if not questions:
        raise QuestionFileError(f"{source}: no question rows after the header")
    return questions


def _check_dependencies(by_item: Mapping[str, list[Question]], source: str) -> None:
    for item_id, questions in by_item.items():
        seen: dict[int, int] = {}
        for question in questions:
            if question.proposition_id in seen:
                raise _fail(
                    source, question.line,
                    f"item {item_id!r} repeats proposition_id {question.proposition_id} "
                    f"(first on line {seen[question.proposition_id]}); expected unique ids per item",
                )
            seen[question.proposition_id] = question.line
        for question in questions:
            for parent in question.dependency:
                if parent != 0 and parent not in seen:
                    raise _fail(
                        source, question.line,
                        f"question {question.proposition_id} of item {item_id!r} depends on unknown proposition "
                        f"{parent}; expected 0 or one of {', '.join(str(i) for i in sorted(seen))}",
                    )


def load_questions(path: str | os.PathLike[str], *, legacy: bool = False) -> dict[str, list[Question]]:
    """Read the question CSV into ``{item_id: [Question, ...]}`` in file order.

    Raises ``QuestionFileError`` naming the file, line, bad value and expected
    form for a missing column, malformed row, duplicate or unknown proposition id,
    or an empty file. With ``legacy=True`` the whole file is validated, and then
    the first data row is dropped as the official script does. A prompt left
    with no questions is dropped too.
    """
    path = Path(path)
    rows = _read_rows(path)
    by_item: dict[str, list[Question]] = defaultdict(list)
    for question in rows:
        by_item[question.item_id].append(question)
    _check_dependencies(by_item, str(path))
    if legacy:
        first = rows[0]
        by_item[first.item_id] = [q for q in by_item[first.item_id] if q is not first]
        if not by_item[first.item_id]:
            del by_item[first.item_id]
    return dict(by_item)


def load_prompts(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``<item_id>.txt`` prompt files into ``{item_id: prompt}``, sorted by item id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"prompt folder {folder} not found; expected the DPG-Bench prompts/ folder")
    prompts = {}
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{path}: empty prompt file")
        prompts[path.stem] = text
    if not prompts:
        raise FileNotFoundError(f"no .txt prompt files in {folder}; expected one <item_id>.txt per prompt")
    return prompts


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/cogrpo/dpg_bench``, with ``~/.cache`` when the variable is unset."""
    return download.default_cache_dir("dpg_bench")


def verify_file(path: str | os.PathLike[str], pinned: PinnedFile = QUESTIONS_FILE) -> None:
    """Check a file against the recorded SHA-256 and git blob id, raising ``ValueError`` on a mismatch."""
    download.verify_file(path, pinned)


def fetch_questions(
    cache_dir: str | os.PathLike[str] | None = None, *, timeout: float = 60.0, pinned: PinnedFile = QUESTIONS_FILE
) -> Path:
    """Return the cached question CSV, downloading it first when it is not cached.

    The download is skipped, with ``FileNotFoundError``, when ``HF_HUB_OFFLINE``
    is set. ``timeout`` is in seconds per network operation. The file is checked
    with ``verify_file``, on download and on every later call.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return download.fetch_pinned(pinned, directory, timeout=timeout, local_option="the CSV path directly")


# --------------------------------------------------------------------------- images


def split_grid(image: ImageLike, tiles: int = 4, tile_size: int | None = None) -> list[np.ndarray]:
    """Crop the tiles of a 2x2 grid image in the official order.

    The order is top-left, top-right, bottom-left, bottom-right, i.e. (x, y) =
    (0, 0), (r, 0), (0, r), (r, r), and the first ``tiles`` crops are returned.
    Without ``tile_size`` a tile is half the image in each direction, so both
    sides must be even, except that ``tiles=1`` returns the whole image. With
    ``tile_size`` the tiles are that many pixels square and must fit inside the
    image (the official script pads crops outside the image with black instead).
    """
    if isinstance(tiles, bool) or not isinstance(tiles, int) or not 1 <= tiles <= MAX_TILES:
        raise ValueError(f"invalid tiles {tiles!r}; expected an integer from 1 to {MAX_TILES}")
    array = to_rgb_array(image)
    height, width = array.shape[:2]
    if tile_size is not None:
        if tile_size < 1:
            raise ValueError(f"invalid tile_size {tile_size}; expected a positive number of pixels")
        tile_height = tile_width = tile_size
        need_width = tile_size * (2 if tiles >= 2 else 1)
        need_height = tile_size * (2 if tiles >= 3 else 1)
        if width < need_width or height < need_height:
            raise ValueError(
                f"image of {width}x{height} pixels is too small for {tiles} tiles of {tile_size} pixels; "
                f"expected at least {need_width}x{need_height}"
            )
    elif tiles == 1:
        return [array]
    else:
        if height % 2 or width % 2:
            raise ValueError(f"image of {width}x{height} pixels has an odd side; expected a 2x2 grid of equal tiles")
        tile_height, tile_width = height // 2, width // 2
    corners = [(0, 0), (tile_width, 0), (0, tile_height), (tile_width, tile_height)]
    return [
        np.ascontiguousarray(array[y : y + tile_height, x : x + tile_width])
        for x, y in corners[:tiles]
    ]


# --------------------------------------------------------------------------- scoring


@dataclass
class PromptRecord:
    """The result for one prompt's image: its score and what it was computed from."""

    item_id: str
    # Mean tile score in [0, 1], or NaN when the image failed.
    score: float
    legacy: bool
    tile_scores: list[float] = field(default_factory=list)
    # Indexed [tile][question], questions in CSV order.
    answers: list[list[str]] = field(default_factory=list)
    raw_scores: list[list[float]] = field(default_factory=list)
    question_scores: list[list[float]] = field(default_factory=list)
    # Values that ``aggregate`` averages per L2 category: all tiles after dependency
    # zeroing by default, the last tile before zeroing with legacy=True.
    category_scores: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class MissingParentError(KeyError):
    """A question whose parent proposition is not among the prompt's questions."""


def apply_dependencies(questions: Sequence[Question], raw_scores: Sequence[float]) -> list[float]:
    """Zero, in CSV order, each question that has a non-zero parent currently scoring 0.

    The scores are updated in place while walking the questions, so zeroing
    cascades to later descendants, and a parent listed after its child is read
    before it is zeroed, as in the official script. Raises ``MissingParentError``
    for a parent id that no question has.
    """
    if len(questions) != len(raw_scores):
        raise ValueError(f"got {len(raw_scores)} scores for {len(questions)} questions; expected one score per question")
    current = {q.proposition_id: float(s) for q, s in zip(questions, raw_scores)}
    for question in questions:
        for parent in question.dependency:
            if parent == 0:
                continue
            if parent not in current:
                raise MissingParentError(
                    f"question {question.proposition_id} of item {question.item_id!r} depends on "
                    f"proposition {parent}, which is not among its questions"
                )
            # The official loop stops at the first parent scoring 0, so later
            # parents are not looked up (and cannot raise) in that case.
            if current[parent] == 0:
                current[question.proposition_id] = 0.0
                break
    return [current[q.proposition_id] for q in questions]


def failed_record(
    item_id: str, questions: Sequence[Question], error: str, *, tiles: int = MAX_TILES, legacy: bool = False
) -> PromptRecord:
    """Build the record of an image that could not be scored.

    By default it carries a 0 for every question of every tile, so the failure
    lowers the category scores as it lowers the overall score. With
    ``legacy=True`` it carries nothing, because ``aggregate`` drops it.
    """
    categories: dict[str, list[float]] = defaultdict(list)
    if not legacy:
        for question in questions:
            categories[question.l2_category].extend([0.0] * tiles)
    return PromptRecord(item_id=item_id, score=math.nan, legacy=legacy, category_scores=dict(categories), error=error)


def score_answers(questions: Sequence[Question], answers_per_tile: Sequence[Sequence[str]], legacy: bool = False) -> PromptRecord:
    """Score one prompt's image from its answers, indexed [tile][question].

    A missing parent proposition fails the record with ``legacy=True`` (the
    official script drops the prompt after a ``KeyError``) and raises
    ``ValueError`` otherwise.
    """
    if not questions:
        raise ValueError("no questions to score; expected the prompt's questions from load_questions")
    item_id = questions[0].item_id
    ids = [q.proposition_id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"item {item_id!r} has repeated proposition ids {ids}; expected unique ids")
    if not answers_per_tile:
        raise ValueError(f"item {item_id!r}: no tiles; expected answers for at least one tile")
    for tile, answers in enumerate(answers_per_tile):
        if len(answers) != len(questions):
            raise ValueError(
                f"item {item_id!r}, tile {tile}: got {len(answers)} answers for {len(questions)} questions; "
                f"expected one answer per question"
            )

    raw_scores: list[list[float]] = []
    question_scores: list[list[float]] = []
    for answers in answers_per_tile:
        raw = [1.0 if answer == YES else 0.0 for answer in answers]
        try:
            final = apply_dependencies(questions, raw)
        except MissingParentError as error:
            if not legacy:
                raise ValueError(str(error.args[0])) from None
            logger.warning("DPG item %r dropped as in the official script: %s", item_id, error.args[0])
            return failed_record(item_id, questions, f"KeyError: {error.args[0]}", tiles=len(answers_per_tile), legacy=True)
        raw_scores.append(raw)
        question_scores.append(final)

    tile_scores = [sum(scores) / len(scores) for scores in question_scores]
    categories: dict[str, list[float]] = defaultdict(list)
    for index, question in enumerate(questions):
        if legacy:
            categories[question.l2_category].append(raw_scores[-1][index])
        else:
            categories[question.l2_category].extend(scores[index] for scores in question_scores)
    return PromptRecord(
        item_id=item_id,
        score=sum(tile_scores) / len(tile_scores),
        legacy=legacy,
        tile_scores=tile_scores,
        answers=[list(answers) for answers in answers_per_tile],
        raw_scores=raw_scores,
        question_scores=question_scores,
        category_scores=dict(categories),
    )


def aggregate(records: Sequence[PromptRecord], legacy: bool = False) -> dict[str, float | int]:
    """Average prompt records into the benchmark metrics, all scores x 100.

    Keys: ``overall``, ``l1/<name>`` and ``l2/<name>`` per category (sorted),
    ``n_samples`` (prompts in the average) and ``n_failed``. By default a failed
    record counts as 0, but with ``legacy=True`` it is left out of every average.
    ``overall`` is NaN when no prompt is averaged.
    """
    scores: list[float] = []
    l2_values: dict[str, list[float]] = defaultdict(list)
    n_failed = 0
    for record in records:
        if record.legacy != legacy:
            raise ValueError(
                f"record {record.item_id!r} was scored with legacy={record.legacy}, but aggregate got legacy={legacy}; "
                f"score and aggregate with the same setting"
            )
        if record.failed:
            n_failed += 1
            if legacy:
                continue
            scores.append(0.0)
        else:
            scores.append(record.score)
        for name, values in record.category_scores.items():
            l2_values[name].extend(values)

    l1_values: dict[str, list[float]] = defaultdict(list)
    for name, values in l2_values.items():
        l1_values[l1_category(name)].extend(values)

    metrics: dict[str, float | int] = {"overall": 100.0 * float(np.mean(scores)) if scores else math.nan}
    for name in sorted(l1_values):
        metrics[f"l1/{name}"] = 100.0 * float(np.mean(l1_values[name]))
    for name in sorted(l2_values):
        metrics[f"l2/{name}"] = 100.0 * float(np.mean(l2_values[name]))
    metrics["n_samples"] = len(scores)
    metrics["n_failed"] = n_failed
    return metrics


# --------------------------------------------------------------------------- VQA backends


@runtime_checkable
class VQABackend(Protocol):
    """A visual question answering model.

    ``answer`` takes paired lists, where image i (an RGB uint8 array) goes with
    question i, and returns one answer string per pair. Backends also set
    ``comparable_with_published``: True only for the official mPLUG model.
    """

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]: ...


class TransformersVQA:
    """BLIP VQA via transformers (``BlipForQuestionAnswering`` and ``BlipProcessor``).

    This is not the official DPG-Bench model (mPLUG-large), so its scores are not
    comparable with published DPG-Bench numbers. Answers are stripped and
    lower-cased before the exact "yes" match. NOTE: only a tiny random BLIP model
    has been run through this class, so answers of the pinned checkpoint are unchecked.
    """

    comparable_with_published = False
    weights = (BLIP_VQA_WEIGHTS,)

    def __init__(
        self,
        model: str | os.PathLike[str] = BLIP_VQA_MODEL,
        *,
        revision: str | None = BLIP_VQA_REVISION,
        device: str | None = None,
        dtype: str = "float32",
        max_new_tokens: int = 10,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        import torch
        from transformers import BlipForQuestionAnswering, BlipProcessor

        source = str(model)
        is_local = Path(source).is_dir()
        if not is_local and (os.path.isabs(source) or source.startswith(".")):
            raise MissingWeightsError(f"no model folder at {source}; expected a save_pretrained folder or a hub id")
        kwargs: dict[str, Any] = {"cache_dir": cache_dir}
        if not is_local and revision is not None:
            kwargs["revision"] = revision
        try:
            self.processor = BlipProcessor.from_pretrained(source, **kwargs)
            self.model = BlipForQuestionAnswering.from_pretrained(source, **kwargs)
        except OSError as error:
            if is_local:
                raise
            raise MissingWeightsError(
                f"could not load {source} (revision {revision}): {error}. Download it on a machine with access "
                f"(hf download {source} --revision {revision}) or pass a local folder as model."
            ) from error

        snapshot = Path(source) if is_local else hub_snapshot_folder(source, revision, cache_dir)
        # The local folder that the weights were loaded from, whose weight files result JSON hashes.
        self.weight_paths: tuple[Path, ...] = (snapshot,) if snapshot is not None else ()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, dtype)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.max_new_tokens = max_new_tokens
        self.name = source

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        """Generate one stripped, lower-cased answer per (image, question) pair."""
        import torch

        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions; pass one question per image")
        if not images:
            return []
        pictures = [Image.fromarray(to_rgb_array(image)) for image in images]
        inputs = self.processor(images=pictures, text=list(questions), return_tensors="pt", padding=True)
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        texts = self.processor.batch_decode(output, skip_special_tokens=True)
        return [text.strip().lower() for text in texts]


class MPlugVQA:
    """The official DPG-Bench VQA model, mPLUG-large, through a ModelScope pipeline.

    Needs the optional ``modelscope`` package, imported only when this class is
    built. Answers are returned as the pipeline outputs them, as in the official
    script. NOTE: the ModelScope model revision is not pinned, just as in the
    official script.
    """

    comparable_with_published = True
    weights = (MPLUG_VQA_WEIGHTS,)

    def __init__(self, model: str = MPLUG_VQA_MODEL, *, device: str = "gpu"):
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks
        except ImportError as error:
            raise ImportError(
                f"MPlugVQA needs the optional package modelscope, which could not be imported ({error}). "
                f"Install it with: pip install 'modelscope[multi-modal]', or use TransformersVQA, "
                f"whose scores are not comparable with published DPG-Bench numbers."
            ) from error
        self._pipeline = pipeline(Tasks.visual_question_answering, model=model, device=device)
        self.name = model
        # NOTE: ``model.model_dir`` is where ModelScope models keep their downloaded folder. This
        # path has not been run here, because modelscope is not installed.
        model_dir = getattr(getattr(self._pipeline, "model", None), "model_dir", None)
        self.weight_paths: tuple[Path, ...] = (Path(model_dir),) if model_dir else ()

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        """Ask the pipeline one (image, question) pair at a time, as the official script does."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions; pass one question per image")
        answers = []
        for image, question in zip(images, questions):
            result = self._pipeline({"image": Image.fromarray(to_rgb_array(image)), "question": question})
            answers.append(result["text"])
        return answers


def declared_vqa_weights(name: str) -> tuple[WeightsSpec, ...]:
    """Return the pinned weights of the VQA backend called ``name``, without building it."""
    if name == "blip":
        return TransformersVQA.weights
    if name == "mplug":
        return MPlugVQA.weights
    raise ValueError(f"invalid VQA backend {name!r}; choose one of {', '.join(VQA_BACKENDS)}")


def build_vqa_backend(name: str) -> VQABackend:
    """Build the VQA backend called ``name``: ``"blip"`` (``TransformersVQA``) or ``"mplug"`` (``MPlugVQA``)."""
    if name == "mplug":
        import torch

        return MPlugVQA(device="gpu" if torch.cuda.is_available() else "cpu")
    if name == "blip":
        return TransformersVQA()
    raise ValueError(f"invalid VQA backend {name!r}; choose one of {', '.join(VQA_BACKENDS)}")


# --------------------------------------------------------------------------- batched scoring


# Errors that fail one backend batch instead of the whole run. Torch raises
# RuntimeError subclasses, CUDA out of memory included.
BACKEND_ERRORS = (RuntimeError, ValueError, OSError)


def score_tiles(
    backend: VQABackend,
    jobs: Sequence[tuple[Sequence[Question], Sequence[np.ndarray]]],
    *,
    batch_size: int = 64,
    legacy: bool = False,
) -> list[PromptRecord]:
    """Score many prompts, each given as (questions, tiles), one record per job.

    Every (tile, question) pair of every job is sent to the backend in batches
    of ``batch_size`` pairs, so one batch can mix images. When the backend raises
    for a batch, the jobs with a pair in it fail; the others are still scored.
    """
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size}; expected a positive number of (tile, question) pairs")
    pairs = [
        (job, tile, question)
        for job, (questions, tiles) in enumerate(jobs)
        for tile in range(len(tiles))
        for question in range(len(questions))
    ]
    answers: list[list[list[str]]] = [[[""] * len(questions) for _ in tiles] for questions, tiles in jobs]
    errors: list[str | None] = [None] * len(jobs)

    for start in range(0, len(pairs), batch_size):
        batch = [pair for pair in pairs[start : start + batch_size] if errors[pair[0]] is None]
        if not batch:
            continue
        images = [jobs[job][1][tile] for job, tile, _ in batch]
        texts = [jobs[job][0][question].question for job, _, question in batch]
        try:
            replies = backend.answer(images, texts)
        except BACKEND_ERRORS as error:
            failed = sorted({job for job, _, _ in batch})
            logger.warning("VQA backend failed on a batch of %d pairs (jobs %s): %s", len(batch), failed, error)
            for job in failed:
                errors[job] = f"VQA backend failed: {error}"
            continue
        if len(replies) != len(batch):
            raise ValueError(f"VQA backend returned {len(replies)} answers for {len(batch)} questions; expected one each")
        for (job, tile, question), reply in zip(batch, replies):
            answers[job][tile][question] = reply

    records = []
    for job, (questions, tiles) in enumerate(jobs):
        error = errors[job]
        if error is not None:
            records.append(failed_record(questions[0].item_id, questions, error, tiles=len(tiles), legacy=legacy))
        else:
            records.append(score_answers(questions, answers[job], legacy=legacy))
    return records


def _find_images(
    image_dir: Path, questions: Mapping[str, Sequence[Question]], legacy: bool
) -> list[tuple[str, Path | None, str | None]]:
    """List (item_id, image path or None, error or None) in the order they are scored.

    By default every prompt of ``questions`` gets one entry. With ``legacy=True``
    every file of the folder gets one, keyed by its name before the first ".",
    as in the official script, followed by the prompts that have no file.
    """
    files = sorted(path for path in image_dir.iterdir() if path.is_file())
    if legacy:
        entries: list[tuple[str, Path | None, str | None]] = []
        found = set()
        for path in files:
            item_id = path.name.split(".")[0]
            found.add(item_id)
            if item_id in questions:
                entries.append((item_id, path, None))
            else:
                entries.append((item_id, None, f"{path.name}: no questions for item {item_id!r}"))
        for item_id in questions:
            if item_id not in found:
                entries.append((item_id, None, f"image not found: {image_dir / item_id}.png"))
        return entries

    by_item: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            by_item[path.name.split(".")[0]].append(path)
    unknown = sorted(set(by_item) - set(questions))
    if unknown:
        logger.warning("%d images in %s match no DPG prompt and are ignored, e.g. %s", len(unknown), image_dir, unknown[0])
    entries = []
    for item_id in questions:
        candidates = sorted(by_item.get(item_id, []), key=lambda p: IMAGE_EXTENSIONS.index(p.suffix.lower()))
        if not candidates:
            extensions = ", ".join(IMAGE_EXTENSIONS)
            entries.append((item_id, None, f"image not found: expected {image_dir / item_id} with one of {extensions}"))
            continue
        if len(candidates) > 1:
            logger.warning("several images for DPG item %r; using %s", item_id, candidates[0].name)
        entries.append((item_id, candidates[0], None))
    return entries


def evaluate_folder(
    image_dir: str | os.PathLike[str],
    questions: Mapping[str, Sequence[Question]],
    backend: VQABackend,
    *,
    tiles: int = MAX_TILES,
    tile_size: int | None = None,
    legacy: bool = False,
    batch_size: int = 64,
    images_per_step: int = 8,
) -> tuple[dict[str, Any], list[PromptRecord]]:
    """Score a folder of ``<item_id>.png`` (or .jpg, .jpeg, .webp) grid images.

    Returns the metrics of ``aggregate`` plus ``comparable_with_published``, and
    one record per scored entry. By default each prompt of ``questions`` is
    scored, and a missing or unreadable image scores 0 and counts in
    ``n_failed``. With ``legacy=True`` the folder's files are scored as the
    official script does, and failures leave the averages.
    ``images_per_step`` images are held in memory at a time.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found; expected one <item_id>.png grid image per prompt")
    entries = _find_images(image_dir, questions, legacy)
    records: list[PromptRecord] = []
    for start in range(0, len(entries), images_per_step):
        step: list[PromptRecord | None] = []
        jobs = []
        for item_id, path, error in entries[start : start + images_per_step]:
            item_questions = list(questions.get(item_id, []))
            if path is not None:
                try:
                    grid = split_grid(to_rgb_array(path), tiles, tile_size)
                except (OSError, ValueError) as load_error:
                    error = f"{path.name}: {load_error}"
                else:
                    jobs.append((item_questions, grid))
                    step.append(None)  # filled from score_tiles below
                    continue
            logger.warning("DPG item %r failed: %s", item_id, error)
            step.append(failed_record(item_id, item_questions, str(error), tiles=tiles, legacy=legacy))
        scored = iter(score_tiles(backend, jobs, batch_size=batch_size, legacy=legacy))
        records.extend(record if record is not None else next(scored) for record in step)

    metrics: dict[str, Any] = dict(aggregate(records, legacy=legacy))
    metrics["comparable_with_published"] = bool(getattr(backend, "comparable_with_published", False))
    return metrics, records


# --------------------------------------------------------------------------- scorer


class DPGScorer(Scorer):
    """DPG-Bench as a scorer: one score in [0, 1] per 2x2 grid image.

    Each image's metadata must carry its ``item_id``. Images that fail (unknown
    item, bad grid, backend error) get NaN and an error message. The default
    backend is ``TransformersVQA`` (BLIP), whose scores are not comparable with
    published DPG-Bench numbers; pass ``backend=MPlugVQA()`` or ``vqa="mplug"``
    for the official model. ``vqa`` names the backend to build when ``backend``
    is None. The instance's ``weights`` are the backend's.
    """

    name = "dpg"
    version = "1"
    higher_is_better = True
    bounds = (0.0, 1.0)

    @classmethod
    def declared_weights(
        cls, *args: Any, backend: VQABackend | None = None, vqa: str | None = None, **options: Any
    ) -> tuple[WeightsSpec, ...]:
        """Return the pinned weights of the VQA backend, without building it."""
        if backend is not None:
            return tuple(getattr(backend, "weights", ()))
        return declared_vqa_weights(vqa or "blip")

    def __init__(
        self,
        questions: Mapping[str, Sequence[Question]] | None = None,
        *,
        questions_path: str | os.PathLike[str] | None = None,
        backend: VQABackend | None = None,
        vqa: str | None = None,
        tiles: int = MAX_TILES,
        tile_size: int | None = None,
        batch_size: int = 64,
        legacy: bool = False,
    ):
        if questions is not None and questions_path is not None:
            raise ValueError("pass questions or questions_path, not both")
        if backend is not None and vqa is not None:
            raise ValueError("pass backend or vqa, not both")
        if questions is None:
            path = questions_path if questions_path is not None else fetch_questions()
            questions = load_questions(path, legacy=legacy)
        self.questions = {item_id: list(items) for item_id, items in questions.items()}
        self.backend = backend if backend is not None else build_vqa_backend(vqa or "blip")
        self.weights = tuple(getattr(self.backend, "weights", ()))
        self.weight_paths = tuple(getattr(self.backend, "weight_paths", ()))
        self.comparable_with_published = bool(getattr(self.backend, "comparable_with_published", False))
        if not self.comparable_with_published:
            logger.warning(
                "DPG scores from %s are not comparable with published DPG-Bench numbers, which use mPLUG-large",
                type(self.backend).__name__,
            )
        self.tiles = tiles
        self.tile_size = tile_size
        self.batch_size = batch_size
        self.legacy = legacy

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Score grid images; all their (tile, question) pairs share the backend batches."""
        errors: list[str | None] = [None] * len(images)
        jobs = []
        job_positions = []
        for index, (image, entry) in enumerate(zip(images, metadata)):
            item_id = entry.get("item_id") if isinstance(entry, dict) else None
            if item_id is None:
                errors[index] = "metadata has no 'item_id'; pass {'item_id': ...} for every DPG image"
                continue
            if item_id not in self.questions:
                errors[index] = f"no DPG questions for item_id {item_id!r}"
                continue
            try:
                tiles = split_grid(image, self.tiles, self.tile_size)
            except ValueError as error:
                errors[index] = str(error)
                continue
            jobs.append((self.questions[item_id], tiles))
            job_positions.append(index)

        records = score_tiles(self.backend, jobs, batch_size=self.batch_size, legacy=self.legacy)
        scores = np.full(len(images), np.nan, dtype=np.float32)
        details: list[dict[str, Any]] = [{} for _ in images]
        for index, record in zip(job_positions, records):
            details[index] = {
                "item_id": record.item_id,
                "tile_scores": record.tile_scores,
                "answers": record.answers,
                "category_scores": record.category_scores,
                "legacy": self.legacy,
                "comparable_with_published": self.comparable_with_published,
            }
            if record.failed:
                errors[index] = record.error
            else:
                scores[index] = record.score
        for index, error in enumerate(errors):
            if error is not None:
                logger.warning("dpg: image %d could not be scored: %s", index, error)
        return ScoreResult(scores=scores, errors=errors, details=details)

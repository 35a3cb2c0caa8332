"""Tests for the DPG-Bench loader, scoring rules, legacy mode, scorer and VQA backends.

The fixture ``fixtures/dpg/dpg_bench.csv`` follows the official schema:

    cat_on_sofa (first data row, so legacy mode drops its question 1)
      1 cat (entity - whole)           dep 0
      2 black (attribute - color)      dep 1    <- 1 has two children, 2 and 3
      3 small (attribute - size)       dep 1
      4 fluffy (attribute - texture)   dep 2    <- grandchild of 1
      5 sofa (entity - whole)          dep 0
      6 on (relation - spatial)        dep 1,5
    dogs_with_sign
      1 dog (entity - whole) dep 0; 2 two dogs (other - count) dep 1;
      3 sleeping (entity - state) dep 1; 4 sign text (other - text) dep 0
    bird_in_tree
      1 tree (entity - whole) dep 0; 2 bird (entity - whole) dep 0;
      3 on (relation - spatial) dep 1,2; 4 singing (relation - non-spatial) dep 2

``RAW_ANSWERS`` below gives the fake VQA answers per prompt and tile; the
expected numbers in the tests are worked out by hand from it.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cogrpo.benchmarks import dpg  # noqa: E402
from cogrpo.benchmarks.dpg import (  # noqa: E402
    DPGScorer,
    MPlugVQA,
    Question,
    QuestionFileError,
    TransformersVQA,
    VQABackend,
    aggregate,
    apply_dependencies,
    evaluate_folder,
    load_prompts,
    load_questions,
    score_answers,
    split_grid,
)
from cogrpo.rewards.base import MissingWeightsError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "dpg"
QUESTIONS_CSV = FIXTURES / "dpg_bench.csv"
OFFICIAL_PROMPTS = Path("/work/shared/benchmarks/dpg_bench/prompts")
HEADER = "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language\n"

# Answers per prompt, per tile (0..3), per question in CSV order. "Yes" with a
# capital letter scores 0 because the rule is an exact match with "yes".
RAW_ANSWERS = {
    "cat_on_sofa": [
        ["yes", "yes", "yes", "yes", "yes", "yes"],
        ["yes", "yes", "no", "yes", "yes", "yes"],
        ["yes", "Yes", "yes", "yes", "no", "yes"],
        ["no", "yes", "yes", "yes", "yes", "yes"],
    ],
    "dogs_with_sign": [
        ["yes", "yes", "yes", "yes"],
        ["yes", "no", "yes", "yes"],
        ["no", "yes", "yes", "no"],
        ["yes", "yes", "no", "yes"],
    ],
    "bird_in_tree": [
        ["yes", "yes", "yes", "yes"],
        ["yes", "no", "yes", "yes"],
        ["no", "yes", "yes", "no"],
        ["no", "yes", "yes", "yes"],
    ],
}

# Each tile of a fake grid image is filled with one grey level, so the fake
# backend can tell which tile it was shown.
TILE_LEVELS = (10, 80, 150, 220)
TILE_SIDE = 8


class TableVQA:
    """A deterministic VQA backend that looks answers up by (tile index, question)."""

    comparable_with_published = False

    def __init__(self, questions: dict[str, list[Question]], fail_on: str | None = None):
        self.table: dict[tuple[int, str], str] = {}
        for item_id, per_tile in RAW_ANSWERS.items():
            for tile, answers in enumerate(per_tile):
                for question, answer in zip(questions[item_id], answers):
                    self.table[(tile, question.question)] = answer
        self.calls: list[int] = []
        self.fail_on = fail_on

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        self.calls.append(len(images))
        if self.fail_on is not None and self.fail_on in questions:
            raise RuntimeError("simulated CUDA out of memory")
        replies = []
        for image, question in zip(images, questions):
            tile = TILE_LEVELS.index(int(image[0, 0, 0]))
            replies.append(self.table.get((tile, question), "no"))
        return replies


def grid_image(side: int = TILE_SIDE) -> np.ndarray:
    """Return a 2x2 grid: top-left, top-right, bottom-left, bottom-right = tiles 0..3."""
    image = np.zeros((2 * side, 2 * side, 3), dtype=np.uint8)
    image[:side, :side] = TILE_LEVELS[0]
    image[:side, side:] = TILE_LEVELS[1]
    image[side:, :side] = TILE_LEVELS[2]
    image[side:, side:] = TILE_LEVELS[3]
    return image


def write_images(folder: Path, item_ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item_id in item_ids:
        Image.fromarray(grid_image()).save(folder / f"{item_id}.png")


def write_csv(tmp_path: Path, body: str, name: str = "questions.csv") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def make_question(proposition_id: int, dependency: tuple[int, ...], category: str = "entity - whole") -> Question:
    return Question(
        item_id="hand_made",
        proposition_id=proposition_id,
        dependency=dependency,
        question=f"question {proposition_id}?",
        tuple_text=f"{category} (x)",
    )


@pytest.fixture
def questions() -> dict[str, list[Question]]:
    return load_questions(QUESTIONS_CSV)


@pytest.fixture
def legacy_questions() -> dict[str, list[Question]]:
    return load_questions(QUESTIONS_CSV, legacy=True)


# --------------------------------------------------------------------------- loading


def test_load_questions_reads_fixture(questions):
    assert list(questions) == ["cat_on_sofa", "dogs_with_sign", "bird_in_tree"]
    assert [len(items) for items in questions.values()] == [6, 4, 4]
    cat = questions["cat_on_sofa"]
    assert [q.proposition_id for q in cat] == [1, 2, 3, 4, 5, 6]
    assert cat[5].dependency == (1, 5)
    assert cat[0].dependency == (0,)
    assert cat[1].l2_category == "attribute - color"
    assert cat[1].l1_category == "attribute"
    assert cat[0].line == 2
    assert cat[0].prompt == "A small black cat with fluffy fur sits on a grey sofa."
    assert cat[0].keywords == "cat, sofa"
    bird = questions["bird_in_tree"]
    assert bird[2].dependency == (1, 2)
    assert bird[3].l2_category == "relation - non-spatial"
    assert bird[3].l1_category == "relation"


def test_load_questions_quoted_fields(questions):
    sign = questions["dogs_with_sign"][3]
    assert sign.question == 'Does the sign read "OPEN"?'
    assert sign.tuple_text == 'other - text (sign, "OPEN")'
    assert sign.prompt == 'Two sleeping dogs lie under a sign that reads "OPEN".'


def test_load_questions_legacy_skips_first_row(legacy_questions):
    cat = legacy_questions["cat_on_sofa"]
    assert [q.proposition_id for q in cat] == [2, 3, 4, 5, 6]
    assert len(legacy_questions["dogs_with_sign"]) == 4
    assert len(legacy_questions["bird_in_tree"]) == 4


def test_load_questions_legacy_drops_emptied_prompt(tmp_path):
    path = write_csv(
        tmp_path,
        HEADER
        + "solo,Solo prompt.,solo,1,0,entity,whole,entity - whole (solo),Is there a solo?\n"
        + "pair,Pair prompt.,pair,1,0,entity,whole,entity - whole (pair),Is there a pair?\n",
    )
    assert list(load_questions(path)) == ["solo", "pair"]
    assert list(load_questions(path, legacy=True)) == ["pair"]


MALFORMED = [
    # (case, CSV body, expected line, words the message must contain)
    ("empty file", "", None, ["file is empty", "item_id"]),
    ("header only", HEADER, None, ["no question rows"]),
    (
        "missing column",
        "item_id,text,proposition_id\nx,y,1\n",
        1,
        ["missing columns", "keywords", "dependency"],
    ),
    (
        "bad proposition id",
        HEADER + "a,t,k,one,0,entity,whole,entity - whole (a),Is there a?\n",
        2,
        ["invalid proposition_id 'one'", "integer >= 1"],
    ),
    (
        "zero proposition id",
        HEADER + "a,t,k,0,0,entity,whole,entity - whole (a),Is there a?\n",
        2,
        ["invalid proposition_id '0'"],
    ),
    (
        "bad dependency",
        HEADER
        + "a,t,k,1,0,entity,whole,entity - whole (a),Is there a?\n"
        + "a,t,k,2,1;2,entity,whole,entity - whole (b),Is there b?\n",
        3,
        ["invalid dependency '1;2'", "comma-separated"],
    ),
    (
        "empty dependency",
        HEADER + "a,t,k,1,,entity,whole,entity - whole (a),Is there a?\n",
        2,
        ["invalid dependency ''"],
    ),
    (
        "unknown dependency",
        HEADER
        + "a,t,k,1,0,entity,whole,entity - whole (a),Is there a?\n"
        + "a,t,k,2,9,entity,whole,entity - whole (b),Is there b?\n",
        3,
        ["unknown proposition 9", "expected 0 or one of 1, 2"],
    ),
    (
        "dependency on another prompt",
        HEADER
        + "a,t,k,1,0,entity,whole,entity - whole (a),Is there a?\n"
        + "b,t,k,2,1,entity,whole,entity - whole (b),Is there b?\n",
        3,
        ["item 'b' depends on unknown proposition 1"],
    ),
    (
        "repeated proposition id",
        HEADER
        + "a,t,k,1,0,entity,whole,entity - whole (a),Is there a?\n"
        + "a,t,k,1,0,entity,whole,entity - whole (b),Is there b?\n",
        3,
        ["repeats proposition_id 1", "first on line 2"],
    ),
    (
        "too few fields",
        HEADER + "a,t,k,1,0,entity,whole\n",
        2,
        ["expected 9 fields", "got 7"],
    ),
    (
        "empty question",
        HEADER + "a,t,k,1,0,entity,whole,entity - whole (a),\n",
        2,
        ["empty question_natural_language"],
    ),
    (
        "empty item id",
        HEADER + ",t,k,1,0,entity,whole,entity - whole (a),Is there a?\n",
        2,
        ["empty item_id"],
    ),
    (
        "empty tuple",
        HEADER + "a,t,k,1,0,entity,whole, (a),Is there a?\n",
        2,
        ["invalid tuple"],
    ),
]


@pytest.mark.parametrize("case, body, line, words", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_load_questions_malformed(tmp_path, case, body, line, words):
    path = write_csv(tmp_path, body)
    with pytest.raises(QuestionFileError) as caught:
        load_questions(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    if line is not None:
        assert message.startswith(f"{path}:{line}: ")
    for word in words:
        assert word in message


def test_load_questions_line_after_multiline_field(tmp_path):
    # Row 1 spans lines 2-3 because its text field has a newline, so row 2 starts on line 4.
    path = write_csv(
        tmp_path,
        HEADER
        + 'a,"two\nlines",k,1,0,entity,whole,entity - whole (a),Is there a?\n'
        + "a,t,k,x,0,entity,whole,entity - whole (b),Is there b?\n",
    )
    with pytest.raises(QuestionFileError, match=r":4: invalid proposition_id 'x'"):
        load_questions(path)


def test_load_questions_skips_blank_lines(tmp_path):
    path = write_csv(tmp_path, HEADER + "\na,t,k,1,0,entity,whole,entity - whole (a),Is there a?\n\n")
    loaded = load_questions(path)
    assert [q.line for q in loaded["a"]] == [3]


def test_load_prompts_fixture():
    prompts = load_prompts(FIXTURES / "prompts")
    assert list(prompts) == ["bird_in_tree", "cat_on_sofa", "dogs_with_sign"]
    assert prompts["dogs_with_sign"] == 'Two sleeping dogs lie under a sign that reads "OPEN".'


def test_load_prompts_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt folder"):
        load_prompts(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no .txt prompt files"):
        load_prompts(tmp_path)


@pytest.mark.skipif(not OFFICIAL_PROMPTS.is_dir(), reason="official DPG-Bench prompt files are not on this machine")
def test_load_prompts_official():
    prompts = load_prompts(OFFICIAL_PROMPTS)
    assert len(prompts) == 1065
    assert "partiprompts97" in prompts
    assert all(text for text in prompts.values())


def test_questions_file_url():
    assert dpg.QUESTIONS_FILE.url == (
        "https://raw.githubusercontent.com/TencentQQGYLab/ELLA/"
        "3c228f1dc6c4d3cad0a47493816151a419f14db3/dpg_bench/dpg_bench.csv"
    )
    assert dpg.QUESTIONS_FILE.sha256 is None


# "hello\n" has git blob id ce0136... (git hash-object) and SHA-256 5891b5...
HELLO_BLOB = "ce013625030ba8dba906f756967f9e9ca394464a"
HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def test_verify_file_checksums(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    dpg.verify_file(path, dpg.PinnedFile("o/r", "c" * 40, "hello.txt", sha256=HELLO_SHA256, git_blob_sha1=HELLO_BLOB))
    dpg.verify_file(path, dpg.PinnedFile("o/r", "c" * 40, "hello.txt", git_blob_sha1=HELLO_BLOB))
    with pytest.raises(ValueError, match="git blob id ce0136"):
        dpg.verify_file(path, dpg.PinnedFile("o/r", "c" * 40, "hello.txt", git_blob_sha1="0" * 40))
    with pytest.raises(ValueError, match="SHA-256 5891b5"):
        dpg.verify_file(path, dpg.PinnedFile("o/r", "c" * 40, "hello.txt", sha256="0" * 64))


# --------------------------------------------------------------------------- grid


def test_split_grid_order():
    tiles = split_grid(grid_image())
    assert len(tiles) == 4
    assert [int(tile[0, 0, 0]) for tile in tiles] == list(TILE_LEVELS)
    for tile, level in zip(tiles, TILE_LEVELS):
        assert tile.shape == (TILE_SIDE, TILE_SIDE, 3)
        assert np.all(tile == level)


def test_split_grid_rectangular_tiles():
    image = np.zeros((20, 12, 3), dtype=np.uint8)
    image[:10, 6:] = 1
    image[10:, :6] = 2
    image[10:, 6:] = 3
    tiles = split_grid(image)
    assert [tile.shape for tile in tiles] == [(10, 6, 3)] * 4
    assert [int(tile[0, 0, 0]) for tile in tiles] == [0, 1, 2, 3]


def test_split_grid_first_tiles_only():
    tiles = split_grid(grid_image(), tiles=2)
    assert [int(tile[0, 0, 0]) for tile in tiles] == list(TILE_LEVELS[:2])


def test_split_grid_single_image():
    image = grid_image()
    tiles = split_grid(image, tiles=1)
    assert len(tiles) == 1
    assert tiles[0].shape == image.shape


def test_split_grid_tile_size():
    # Tiles of 6 pixels at x, y in {0, 6}: the crops start inside each coloured quarter.
    image = grid_image(side=8)
    tiles = split_grid(image, tile_size=6)
    assert [tile.shape for tile in tiles] == [(6, 6, 3)] * 4
    assert [int(tile[0, 0, 0]) for tile in tiles] == [TILE_LEVELS[0], TILE_LEVELS[0], TILE_LEVELS[0], TILE_LEVELS[0]]
    assert [int(tile[-1, -1, 0]) for tile in tiles] == [TILE_LEVELS[0], TILE_LEVELS[1], TILE_LEVELS[2], TILE_LEVELS[3]]


def test_split_grid_pil_input():
    tiles = split_grid(Image.fromarray(grid_image()))
    assert [int(tile[0, 0, 0]) for tile in tiles] == list(TILE_LEVELS)


@pytest.mark.parametrize(
    "image, kwargs, words",
    [
        (np.zeros((15, 16, 3), np.uint8), {}, "odd side"),
        (np.zeros((16, 16, 3), np.uint8), {"tiles": 5}, "invalid tiles 5"),
        (np.zeros((16, 16, 3), np.uint8), {"tiles": 0}, "invalid tiles 0"),
        (np.zeros((16, 16, 3), np.uint8), {"tile_size": 9}, "too small"),
        (np.zeros((16, 16, 3), np.uint8), {"tile_size": 0}, "invalid tile_size"),
    ],
    ids=["odd side", "too many tiles", "no tiles", "tile too big", "zero tile size"],
)
def test_split_grid_rejects(image, kwargs, words):
    with pytest.raises(ValueError, match=words):
        split_grid(image, **kwargs)


# --------------------------------------------------------------------------- rules


def test_score_answers_cascade(questions):
    record = score_answers(questions["cat_on_sofa"], RAW_ANSWERS["cat_on_sofa"])
    assert not record.failed
    # tile 0: all yes -> [1,1,1,1,1,1] = 6/6
    # tile 1: q3 "no", no child of q3 -> [1,1,0,1,1,1] = 5/6
    # tile 2: q2 "Yes" scores 0, so q4 (child of q2) -> 0; q5 "no" so q6 (parents 1,5) -> 0
    #         raw [1,0,1,1,0,1] -> [1,0,1,0,0,0] = 2/6
    # tile 3: q1 "no" zeroes q2, q3 and q6; q4 is zeroed through q2 (cascade)
    #         raw [0,1,1,1,1,1] -> [0,0,0,0,1,0] = 1/6
    assert record.raw_scores[2] == [1, 0, 1, 1, 0, 1]
    assert record.question_scores == [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 0, 1, 1, 1],
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0],
    ]
    assert record.tile_scores == pytest.approx([6 / 6, 5 / 6, 2 / 6, 1 / 6])
    # image score = (6 + 5 + 2 + 1) / 6 / 4 = 14/24 = 7/12
    assert record.score == pytest.approx(7 / 12)
    assert record.answers[2][1] == "Yes"


def test_score_answers_other_prompts(questions):
    dogs = score_answers(questions["dogs_with_sign"], RAW_ANSWERS["dogs_with_sign"])
    # tiles: 4/4; [1,0,1,1] = 3/4; q1 "no" zeroes q2, q3 -> [0,0,0,0] = 0; [1,1,0,1] = 3/4
    assert dogs.tile_scores == pytest.approx([1.0, 0.75, 0.0, 0.75])
    assert dogs.score == pytest.approx(10 / 16)
    bird = score_answers(questions["bird_in_tree"], RAW_ANSWERS["bird_in_tree"])
    # tile 1: q2 "no" zeroes q3 (parents 1,2) and q4 (parent 2) -> [1,0,0,0] = 1/4
    # tile 2: q1 "no" zeroes q3; q4 already "no" -> [0,1,0,0] = 1/4
    # tile 3: q1 "no" zeroes q3; q4 keeps its 1 -> [0,1,0,1] = 2/4
    assert bird.tile_scores == pytest.approx([1.0, 0.25, 0.25, 0.5])
    assert bird.score == pytest.approx(8 / 16)


def test_apply_dependencies_follows_csv_order():
    # q3 depends on q2 but is listed first: it reads q2's score (1) before q2 is
    # zeroed by its own parent q1, so q3 keeps its 1, as in the official loop.
    child_first = [make_question(3, (2,)), make_question(2, (1,)), make_question(1, (0,))]
    assert apply_dependencies(child_first, [1.0, 1.0, 0.0]) == [1.0, 0.0, 0.0]
    parent_first = [make_question(1, (0,)), make_question(2, (1,)), make_question(3, (2,))]
    assert apply_dependencies(parent_first, [0.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]


def test_apply_dependencies_stops_at_first_zero_parent():
    # Parent 2 scores 0 before the missing parent 9 is looked up, so no error.
    items = [make_question(1, (0,)), make_question(2, (0,)), make_question(3, (2, 9))]
    assert apply_dependencies(items, [1.0, 0.0, 1.0]) == [1.0, 0.0, 0.0]
    with pytest.raises(dpg.MissingParentError):
        apply_dependencies(items, [1.0, 1.0, 1.0])


def test_score_answers_missing_parent_default_raises(legacy_questions):
    with pytest.raises(ValueError, match="depends on proposition 1"):
        score_answers(legacy_questions["cat_on_sofa"], [answers[1:] for answers in RAW_ANSWERS["cat_on_sofa"]])


def test_score_answers_legacy_missing_parent_fails(legacy_questions):
    answers = [tile[1:] for tile in RAW_ANSWERS["cat_on_sofa"]]
    record = score_answers(legacy_questions["cat_on_sofa"], answers, legacy=True)
    assert record.failed
    assert "KeyError" in record.error
    assert "proposition 1" in record.error
    assert math.isnan(record.score)
    assert record.category_scores == {}


def test_score_answers_rejects_bad_shapes(questions):
    cat = questions["cat_on_sofa"]
    with pytest.raises(ValueError, match="got 5 answers for 6 questions"):
        score_answers(cat, [["yes"] * 5])
    with pytest.raises(ValueError, match="no tiles"):
        score_answers(cat, [])
    with pytest.raises(ValueError, match="no questions"):
        score_answers([], [[]])


def test_category_lists_all_tiles_vs_last_tile(questions):
    bird = questions["bird_in_tree"]
    fixed = score_answers(bird, RAW_ANSWERS["bird_in_tree"])
    # Default: every tile after zeroing. q3 (relation - spatial) = [1, 0, 0, 0] over tiles.
    assert fixed.category_scores["relation - spatial"] == [1, 0, 0, 0]
    assert fixed.category_scores["entity - whole"] == [1, 1, 0, 0, 1, 0, 1, 1]
    legacy = score_answers(bird, RAW_ANSWERS["bird_in_tree"], legacy=True)
    # Legacy: last tile before zeroing only, raw [0,1,1,1]: q3 keeps its raw 1.
    assert legacy.category_scores["relation - spatial"] == [1]
    assert legacy.category_scores["entity - whole"] == [0, 1]
    assert legacy.category_scores["relation - non-spatial"] == [1]
    # The overall score is the same in both modes.
    assert legacy.score == pytest.approx(fixed.score)


# --------------------------------------------------------------------------- aggregation


def records_for(questions, legacy: bool) -> list[dpg.PromptRecord]:
    """Score every prompt from RAW_ANSWERS, picking each question's answer by its proposition id."""
    records = []
    for item_id, items in questions.items():
        answers = [[tile[question.proposition_id - 1] for question in items] for tile in RAW_ANSWERS[item_id]]
        records.append(score_answers(items, answers, legacy=legacy))
    return records


def test_aggregate_default(questions):
    metrics = aggregate(records_for(questions, legacy=False))
    # overall = (7/12 + 10/16 + 8/16) / 3 = (14 + 15 + 12) / 24 / 3 = 41/72
    assert metrics["overall"] == pytest.approx(100 * 41 / 72)  # 56.94...
    assert metrics["n_samples"] == 3
    assert metrics["n_failed"] == 0
    # Post-zeroing yes counts over 4 tiles per question:
    # cat q1..q6 = 3,2,2,2,3,2; dogs q1..q4 = 3,2,2,3; bird q1..q4 = 2,3,1,2.
    # entity - whole = cat q1 3 + cat q5 3 + dogs q1 3 + bird q1 2 + bird q2 3 = 14 of 20
    assert metrics["l2/entity - whole"] == pytest.approx(70.0)
    assert metrics["l2/entity - state"] == pytest.approx(50.0)  # dogs q3: 2 of 4
    assert metrics["l2/attribute - color"] == pytest.approx(50.0)  # cat q2: 2 of 4
    assert metrics["l2/attribute - size"] == pytest.approx(50.0)  # cat q3: 2 of 4
    assert metrics["l2/attribute - texture"] == pytest.approx(50.0)  # cat q4: 2 of 4
    assert metrics["l2/relation - spatial"] == pytest.approx(37.5)  # cat q6 2 + bird q3 1 = 3 of 8
    assert metrics["l2/relation - non-spatial"] == pytest.approx(50.0)  # bird q4: 2 of 4
    assert metrics["l2/other - count"] == pytest.approx(50.0)  # dogs q2: 2 of 4
    assert metrics["l2/other - text"] == pytest.approx(75.0)  # dogs q4: 3 of 4
    assert metrics["l1/entity"] == pytest.approx(100 * 16 / 24)  # 14 + 2 of 20 + 4
    assert metrics["l1/attribute"] == pytest.approx(50.0)  # 6 of 12
    assert metrics["l1/relation"] == pytest.approx(100 * 5 / 12)  # 3 + 2 of 12
    assert metrics["l1/other"] == pytest.approx(62.5)  # 2 + 3 of 8
    category_keys = sorted(key for key in metrics if key.startswith(("l1/", "l2/")))
    assert len(category_keys) == 4 + 9


def test_aggregate_legacy_drops_first_prompt(legacy_questions):
    records = records_for(legacy_questions, legacy=True)
    assert [record.failed for record in records] == [True, False, False]
    metrics = aggregate(records, legacy=True)
    # cat_on_sofa lost question 1, its children raise KeyError and the prompt drops:
    # overall = (10/16 + 8/16) / 2 = 9/16
    assert metrics["overall"] == pytest.approx(56.25)
    assert metrics["n_samples"] == 2
    assert metrics["n_failed"] == 1
    # Last tile before zeroing: dogs raw [1,1,0,1], bird raw [0,1,1,1].
    assert metrics["l2/entity - whole"] == pytest.approx(100 * 2 / 3)  # dogs q1 1, bird q1 0, bird q2 1
    assert metrics["l2/entity - state"] == pytest.approx(0.0)  # dogs q3 0
    assert metrics["l2/other - count"] == pytest.approx(100.0)
    assert metrics["l2/other - text"] == pytest.approx(100.0)
    assert metrics["l2/relation - spatial"] == pytest.approx(100.0)  # bird q3 raw 1, zeroed 0 by default
    assert metrics["l2/relation - non-spatial"] == pytest.approx(100.0)
    assert metrics["l1/entity"] == pytest.approx(50.0)  # [1, 0, 1] + [0]
    assert metrics["l1/relation"] == pytest.approx(100.0)
    assert metrics["l1/other"] == pytest.approx(100.0)
    assert not any(key.startswith(("l1/attribute", "l2/attribute")) for key in metrics)


def test_aggregate_rejects_mixed_modes(questions):
    records = records_for(questions, legacy=False)
    with pytest.raises(ValueError, match="legacy=False"):
        aggregate(records, legacy=True)


def test_aggregate_empty():
    metrics = aggregate([])
    assert math.isnan(metrics["overall"])
    assert metrics["n_samples"] == 0
    assert metrics["n_failed"] == 0


# --------------------------------------------------------------------------- folder evaluation


def test_evaluate_folder_default(tmp_path, questions):
    write_images(tmp_path / "images", list(questions))
    backend = TableVQA(questions)
    metrics, records = evaluate_folder(tmp_path / "images", questions, backend, batch_size=16)
    assert metrics["overall"] == pytest.approx(100 * 41 / 72)
    assert metrics["n_samples"] == 3
    assert metrics["n_failed"] == 0
    assert metrics["comparable_with_published"] is False
    assert [record.item_id for record in records] == list(questions)
    # 4 tiles x (6 + 4 + 4) questions = 56 pairs in batches of 16: 16, 16, 16, 8.
    assert backend.calls == [16, 16, 16, 8]


def test_evaluate_folder_missing_image_default(tmp_path, questions):
    write_images(tmp_path / "images", ["cat_on_sofa", "bird_in_tree"])
    metrics, records = evaluate_folder(tmp_path / "images", questions, TableVQA(questions))
    # The missing dogs_with_sign image scores 0: (14/24 + 0 + 12/24) / 3 = 26/72 = 13/36
    assert metrics["overall"] == pytest.approx(100 * 13 / 36)  # 36.11...
    assert metrics["n_samples"] == 3
    assert metrics["n_failed"] == 1
    failed = [record for record in records if record.failed]
    assert [record.item_id for record in failed] == ["dogs_with_sign"]
    assert "image not found" in failed[0].error
    # Its questions count as 0 on all 4 tiles: entity - whole = 3 + 3 + 0 + 2 + 3 = 11 of 20
    assert metrics["l2/entity - whole"] == pytest.approx(55.0)
    assert metrics["l2/other - text"] == pytest.approx(0.0)


def test_evaluate_folder_missing_image_legacy(tmp_path, legacy_questions):
    write_images(tmp_path / "images", ["cat_on_sofa", "bird_in_tree"])
    metrics, records = evaluate_folder(tmp_path / "images", legacy_questions, TableVQA(legacy_questions), legacy=True)
    # cat_on_sofa drops (first-row skip) and dogs_with_sign has no image, so only bird_in_tree = 1/2 remains.
    assert metrics["overall"] == pytest.approx(50.0)
    assert metrics["n_samples"] == 1
    assert metrics["n_failed"] == 2
    assert sorted(record.item_id for record in records if record.failed) == ["cat_on_sofa", "dogs_with_sign"]


def test_evaluate_folder_legacy_all_images(tmp_path, legacy_questions):
    write_images(tmp_path / "images", list(legacy_questions))
    metrics, _ = evaluate_folder(tmp_path / "images", legacy_questions, TableVQA(legacy_questions), legacy=True)
    assert metrics["overall"] == pytest.approx(56.25)
    assert metrics["n_samples"] == 2
    assert metrics["n_failed"] == 1


def test_evaluate_folder_unreadable_image(tmp_path, questions):
    write_images(tmp_path / "images", ["cat_on_sofa", "bird_in_tree"])
    (tmp_path / "images" / "dogs_with_sign.png").write_bytes(b"not a png")
    metrics, records = evaluate_folder(tmp_path / "images", questions, TableVQA(questions))
    assert metrics["overall"] == pytest.approx(100 * 13 / 36)
    assert metrics["n_failed"] == 1
    assert records[1].item_id == "dogs_with_sign"
    assert records[1].error.startswith("dogs_with_sign.png:")


def test_evaluate_folder_legacy_stray_file(tmp_path, legacy_questions):
    write_images(tmp_path / "images", list(legacy_questions))
    (tmp_path / "images" / "results.txt").write_text("stray output")
    metrics, records = evaluate_folder(tmp_path / "images", legacy_questions, TableVQA(legacy_questions), legacy=True)
    # The stray file fails like in the official script and leaves the average unchanged.
    assert metrics["overall"] == pytest.approx(56.25)
    assert metrics["n_failed"] == 2
    assert any(record.item_id == "results" and record.failed for record in records)


def test_evaluate_folder_jpg(tmp_path, questions):
    folder = tmp_path / "images"
    folder.mkdir()
    for item_id in questions:
        # Solid tiles survive JPEG at full quality closely enough for the level lookup.
        Image.fromarray(grid_image()).save(folder / f"{item_id}.jpg", quality=100, subsampling=0)
    metrics, _ = evaluate_folder(folder, questions, TableVQA(questions))
    assert metrics["overall"] == pytest.approx(100 * 41 / 72)


# --------------------------------------------------------------------------- scorer


def test_scorer_scores_batch(questions):
    backend = TableVQA(questions)
    scorer = DPGScorer(questions, backend=backend, batch_size=10)
    assert scorer.name == "dpg"
    assert scorer.higher_is_better is True
    assert scorer.comparable_with_published is False
    item_ids = ["cat_on_sofa", "dogs_with_sign", "bird_in_tree"]
    result = scorer.score_detailed(
        [grid_image() for _ in item_ids], ["prompt"] * 3, [{"item_id": item_id} for item_id in item_ids]
    )
    assert result.scores.dtype == np.float32
    assert result.scores.tolist() == pytest.approx([7 / 12, 10 / 16, 8 / 16])
    assert result.errors == [None, None, None]
    assert result.details[0]["item_id"] == "cat_on_sofa"
    assert result.details[0]["tile_scores"] == pytest.approx([1, 5 / 6, 2 / 6, 1 / 6])
    assert result.details[0]["comparable_with_published"] is False
    # 56 pairs in batches of 10; the batch of pairs 20..29 mixes cat_on_sofa and dogs_with_sign.
    assert backend.calls == [10, 10, 10, 10, 10, 6]


def test_scorer_failures_are_nan(questions):
    scorer = DPGScorer(questions, backend=TableVQA(questions))
    images = [grid_image(), grid_image(), np.zeros((15, 16, 3), np.uint8), grid_image()]
    metadata = [{"item_id": "unknown"}, None, {"item_id": "bird_in_tree"}, {"item_id": "bird_in_tree"}]
    result = scorer.score_detailed(images, ["p"] * 4, metadata)
    assert np.isnan(result.scores[:3]).all()
    assert result.scores[3] == pytest.approx(0.5)
    assert "no DPG questions for item_id 'unknown'" in result.errors[0]
    assert "no 'item_id'" in result.errors[1]
    assert "odd side" in result.errors[2]
    assert result.errors[3] is None


def test_scorer_backend_error_fails_its_images(questions):
    # The backend raises on every batch that contains a bird_in_tree question.
    backend = TableVQA(questions, fail_on="Is the bird singing?")
    scorer = DPGScorer(questions, backend=backend, batch_size=8)
    item_ids = ["cat_on_sofa", "bird_in_tree"]
    result = scorer.score_detailed([grid_image()] * 2, ["p"] * 2, [{"item_id": item_id} for item_id in item_ids])
    assert result.scores[0] == pytest.approx(7 / 12)
    assert np.isnan(result.scores[1])
    assert "VQA backend failed: simulated CUDA out of memory" in result.errors[1]


def test_scorer_legacy_drops_first_prompt():
    legacy = load_questions(QUESTIONS_CSV, legacy=True)
    scorer = DPGScorer(questions_path=QUESTIONS_CSV, backend=TableVQA(legacy), legacy=True)
    result = scorer.score_detailed([grid_image()] * 2, ["p"] * 2, [{"item_id": "cat_on_sofa"}, {"item_id": "dogs_with_sign"}])
    assert np.isnan(result.scores[0])
    assert "KeyError" in result.errors[0]
    assert result.scores[1] == pytest.approx(10 / 16)


def test_scorer_rejects_both_question_sources(questions):
    with pytest.raises(ValueError, match="not both"):
        DPGScorer(questions, questions_path=QUESTIONS_CSV, backend=TableVQA(questions))


def test_fake_backend_matches_protocol(questions):
    assert isinstance(TableVQA(questions), VQABackend)


# --------------------------------------------------------------------------- VQA backends


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "yes", "no", "is", "there", "a", "red", "cube", "?"]


def save_tiny_blip(folder: Path) -> Path:
    """Save a random BLIP VQA model, its image processor and a BERT tokenizer to ``folder``."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True)
    vocab_file = folder.parent / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = BlipConfig(
        text_config={
            "vocab_size": len(VOCAB),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
            "pad_token_id": VOCAB.index("[PAD]"),
            "bos_token_id": VOCAB.index("[DEC]"),
            "sep_token_id": VOCAB.index("[SEP]"),
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    BlipForQuestionAnswering(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_transformers_vqa_local_model(tmp_path):
    folder = save_tiny_blip(tmp_path / "tiny_blip")
    backend = TransformersVQA(folder, device="cpu", max_new_tokens=3)
    assert backend.comparable_with_published is False
    assert TransformersVQA.comparable_with_published is False
    images = [grid_image(), np.full((20, 30, 3), 200, np.uint8)]
    answers = backend.answer(images, ["Is there a red cube?", "Is there a cube?"])
    assert len(answers) == 2
    for answer in answers:
        assert isinstance(answer, str)
        assert answer == answer.strip().lower()
        assert "[dec]" not in answer
    assert backend.answer([], []) == []
    with pytest.raises(ValueError, match="one question per image"):
        backend.answer(images, ["Is there a cube?"])


def test_transformers_vqa_in_scorer(tmp_path, questions):
    backend = TransformersVQA(save_tiny_blip(tmp_path / "tiny_blip"), device="cpu", max_new_tokens=2)
    scorer = DPGScorer(questions, backend=backend, batch_size=32)
    result = scorer.score_detailed([grid_image()], ["p"], [{"item_id": "bird_in_tree"}])
    assert result.errors == [None]
    assert 0.0 <= float(result.scores[0]) <= 1.0
    assert result.details[0]["comparable_with_published"] is False


def test_transformers_vqa_missing_weights_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    def reject_connection(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    # Offline mode plus a socket guard, so the test never reaches the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", reject_connection)
    with pytest.raises(MissingWeightsError, match="hf download Salesforce/blip-vqa-base --revision"):
        TransformersVQA(cache_dir=tmp_path / "empty_cache", device="cpu")


def test_transformers_vqa_missing_local_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match="no model folder"):
        TransformersVQA(tmp_path / "absent", device="cpu")


def test_mplug_vqa_without_modelscope(monkeypatch):
    # A None entry in sys.modules makes "import modelscope..." raise ImportError.
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(ImportError, match=r"pip install 'modelscope\[multi-modal\]'"):
        MPlugVQA()


def test_mplug_vqa_official_model_id():
    assert dpg.MPLUG_VQA_MODEL == "damo/mplug_visual-question-answering_coco_large_en"
    assert MPlugVQA.comparable_with_published is True


def test_mplug_vqa_with_fake_modelscope(monkeypatch):
    # Stand-in ModelScope modules record what the pipeline is built with and called with.
    import types

    calls = []

    def pipeline(task, model, device):
        calls.append(("build", task, model, device))

        def run(inputs):
            calls.append(("run", sorted(inputs), inputs["question"], inputs["image"].size))
            return {"text": "Yes "}

        return run

    package = types.ModuleType("modelscope")
    pipelines = types.ModuleType("modelscope.pipelines")
    pipelines.pipeline = pipeline
    utils = types.ModuleType("modelscope.utils")
    constant = types.ModuleType("modelscope.utils.constant")
    constant.Tasks = types.SimpleNamespace(visual_question_answering="visual-question-answering")
    for name, module in [
        ("modelscope", package),
        ("modelscope.pipelines", pipelines),
        ("modelscope.utils", utils),
        ("modelscope.utils.constant", constant),
    ]:
        monkeypatch.setitem(sys.modules, name, module)

    backend = MPlugVQA(device="cpu")
    answers = backend.answer([grid_image()], ["Is there a cat?"])
    # Answers are passed through unchanged, so "Yes " would score 0 as in the official script.
    assert answers == ["Yes "]
    assert calls[0] == ("build", "visual-question-answering", dpg.MPLUG_VQA_MODEL, "cpu")
    assert calls[1] == ("run", ["image", "question"], "Is there a cat?", (2 * TILE_SIDE, 2 * TILE_SIDE))

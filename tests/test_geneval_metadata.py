"""GenEval metadata: the official prompt file, round trips and rejected input.

The official files are ``prompts/evaluation_metadata.jsonl`` and
``evaluation/object_names.txt`` of djghosh13/geneval at commit
af4902f24d3ca90ebbb446dd9891a59e0f82725f. The tests look for them in
``shared/benchmarks/geneval/`` next to the repository and skip when they are absent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from cogrpo.benchmarks.geneval import (
    OFFICIAL_METADATA_SHA256,
    OFFICIAL_OBJECT_NAMES_SHA256,
    MetadataError,
    dump_metadata,
    load_metadata,
    load_object_names,
    sha256_file,
)
from cogrpo.world.prompts import build_eval_set, load_eval_set

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = REPO_ROOT.parent / "shared" / "benchmarks" / "geneval"
OFFICIAL_METADATA = OFFICIAL_DIR / "evaluation_metadata.jsonl"
OFFICIAL_OBJECT_NAMES = OFFICIAL_DIR / "object_names.txt"
SHAPES_EVAL_FILE = REPO_ROOT / "cogrpo" / "data" / "shapes_eval_metadata.jsonl"

OFFICIAL_TAG_COUNTS = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}


def require_official_files() -> None:
    missing = [str(path) for path in (OFFICIAL_METADATA, OFFICIAL_OBJECT_NAMES) if not path.is_file()]
    if missing:
        pytest.skip(
            f"official GenEval files not found: {', '.join(missing)}; copy prompts/evaluation_metadata.jsonl "
            "and evaluation/object_names.txt from djghosh13/geneval there"
        )


@pytest.fixture(scope="module")
def official_files() -> None:
    require_official_files()


@pytest.fixture(scope="module")
def official_names(official_files) -> list[str]:
    return load_object_names(OFFICIAL_OBJECT_NAMES)


@pytest.fixture(scope="module")
def official_entries(official_names) -> list[dict]:
    return load_metadata(OFFICIAL_METADATA, allowed_classes=official_names)


# --------------------------------------------------------------------------- official file

def test_official_object_names_count(official_names):
    assert len(official_names) == 80
    assert len(set(official_names)) == 80


def test_official_prompt_count(official_entries):
    assert len(official_entries) == 553


def test_official_tag_counts(official_entries):
    assert Counter(entry["tag"] for entry in official_entries) == OFFICIAL_TAG_COUNTS


def test_official_metadata_sha256(official_files):
    assert sha256_file(OFFICIAL_METADATA) == OFFICIAL_METADATA_SHA256


def test_official_object_names_sha256(official_files):
    assert sha256_file(OFFICIAL_OBJECT_NAMES) == OFFICIAL_OBJECT_NAMES_SHA256


def test_official_round_trip(official_entries, official_names, tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    dump_metadata(official_entries, path)
    assert load_metadata(path, allowed_classes=official_names) == official_entries
    assert path.read_bytes() == OFFICIAL_METADATA.read_bytes()


# --------------------------------------------------------------------------- shapes world set

def test_shapes_eval_set_matches_builder():
    assert load_eval_set() == build_eval_set(0)


def test_shapes_eval_set_round_trip(tmp_path):
    entries = build_eval_set(0)
    path = tmp_path / "shapes_eval_metadata.jsonl"
    dump_metadata(entries, path)
    assert load_metadata(path) == entries
    assert path.read_bytes() == SHAPES_EVAL_FILE.read_bytes()


def test_hand_written_round_trip(tmp_path):
    entries = [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {
            "tag": "counting",
            "include": [{"class": "cat", "count": 3}],
            "exclude": [{"class": "cat", "count": 4}],
            "prompt": "a photo of three cats",
        },
        {
            "tag": "position",
            "include": [{"class": "car", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
            "prompt": "a photo of a dog left of a car",
        },
        {
            "tag": "color_attr",
            "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "cat", "count": 1, "color": "white"}],
            "prompt": "a photo of a red car and a white cat",
        },
    ]
    path = tmp_path / "metadata.jsonl"
    dump_metadata(entries, path)
    assert load_metadata(path, allowed_classes=CLASSES) == entries


def test_any_class_without_allowed_classes(tmp_path):
    path = tmp_path / "metadata.jsonl"
    path.write_text(json.dumps(entry_with(clause={"class": "dragon", "count": 1})) + "\n")
    assert load_metadata(path)[0]["include"][1]["class"] == "dragon"


# --------------------------------------------------------------------------- rejected input

CLASSES = ["cat", "dog", "car"]
TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
RELATIONS = ["left of", "right of", "above", "below"]
BAD_LINE_NUMBER = 3


def entry_with(**changes) -> dict:
    """Return a valid two_object entry, with ``clause`` replacing its second include clause."""
    entry = {
        "tag": "two_object",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
        "prompt": "a photo of a dog and a cat",
    }
    if "clause" in changes:
        entry["include"][1] = changes.pop("clause")
    entry.update(changes)
    return entry


def all_of(*words: str) -> str:
    """Return a regex that matches text containing every word, in any order."""
    return "".join(f"(?=.*{re.escape(word)})" for word in words)


@dataclass
class BadInput:
    """A bad metadata line (placed at line 3 of a file) and what the error message must name."""

    name: str
    line: str
    value: str
    allowed: str | None


def bad_entry(**changes) -> str:
    return json.dumps(entry_with(**changes))


BAD_INPUTS = [
    BadInput("malformed-json", '{"tag": "single_object", "include": [], "prompt": oops}', "oops", "JSON object"),
    BadInput("not-an-object", '["dog", "cat"]', "list", "JSON object"),
    BadInput("unknown-class", bad_entry(clause={"class": "dragon", "count": 1}), "dragon", all_of(*CLASSES)),
    BadInput("unknown-colour", bad_entry(clause={"class": "cat", "count": 1, "color": "teal"}), "teal", all_of(*COLORS)),
    BadInput(
        "unknown-relation",
        bad_entry(tag="position", clause={"class": "cat", "count": 1, "position": ["near", 0]}),
        "near",
        all_of(*RELATIONS),
    ),
    BadInput("unknown-tag", bad_entry(tag="spatial"), "spatial", all_of(*TAGS)),
    BadInput("count-zero", bad_entry(clause={"class": "cat", "count": 0}), r"count\W+0(?!\d)", "integer >= 1"),
    BadInput("count-negative", bad_entry(clause={"class": "cat", "count": -1}), r"count\W+-1(?!\d)", "integer >= 1"),
    BadInput("count-string", bad_entry(clause={"class": "cat", "count": "2"}), r"count\W+['\"]2['\"]", "integer >= 1"),
    BadInput("count-boolean", bad_entry(clause={"class": "cat", "count": True}), r"count\W+(True|true)\b", "integer >= 1"),
    BadInput(
        "position-target-itself",
        bad_entry(tag="position", clause={"class": "cat", "count": 1, "position": ["left of", 1]}),
        r"target\W+1(?!\d)",
        re.escape("0..0"),
    ),
    BadInput(
        "position-target-later-clause",
        bad_entry(
            tag="position",
            include=[
                {"class": "dog", "count": 1},
                {"class": "cat", "count": 1, "position": ["left of", 2]},
                {"class": "car", "count": 1},
            ],
        ),
        r"target\W+2(?!\d)",
        re.escape("0..0"),
    ),
    BadInput(
        "position-on-first-clause",
        bad_entry(tag="position", include=[{"class": "dog", "count": 1, "position": ["left of", 0]}]),
        r"target\W+0(?!\d)",
        "earlier include clause",
    ),
    BadInput(
        "position-inside-exclude",
        bad_entry(exclude=[{"class": "car", "count": 1, "position": ["left of", 0]}]),
        "position",
        "include clause",
    ),
    BadInput("unknown-entry-key", bad_entry(colour="red"), "colour", all_of("tag", "prompt", "include", "exclude")),
    BadInput(
        "unknown-clause-key",
        bad_entry(clause={"class": "cat", "count": 1, "colour": "red"}),
        "colour",
        all_of("class", "count", "color", "position"),
    ),
]

VALID_LINE = json.dumps(entry_with())


def write_bad_file(directory: Path, bad_line: str) -> Path:
    """Write a file whose line 3 is ``bad_line``, after a valid line and a blank line."""
    path = directory / "metadata.jsonl"
    path.write_text(f"{VALID_LINE}\n\n{bad_line}\n{VALID_LINE}\n", encoding="utf-8")
    return path


def message_patterns(path: Path, case: BadInput) -> dict[str, str | None]:
    return {
        "path": re.escape(str(path)),
        "line-number": rf"(:|line ){BAD_LINE_NUMBER}(?!\d)",
        "bad-value": case.value,
        "allowed-values": case.allowed,
    }


BAD_INPUT_PARAMS = [
    pytest.param(case, part, id=f"{case.name}-{part}")
    for case in BAD_INPUTS
    for part in ("path", "line-number", "bad-value", "allowed-values")
    if not (part == "allowed-values" and case.allowed is None)
]


@pytest.mark.parametrize("case, part", BAD_INPUT_PARAMS)
def test_bad_line_message(tmp_path, case, part):
    path = write_bad_file(tmp_path, case.line)
    pattern = message_patterns(path, case)[part]

    with pytest.raises(MetadataError, match=pattern):
        load_metadata(path, allowed_classes=CLASSES)


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_file_names_path(tmp_path, text):
    path = tmp_path / "metadata.jsonl"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(MetadataError, match=re.escape(str(path))):
        load_metadata(path, allowed_classes=CLASSES)


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_file_names_problem(tmp_path, text):
    path = tmp_path / "metadata.jsonl"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(MetadataError, match="no prompts|empty"):
        load_metadata(path, allowed_classes=CLASSES)


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_file_names_expected_content(tmp_path, text):
    path = tmp_path / "metadata.jsonl"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(MetadataError, match="JSON object"):
        load_metadata(path, allowed_classes=CLASSES)

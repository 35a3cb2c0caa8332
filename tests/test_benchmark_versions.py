"""A change to a packaged benchmark's prompts or scoring must come with a new benchmark version."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from cogrpo.evaluation import benchmark_versions as bv

DOCS = Path(__file__).parent.parent / "docs" / "benchmarks.md"
RECORD = bv.load_record()


@pytest.mark.parametrize("name", sorted(RECORD))
def test_benchmark_change_bumps_version(name):
    recorded = RECORD[name]

    problems = bv.version_problems(name, recorded, bv.current_entry(name, recorded))

    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("name", sorted(RECORD))
def test_benchmark_version_has_changelog_line(name):
    version = RECORD[name]["version"]
    rows = [line for line in DOCS.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    pattern = re.compile(rf"^\|[^|]*`{re.escape(name)}`[^|]*\|\s*`?{re.escape(version)}`?\s*\|")

    assert any(pattern.match(row) for row in rows), (
        f"{DOCS} has no changelog row for benchmark {name!r} version {version!r}; add one under 'Benchmark versions'"
    )


def test_packaged_prompt_files_are_recorded():
    data = resources.files("cogrpo").joinpath("data")
    packaged = sorted(f"data/{item.name}" for item in data.iterdir()
                      if item.is_file() and not item.name.startswith("__init__") and item.name != "__pycache__")
    recorded = sorted(entry["prompt_file"] for entry in RECORD.values() if entry.get("prompt_file"))

    assert packaged == recorded, (
        f"prompt files in cogrpo/data must each belong to a benchmark in cogrpo/{bv.RECORD_RESOURCE}; "
        f"packaged {packaged}, recorded {recorded}"
    )


def test_changed_prompt_file_without_bump_fails():
    recorded = RECORD["shapes"]
    current = dict(bv.current_entry("shapes", recorded), prompt_sha256="0" * 64)

    (problem,) = bv.version_problems("shapes", recorded, current)

    assert "prompt file data/shapes_eval_metadata.jsonl changed" in problem
    assert "Bump the version of benchmark 'shapes'" in problem
    assert "docs/benchmarks.md" in problem
    assert "python -m cogrpo.evaluation.benchmark_versions" in problem


def test_bumped_version_without_record_update_fails():
    recorded = RECORD["shapes"]
    current = dict(bv.current_entry("shapes", recorded), version="2")

    (problem,) = bv.version_problems("shapes", recorded, current)

    assert "version changed from '1' to '2'" in problem
    assert "changelog line for version '2'" in problem


def test_scoring_fingerprint_ignores_comments_and_docstrings():
    source = bv.module_path("cogrpo.rewards.shapes").read_text(encoding="utf-8")
    original = bv.source_dump("cogrpo.rewards.shapes", source)

    reworded = source.replace('"""Rewards of the shapes world', '"""Rewards (reworded) of the shapes world')
    reworded = reworded.replace("        scores = np.full(", "        # a new comment\n        scores  =  np.full(")
    assert reworded != source
    assert bv.source_dump("cogrpo.rewards.shapes", reworded) == original


def test_scoring_fingerprint_sees_rule_changes():
    source = bv.module_path("cogrpo.rewards.shapes").read_text(encoding="utf-8")
    original = bv.source_dump("cogrpo.rewards.shapes", source)

    rule = "float(verdict.correct) if self.strict else credit"
    changed = source.replace(rule, "float(verdict.correct) if self.strict else 0.5 * credit")
    assert changed != source
    assert bv.source_dump("cogrpo.rewards.shapes", changed) != original


def test_scoring_source_selects_one_name():
    source = "X = 1\n\ndef rule(a):\n    '''Doc.'''\n    return a + X\n\ndef other():\n    return 2\n"

    selected = bv.source_dump("cogrpo.fake:rule", source)

    assert selected == bv.source_dump("cogrpo.fake:rule", source.replace("return 2", "return 3"))
    assert selected != bv.source_dump("cogrpo.fake:rule", source.replace("a + X", "a - X"))
    with pytest.raises(ValueError, match="defines no top-level 'missing'"):
        bv.source_dump("cogrpo.fake:missing", source)


def test_every_registered_benchmark_is_recorded():
    from cogrpo.catalog import BENCHMARKS

    assert sorted(RECORD) == sorted(BENCHMARKS.names())


def test_downloaded_benchmark_version_read_from_source():
    assert bv.suite_version("cogrpo.evaluation.suites:geneval_suite") == "1/<detector>"
    assert bv.suite_version("cogrpo.evaluation.official_suites:hps_suite") == "1"


def test_downloaded_benchmark_scoring_change_without_bump_fails():
    recorded = RECORD["dpg"]
    current = dict(bv.current_entry("dpg", recorded), scoring_fingerprint="0" * 64)

    (problem,) = bv.version_problems("dpg", recorded, current)

    assert "scoring sources" in problem
    assert "Bump the version of benchmark 'dpg'" in problem

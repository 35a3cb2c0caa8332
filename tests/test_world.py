"""The shapes world: drawing, prompts, the held-out split and the detector."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from cogrpo.benchmarks.geneval import TAGS, judge_detections, load_metadata, validate_metadata
from cogrpo.world.detector import classify_region_color, color_classifier, detect
from cogrpo.world.prompts import (
    HELD_OUT_PAIRS,
    TrainingPrompts,
    all_prompts,
    build_eval_set,
    load_eval_set,
    make_metadata,
    render_entry,
    sample_metadata,
    scene_for,
    uses_held_out_pair,
)
from cogrpo.world.render import BACKGROUND, COLORS, GRID_ALIGN, IMAGE_SIZE, PALETTE, SHAPES, SIZES, DrawnObject, draw


def test_detector_judges_clean_images_correct():
    rng = np.random.default_rng(0)
    eval_set = load_eval_set()
    results = collections.Counter()
    wrong = []
    for i in range(1200):
        entry = sample_metadata(rng) if i % 2 else eval_set[i % len(eval_set)]
        image = render_entry(entry, rng, allow_held_out=True)
        verdict = judge_detections(detect(image), entry, color_classifier(image))
        results[entry["tag"]] += 1
        if not verdict.correct:
            wrong.append((entry["prompt"], verdict.reason))
    assert set(results) == set(TAGS)
    assert wrong == []


def test_detector_scores_clean_shapes_fully():
    for shape in SHAPES:
        for color in COLORS:
            for size in SIZES:
                image = draw([DrawnObject(shape, color, 4, 4, size)])
                (detection,) = detect(image)
                assert detection.label == shape
                assert detection.score > 0.99
                assert classify_region_color(image, detection.mask) == color


def test_detector_finds_nothing_on_background():
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    image[:] = BACKGROUND
    assert detect(image) == []


def test_detector_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="expected an RGB image"):
        detect(np.zeros((8, 8), np.uint8))


def test_scenes_are_grid_aligned_and_apart():
    rng = np.random.default_rng(1)
    for _ in range(300):
        objects = scene_for(sample_metadata(rng), rng)
        for obj in objects:
            assert obj.x0 % GRID_ALIGN == 0
            assert obj.y0 % GRID_ALIGN == 0
            assert obj.size in SIZES


def test_pretraining_scenes_never_draw_held_out_pairs():
    rng = np.random.default_rng(2)
    for _ in range(500):
        entry = sample_metadata(rng)
        assert not uses_held_out_pair(entry)
        for obj in scene_for(entry, rng):
            assert (obj.color, obj.shape) not in HELD_OUT_PAIRS


def test_eval_set_matches_committed_file():
    assert load_eval_set() == build_eval_set(0)


def test_eval_set_tag_counts():
    counts = collections.Counter(e["tag"] for e in load_eval_set())
    assert counts == {"single_object": 40, "two_object": 50, "counting": 40, "colors": 47, "position": 50, "color_attr": 50}


def test_eval_set_names_every_held_out_pair():
    named = {(c.get("color"), c["class"]) for e in load_eval_set() for c in e["include"]}
    assert HELD_OUT_PAIRS <= named


def test_training_prompts_avoid_eval_prompts_and_held_out_pairs():
    eval_prompts = {e["prompt"] for e in load_eval_set()}
    pool = TrainingPrompts().pool
    assert pool
    for entry in pool:
        assert entry["prompt"] not in eval_prompts
        assert not uses_held_out_pair(entry)


def test_training_prompts_are_seeded():
    source = TrainingPrompts()
    first = source.sample(np.random.default_rng(7), 20)
    second = source.sample(np.random.default_rng(7), 20)
    assert first == second


@pytest.mark.parametrize("tag", TAGS)
def test_generated_metadata_validates(tag):
    for entry in all_prompts(tag)[:50]:
        assert validate_metadata(entry, allowed_classes=SHAPES) is entry


def test_generated_metadata_round_trips(tmp_path):
    from cogrpo.benchmarks.geneval import dump_metadata

    entries = [make_metadata("position", [("circle", None), ("cross", None)], relation="above"),
               make_metadata("counting", [("triangle", None)], count=3),
               make_metadata("color_attr", [("square", "orange"), ("circle", "white")])]
    path = tmp_path / "meta.jsonl"
    dump_metadata(entries, path)
    assert load_metadata(path, allowed_classes=SHAPES) == entries
    assert entries[0]["prompt"] == "a photo of a cross above a circle"
    assert entries[2]["prompt"] == "a photo of an orange square and a white circle"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_metadata("colors", [("hexagon", "red")]), "unknown class 'hexagon'; allowed: circle"),
        (lambda: make_metadata("colors", [("circle", "teal")]), "unknown color 'teal'; allowed: red"),
        (lambda: make_metadata("position", [("circle", None), ("square", None)], relation="behind"), "invalid relation 'behind'"),
        (lambda: make_metadata("scenery", [("circle", None)]), "invalid tag 'scenery'; allowed: single_object"),
        (lambda: make_metadata("counting", [("circle", None)], count=7), "invalid count 7"),
    ],
)
def test_make_metadata_rejects_bad_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_palette_is_far_from_background():
    for color, rgb in PALETTE.items():
        distance = np.sqrt(((np.asarray(rgb, float) - np.asarray(BACKGROUND, float)) ** 2).sum())
        assert distance > 90, color

"""GenEval detectors, the CLIP colour classifier, the scorer and the suite, on tiny random models.

No test downloads anything: the hub client is offline and pointed at an empty
cache. Mask2Former and CLIP are tiny random models saved to a temporary folder
and loaded by path. Tests that need the official GenEval files read unmodified
copies from ``shared/benchmarks/geneval/`` beside the repository and skip when
they are absent.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogrpo.benchmarks import download
from cogrpo.benchmarks import geneval as geneval_rules
from cogrpo.benchmarks.geneval import (
    COLORS,
    OFFICIAL_METADATA_SHA256,
    TAGS,
    Detection,
    fetch_official_files,
    load_object_names,
)
from cogrpo.benchmarks.geneval_colors import (
    BACKGROUND_COLOR,
    CLIPColorModel,
    PaletteColorModel,
    color_prompts,
    object_crop,
)
from cogrpo.benchmarks.geneval_detectors import (
    COCO_ID2LABEL,
    DEFAULT_MASK2FORMER_MODEL,
    DEFAULT_MASK2FORMER_REVISION,
    GENEVAL_OBJECT_NAMES,
    MAX_DETECTIONS_PER_IMAGE,
    GenEvalDetector,
    Mask2FormerDetector,
    MMDetDetector,
    ShapesDetector,
    boxes_from_masks,
    build_detector,
    detections_from_mmdet,
    instance_detections,
    label_map,
    to_geneval_name,
)
from cogrpo.rewards.base import MissingWeightsError
from cogrpo.rewards.geneval import GenEvalScorer, PartialGenEvalScorer
from cogrpo.world.render import PALETTE

open_clip = pytest.importorskip("open_clip")

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = REPO_ROOT.parent / "shared" / "benchmarks" / "geneval"
TINY_CLIP_NAME = "geneval-colors-tiny-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 56, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """Keep the hub client offline and pointed at an empty cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.delenv(geneval_rules.OFFICIAL_DATA_ENV, raising=False)


def require_official_files() -> None:
    if not (OFFICIAL_DIR / "evaluation_metadata.jsonl").is_file() or not (OFFICIAL_DIR / "object_names.txt").is_file():
        pytest.skip(f"official GenEval files not found in {OFFICIAL_DIR}")


# --------------------------------------------------------------------------- label map


def test_object_names_match_official_file():
    require_official_files()

    assert list(GENEVAL_OBJECT_NAMES) == load_object_names(OFFICIAL_DIR / "object_names.txt")


def test_coco_labels_cover_official_names():
    require_official_files()
    official = load_object_names(OFFICIAL_DIR / "object_names.txt")

    mapped = label_map(COCO_ID2LABEL, official)

    assert len(COCO_ID2LABEL) == 80
    assert sorted(mapped) == list(range(80))
    assert set(mapped.values()) == set(official)
    # Same order: COCO id i is GenEval name i, as in the official evaluator.
    assert [mapped[i] for i in range(80)] == official


def test_coco_names_that_differ_are_mapped():
    assert COCO_ID2LABEL[64] == "mouse"
    assert to_geneval_name("mouse") == "computer mouse"
    assert to_geneval_name("remote") == "tv remote"
    assert to_geneval_name("keyboard") == "computer keyboard"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("motorbike", "motorcycle"),
        ("aeroplane", "airplane"),
        ("sofa", "couch"),
        ("tvmonitor", "tv"),
        ("diningtable", "dining table"),
        ("pottedplant", "potted plant"),
        ("hair dryer", "hair drier"),
        ("Traffic_Light", "traffic light"),
        ("tv", "tv"),
        ("banner", None),
        ("", None),
    ],
)
def test_label_aliases(label, expected):
    assert to_geneval_name(label) == expected


# --------------------------------------------------------------------------- post-processing


def test_boxes_from_masks_end_past_last_pixel():
    masks = np.zeros((3, 6, 8), dtype=bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5, 7] = True

    boxes = boxes_from_masks(masks)

    np.testing.assert_array_equal(boxes[0], [2, 1, 6, 4])
    np.testing.assert_array_equal(boxes[1], [7, 5, 8, 6])
    np.testing.assert_array_equal(boxes[2], [0, 0, 0, 0])


def hand_made_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three queries over two classes plus "no object", with masks at the padded size 8 x 8."""
    class_logits = torch.tensor([
        [4.0, 0.0, 0.0],  # class 0, confident
        [0.0, 3.0, 0.0],  # class 1, confident
        [0.0, 0.0, 6.0],  # "no object": both class probabilities are low
    ])
    mask_logits = torch.full((3, 8, 8), -5.0)
    mask_logits[0, 1:4, 2:6] = 5.0
    mask_logits[0, 6:, :] = 5.0  # padding rows, outside the valid 6 x 8 region
    mask_logits[1, 0:2, 0:2] = 2.0
    mask_logits[2, :, :] = 5.0
    return class_logits, mask_logits


def test_instance_detections_follow_mmdet_scoring():
    class_logits, mask_logits = hand_made_outputs()
    probabilities = torch.softmax(class_logits, dim=-1)

    detections = instance_detections(class_logits, mask_logits, (8, 8), (6, 8), (6, 8), {0: "cat", 1: "dog"})

    by_label = {d.label: d for d in detections}
    assert sorted(by_label) == ["cat", "dog"]
    cat, dog = by_label["cat"], by_label["dog"]
    # The padding rows are cropped away, so they do not stretch the box.
    assert cat.box == (2.0, 1.0, 6.0, 4.0)
    assert cat.mask.shape == (6, 8)
    assert cat.mask.dtype == bool
    assert int(cat.mask.sum()) == 12
    assert cat.score == pytest.approx(float(probabilities[0, 0]) * (1 / (1 + math.exp(-5.0))), rel=1e-5)
    assert dog.box == (0.0, 0.0, 2.0, 2.0)
    assert dog.score == pytest.approx(float(probabilities[1, 1]) * (1 / (1 + math.exp(-2.0))), rel=1e-5)


def test_instance_detections_drop_low_scores_and_unmapped():
    class_logits, mask_logits = hand_made_outputs()

    only_cat = instance_detections(class_logits, mask_logits, (8, 8), (6, 8), (6, 8), {0: "cat"})
    nothing = instance_detections(class_logits, mask_logits, (8, 8), (6, 8), (6, 8), {0: "cat", 1: "dog"}, score_floor=0.99)
    all_pairs = instance_detections(class_logits, mask_logits, (8, 8), (6, 8), (6, 8), {0: "cat", 1: "dog"}, score_floor=-1.0)
    top_two = instance_detections(class_logits, mask_logits, (8, 8), (6, 8), (6, 8), {0: "cat", 1: "dog"},
                                  score_floor=-1.0, max_detections=2)

    assert [d.label for d in only_cat] == ["cat"]
    assert nothing == []
    assert len(all_pairs) == 6
    assert len(top_two) == 2


def test_instance_detections_resize_to_original_size():
    class_logits, mask_logits = hand_made_outputs()

    detections = instance_detections(class_logits, mask_logits, (8, 8), (6, 8), (12, 16), {0: "cat"})

    (cat,) = detections
    assert cat.mask.shape == (12, 16)
    assert cat.box == (4.0, 2.0, 12.0, 8.0)


# --------------------------------------------------------------------------- transformers Mask2Former


def random_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((48, 80, 3), (64, 64, 3))]


def test_mask2former_detections_in_geneval_structure(tiny_mask2former):
    detector = Mask2FormerDetector(tiny_mask2former, size=None, device="cpu", score_floor=0.0, batch_size=1)
    images = random_images()

    results = detector.detect(images)

    assert isinstance(detector, GenEvalDetector)
    assert not detector.comparable_with_official
    assert len(results) == len(images)
    for image, detections in zip(images, results):
        # All 8 x 80 (query, class) pairs of the random model score above 0, and mmdet keeps the top 100.
        assert len(detections) == MAX_DETECTIONS_PER_IMAGE
        for detection in detections:
            assert isinstance(detection, Detection)
            assert detection.label in GENEVAL_OBJECT_NAMES
            assert detection.mask.shape == image.shape[:2]
            assert detection.mask.dtype == bool
            x1, y1, x2, y2 = detection.box
            assert 0 <= x1 <= x2 <= image.shape[1]
            assert 0 <= y1 <= y2 <= image.shape[0]
            assert 0.0 < detection.score <= 1.0


def test_mask2former_batches_match_single(tiny_mask2former):
    detector = Mask2FormerDetector(tiny_mask2former, size=None, device="cpu", score_floor=0.0, batch_size=2)
    images = [random_images()[1], random_images()[1][::-1].copy()]

    batched = detector.detect(images)
    single = [detector.detect([image])[0] for image in images]

    for together, alone in zip(batched, single):
        assert [d.label for d in together] == [d.label for d in alone]
        np.testing.assert_allclose([d.score for d in together], [d.score for d in alone], atol=1e-5)


@pytest.mark.parametrize(("class_id", "expected"), [(64, "computer mouse"), (62, "tv"), (57, "couch"), (0, "person")])
def test_mask2former_maps_coco_labels(tiny_mask2former, class_id, expected):
    detector = Mask2FormerDetector(tiny_mask2former, size=None, device="cpu")
    # Make every query predict one class with probability close to 1.
    with torch.no_grad():
        detector.model.class_predictor.weight.zero_()
        detector.model.class_predictor.bias.fill_(-20.0)
        detector.model.class_predictor.bias[class_id] = 20.0

    (detections,) = detector.detect([random_images()[1]])

    assert detections
    assert {d.label for d in detections} == {expected}


def test_mask2former_default_size_is_official_scale(tiny_mask2former):
    detector = Mask2FormerDetector(tiny_mask2former, device="cpu")

    inputs = detector.processor(images=[np.zeros((64, 96, 3), dtype=np.uint8)], return_tensors="pt", size=detector.size)

    assert detector.size == {"shortest_edge": 800, "longest_edge": 1333}
    # 64 x 96 scales to 800 x 1200, and the processor rounds 1200 up to a multiple of 32.
    assert tuple(inputs["pixel_values"].shape[-2:]) == (800, 1216)


def test_mask2former_missing_folder_names_path(tmp_path):
    missing = tmp_path / "no-such-model"

    with pytest.raises(MissingWeightsError) as error:
        Mask2FormerDetector(missing)

    assert str(missing) in str(error.value)
    assert "--detector-weights PATH" in str(error.value)


def test_mask2former_hub_weights_fail_fast_offline(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        build_detector("mask2former")

    message = str(error.value)
    assert DEFAULT_MASK2FORMER_MODEL in message
    assert DEFAULT_MASK2FORMER_REVISION in message
    assert str(tmp_path / "empty-hub-cache" / "models--facebook--mask2former-swin-small-coco-instance") in message
    assert "HF_HUB_OFFLINE" in message
    assert "--detector-weights PATH" in message


def test_mask2former_rejects_non_coco_labels(tmp_path, tiny_mask2former):
    from transformers import Mask2FormerForUniversalSegmentation

    folder = Path(shutil.copytree(tiny_mask2former, tmp_path / "model"))
    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder)
    model.config.id2label = {i: f"thing{i}" for i in range(80)}
    model.save_pretrained(folder)

    with pytest.raises(ValueError, match="none of the labels"):
        Mask2FormerDetector(folder, device="cpu")


# --------------------------------------------------------------------------- mmdet and shapes


def test_mmdet_missing_names_extra():
    try:
        import mmdet  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mmdet is installed")

    with pytest.raises(ImportError) as error:
        build_detector("mmdet", weights="model.pth")

    assert "geneval-mmdet" in str(error.value)
    assert "docs/geneval.md" in str(error.value)


def test_detections_from_mmdet_2x_result():
    bbox_results = [np.zeros((0, 5), dtype=np.float32) for _ in GENEVAL_OBJECT_NAMES]
    segm_results = [[] for _ in GENEVAL_OBJECT_NAMES]
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:7] = True
    bbox_results[64] = np.array([[3, 2, 7, 5, 0.8], [0, 0, 1, 1, 0.1]], dtype=np.float32)
    segm_results[64] = [mask, np.zeros_like(mask)]

    detections = detections_from_mmdet((bbox_results, segm_results), list(GENEVAL_OBJECT_NAMES))

    assert [d.label for d in detections] == ["computer mouse", "computer mouse"]
    assert detections[0].box == (3.0, 2.0, 7.0, 5.0)
    assert detections[0].score == pytest.approx(0.8)
    np.testing.assert_array_equal(detections[0].mask, mask)


def test_detections_from_mmdet_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="2 classes but 80"):
        detections_from_mmdet([np.zeros((0, 5))] * 2, list(GENEVAL_OBJECT_NAMES))


def test_mmdet_detector_sends_bgr():
    seen = []

    def fake_inference(model, image):
        seen.append(image)
        return [np.zeros((0, 5), dtype=np.float32) for _ in GENEVAL_OBJECT_NAMES]

    # Built without __init__, which needs mmdet: only detect() is under test.
    detector = object.__new__(MMDetDetector)
    detector._inference = fake_inference
    detector.model = None
    detector.class_names = list(GENEVAL_OBJECT_NAMES)
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    image[..., 0] = 200  # red

    assert detector.detect([image]) == [[]]
    assert seen[0][0, 0].tolist() == [0, 0, 200]


def test_shapes_detector_adapter():
    from cogrpo.world.render import BACKGROUND

    image = np.full((32, 32, 3), BACKGROUND, dtype=np.uint8)
    image[8:20, 8:20] = PALETTE["red"]

    (detections,) = ShapesDetector().detect([image])

    assert [d.label for d in detections] == ["square"]
    assert detections[0].box == (8.0, 8.0, 20.0, 20.0)


def test_build_detector_rejects_unknown_name():
    with pytest.raises(ValueError, match="allowed: mask2former, mmdet, shapes"):
        build_detector("yolo")


# --------------------------------------------------------------------------- colour classifier


def test_color_prompts_are_official_templates():
    prompts = color_prompts("fire hydrant")

    assert len(prompts) == len(COLORS) == 10
    assert prompts[0] == [
        "a photo of a red fire hydrant",
        "a photo of a red-colored fire hydrant",
        "a photo of a red object",
    ]
    assert prompts[1][1] == "a photo of a orange-colored fire hydrant"
    assert [p[2] for p in prompts] == [f"a photo of a {c} object" for c in COLORS]


def test_object_crop_composites_over_grey():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    mask = np.zeros((12, 16), dtype=bool)
    mask[3:8, 2:5] = True
    mask[6:8, 5:9] = True  # an L shape, so its box contains background pixels too
    detection = Detection("cup", box=(2.4, 2.6, 8.6, 8.0), score=0.9, mask=mask)

    crop = np.asarray(object_crop(Image.fromarray(pixels), detection))

    # PIL rounds the box to (2, 3, 9, 8): columns 2..8 and rows 3..7.
    assert crop.shape == (5, 7, 3)
    window = mask[3:8, 2:9]
    np.testing.assert_array_equal(crop[window], pixels[3:8, 2:9][window])
    assert (crop[~window] == np.array(BACKGROUND_COLOR, dtype=np.uint8)).all()
    assert BACKGROUND_COLOR == (0x99, 0x99, 0x99)


def test_object_crop_without_mask_keeps_pixels():
    pixels = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3)

    crop = np.asarray(object_crop(Image.fromarray(pixels), Detection("cup", (1, 2, 4, 6), 0.9)))

    np.testing.assert_array_equal(crop, pixels[2:6, 1:4])


def test_object_crop_rejects_wrong_mask_size():
    detection = Detection("cup", (0, 0, 2, 2), 0.9, mask=np.ones((3, 3), dtype=bool))

    with pytest.raises(ValueError, match="does not match the image size"):
        object_crop(Image.new("RGB", (4, 4)), detection)


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None, force_quick_gelu=True)
    path = folder / "tiny_clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tiny_colors(tiny_clip_checkpoint) -> CLIPColorModel:
    return CLIPColorModel(TINY_CLIP_NAME, checkpoint=tiny_clip_checkpoint, device="cpu", batch_size=2)


def color_scene() -> tuple[np.ndarray, list[Detection]]:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    objects = []
    for x in (2, 20, 40):
        mask = np.zeros((40, 60), dtype=bool)
        mask[5:30, x : x + 15] = True
        objects.append(Detection("car", (x, 5, x + 15, 30), 0.9, mask))
    return image, objects


def reference_logits(colors: CLIPColorModel, image: np.ndarray, objects: list[Detection]) -> torch.Tensor:
    """Compute the logits step by step, one crop at a time, as CLIP_benchmark's classifier does."""
    with torch.no_grad():
        columns = []
        for texts in color_prompts("car"):
            features = colors.model.encode_text(colors.tokenizer(texts))
            features = features / features.norm(dim=-1, keepdim=True)
            mean = features.mean(dim=0)
            columns.append(mean / mean.norm())
        classifier = torch.stack(columns, dim=1)
        rows = []
        for obj in objects:
            crop = object_crop(Image.fromarray(image), obj)
            features = colors.model.encode_image(colors.transform(crop)[None])
            rows.append(100.0 * (features / features.norm(dim=-1, keepdim=True)) @ classifier)
    return torch.cat(rows)


def test_clip_colors_match_reference(tiny_colors):
    image, objects = color_scene()
    expected = reference_logits(tiny_colors, image, objects)

    logits = tiny_colors.logits(Image.fromarray(image), "car", objects)
    names = tiny_colors.bind(image)("car", objects)

    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert names == [COLORS[i] for i in expected.argmax(dim=1).tolist()]
    assert not tiny_colors.amp


def test_clip_class_embeddings_cached(tiny_colors):
    first = tiny_colors.class_embeddings("boat")
    second = tiny_colors.class_embeddings("boat")

    assert first is second
    assert tuple(first.shape) == (16, 10)
    torch.testing.assert_close(first.norm(dim=0), torch.ones(10), atol=1e-5, rtol=0)


def test_clip_missing_checkpoint_names_path(tmp_path):
    missing = tmp_path / "absent.pt"

    with pytest.raises(MissingWeightsError) as error:
        CLIPColorModel(checkpoint=missing)

    assert str(missing) in str(error.value)
    assert "--clip-weights PATH" in str(error.value)


def test_clip_hub_weights_fail_fast_offline(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fail)

    with pytest.raises(MissingWeightsError) as error:
        CLIPColorModel()

    message = str(error.value)
    assert "timm/vit_large_patch14_clip_224.openai" in message
    assert str(tmp_path / "empty-hub-cache" / "models--timm--vit_large_patch14_clip_224.openai") in message
    assert "HF_HUB_OFFLINE" in message
    assert "--clip-weights PATH" in message


# --------------------------------------------------------------------------- scorer


class FixedDetector:
    """A detector that returns preset detections, so the scorer runs the real rules on known input."""

    name = "fixed"
    comparable_with_official = False

    def __init__(self, detections: list[Detection]):
        self.detections = detections
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        return [list(self.detections) for _ in images]


def painted_scene() -> tuple[np.ndarray, list[Detection]]:
    """A grey image with a red car on the left, a blue dog on the right and a faint extra dog."""
    image = np.full((40, 80, 3), 128, dtype=np.uint8)
    car = np.zeros((40, 80), dtype=bool)
    car[10:30, 5:25] = True
    dog = np.zeros((40, 80), dtype=bool)
    dog[10:30, 50:70] = True
    image[car] = PALETTE["red"]
    image[dog] = PALETTE["blue"]
    detections = [
        Detection("car", (5, 10, 25, 30), 0.95, car),
        Detection("dog", (50, 10, 70, 30), 0.85, dog),
        Detection("dog", (0, 0, 4, 4), 0.2, np.zeros((40, 80), dtype=bool)),
    ]
    return image, detections


CASES = [
    ({"tag": "single_object", "include": [{"class": "car", "count": 1}], "prompt": "a photo of a car"}, 1.0),
    ({"tag": "two_object", "include": [{"class": "car", "count": 1}, {"class": "cat", "count": 1}],
      "prompt": "a photo of a car and a cat"}, 0.0),
    ({"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}, 1.0),
    ({"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}, 0.0),
    ({"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "car", "count": 1, "position": ["left of", 0]}],
      "prompt": "a photo of a car left of a dog"}, 1.0),
    ({"tag": "counting", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "dog", "count": 2}],
      "prompt": "a photo of one dog"}, 0.0),
]


@pytest.mark.parametrize(("entry", "expected"), CASES)
def test_scorer_strict_through_real_rules(entry, expected):
    image, detections = painted_scene()
    scorer = GenEvalScorer(detector=FixedDetector(detections), colors=PaletteColorModel())

    result = scorer.score_detailed([image], [entry["prompt"]], [entry])

    assert result.scores[0] == expected
    assert result.errors == [None]
    assert result.details[0]["correct"] is (expected == 1.0)
    assert result.details[0]["partial"] == pytest.approx(
        geneval_rules.partial_credit(geneval_rules.keep_detections(detections, entry["tag"]), entry,
                                     PaletteColorModel().bind(image))
    )


def test_scorer_reports_reason_and_partial_credit():
    image, detections = painted_scene()
    entry = CASES[3][0]
    strict = GenEvalScorer(detector=FixedDetector(detections), colors=PaletteColorModel())
    partial = PartialGenEvalScorer(detector=FixedDetector(detections), colors=PaletteColorModel())

    strict_result = strict.score_detailed([image], [entry["prompt"]], [entry])
    partial_result = partial.score_detailed([image], [entry["prompt"]], [entry])

    assert "expected red dog>=1, found 0 red; and 1 blue" in strict_result.details[0]["reason"]
    assert strict_result.details[0]["detected"] == "1 car, 1 dog"
    # Count credit 1, colour credit 0: the mean is 0.5.
    assert partial_result.scores[0] == pytest.approx(0.5)
    assert strict.name == "geneval"
    assert partial.name == "geneval-partial"


def test_scorer_counting_uses_high_threshold():
    image, detections = painted_scene()
    entry = {"tag": "counting", "include": [{"class": "car", "count": 1}], "exclude": [{"class": "car", "count": 2}],
             "prompt": "a photo of one car"}
    low = [Detection("car", d.box, 0.85, d.mask) if d.label == "car" else d for d in detections]

    passed = GenEvalScorer(detector=FixedDetector(detections), colors=PaletteColorModel()).score([image], ["p"], [entry])
    failed = GenEvalScorer(detector=FixedDetector(low), colors=PaletteColorModel()).score([image], ["p"], [entry])

    assert passed[0] == 1.0
    assert failed[0] == 0.0


def test_scorer_missing_metadata_is_per_image_error():
    image, detections = painted_scene()
    detector = FixedDetector(detections)
    scorer = GenEvalScorer(detector=detector, colors=PaletteColorModel())

    result = scorer.score_detailed([image, image], ["a", "b"], [None, CASES[0][0]])

    assert math.isnan(result.scores[0])
    assert "missing GenEval metadata" in result.errors[0]
    assert result.scores[1] == 1.0
    assert detector.calls == 1


def test_scorer_detector_failure_is_reported():
    class BrokenDetector(FixedDetector):
        def detect(self, images):
            raise RuntimeError("CUDA out of memory")

    image, _ = painted_scene()
    scorer = GenEvalScorer(detector=BrokenDetector([]), colors=PaletteColorModel())

    result = scorer.score_detailed([image], ["p"], [CASES[0][0]])

    assert math.isnan(result.scores[0])
    assert "detector failed: CUDA out of memory" in result.errors[0]


def test_scorer_classifies_each_clause_once(tiny_colors, monkeypatch):
    image, detections = painted_scene()
    entry = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                              {"class": "dog", "count": 1, "color": "blue"}],
             "prompt": "a photo of a red car and a blue dog"}
    calls = []
    encode_image = tiny_colors.model.encode_image
    monkeypatch.setattr(tiny_colors.model, "encode_image", lambda pixels: calls.append(len(pixels)) or encode_image(pixels))
    scorer = GenEvalScorer(detector=FixedDetector(detections), colors=tiny_colors)

    result = scorer.score_detailed([image], [entry["prompt"]], [entry])

    # One CLIP pass per colour clause, shared by the strict verdict and the partial credit.
    assert calls == [1, 1]
    assert result.errors == [None]
    assert result.scores[0] in (0.0, 1.0)


def test_scorer_default_colors_follow_detector():
    assert GenEvalScorer(detector="shapes").colors.name == "palette"
    assert GenEvalScorer(detector=FixedDetector([]), colors="palette").colors.name == "palette"
    with pytest.raises(MissingWeightsError, match="--clip-weights PATH"):
        GenEvalScorer(detector=FixedDetector([]))


# --------------------------------------------------------------------------- official files and the suite


def test_fetch_official_files_from_folder():
    require_official_files()

    metadata, names = fetch_official_files(OFFICIAL_DIR)

    assert metadata == OFFICIAL_DIR / "evaluation_metadata.jsonl"
    assert names == OFFICIAL_DIR / "object_names.txt"


def test_fetch_official_files_rejects_modified_copy(tmp_path):
    require_official_files()
    for name in ("evaluation_metadata.jsonl", "object_names.txt"):
        (tmp_path / name).write_bytes((OFFICIAL_DIR / name).read_bytes())
    with (tmp_path / "evaluation_metadata.jsonl").open("a") as handle:
        handle.write("\n")

    with pytest.raises(download.ChecksumMismatchError, match=OFFICIAL_METADATA_SHA256):
        fetch_official_files(tmp_path)


def test_fetch_official_files_offline_without_cache(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        fetch_official_files(cache_dir=tmp_path / "cache")

    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message
    assert "https://raw.githubusercontent.com/djghosh13/geneval/af4902f24d3ca90ebbb446dd9891a59e0f82725f/" in message
    assert geneval_rules.OFFICIAL_DATA_ENV in message


def test_fetch_official_files_downloads_and_verifies(tmp_path, monkeypatch):
    require_official_files()
    import io
    import urllib.request

    served = {
        "prompts/evaluation_metadata.jsonl": OFFICIAL_DIR / "evaluation_metadata.jsonl",
        "evaluation/object_names.txt": OFFICIAL_DIR / "object_names.txt",
    }
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        path = next(local for remote, local in served.items() if url.endswith(remote))
        return io.BytesIO(path.read_bytes())

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)

    metadata, names = fetch_official_files(cache_dir=tmp_path)
    again = fetch_official_files(cache_dir=tmp_path)

    assert len(requested) == 2
    assert again == (metadata, names)
    assert metadata.read_bytes() == served["prompts/evaluation_metadata.jsonl"].read_bytes()


def test_geneval_suite_official_layout(monkeypatch):
    require_official_files()
    from cogrpo.catalog import BENCHMARKS, REWARDS
    from cogrpo.evaluation.suites import BenchmarkSuite

    monkeypatch.setenv(geneval_rules.OFFICIAL_DATA_ENV, str(OFFICIAL_DIR))

    suite = BENCHMARKS.create("geneval", detector="shapes")

    assert isinstance(suite, BenchmarkSuite)
    assert suite.name == "geneval"
    assert len(suite.entries) == 553
    assert suite.images_per_prompt == 4
    assert suite.prompt_sha256 == OFFICIAL_METADATA_SHA256
    assert suite.categories == TAGS
    assert suite.info["detector"] == "shapes"
    assert suite.info["comparable_with_official"] is False
    assert suite.image_path(Path("root"), 552, 3) == Path("root/00552/samples/00003.png")
    scorer = suite.make_scorer()
    assert isinstance(scorer, GenEvalScorer)
    assert scorer.strict
    assert "geneval" in REWARDS
    assert "geneval-partial" in REWARDS


def test_geneval_suite_overall_is_mean_of_tags():
    from cogrpo.evaluation.suites import geneval_aggregate

    records = [{"tag": "single_object", "score": 1.0}] * 3 + [{"tag": "counting", "score": 0.0}]
    records += [{"tag": "colors", "score": 1.0}, {"tag": "colors", "score": None}]

    metrics = geneval_aggregate(records)

    assert metrics["single_object"] == 1.0
    assert metrics["counting"] == 0.0
    assert metrics["colors"] == 0.5
    assert metrics["overall"] == pytest.approx(0.5)


def test_geneval_suite_missing_weights_fail_before_generation(monkeypatch):
    require_official_files()
    from cogrpo.evaluation.suites import geneval_suite

    with pytest.raises(MissingWeightsError, match="--detector-weights PATH"):
        geneval_suite(data_dir=str(OFFICIAL_DIR))
    with pytest.raises(ValueError, match="unknown detector"):
        geneval_suite("yolo", data_dir=str(OFFICIAL_DIR))
    with pytest.raises(MissingWeightsError, match="--clip-weights PATH"):
        geneval_suite(detector_weights=str(OFFICIAL_DIR), data_dir=str(OFFICIAL_DIR))


def test_geneval_suite_mmdet_without_mmdet_names_extra():
    require_official_files()
    from cogrpo.evaluation.suites import geneval_suite

    try:
        import mmdet  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mmdet is installed")

    with pytest.raises(ImportError, match="geneval-mmdet"):
        geneval_suite("mmdet", data_dir=str(OFFICIAL_DIR))


def test_eval_cli_scores_geneval_layout(tmp_path, monkeypatch):
    require_official_files()
    from typer.testing import CliRunner

    from cogrpo.cli import app

    monkeypatch.setenv(geneval_rules.OFFICIAL_DATA_ENV, str(OFFICIAL_DIR))
    image_path = tmp_path / "images" / "00000" / "samples" / "00000.png"
    image_path.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (128, 128, 128)).save(image_path)

    result = CliRunner().invoke(app, ["eval", "--bench", "geneval", "--detector", "shapes", "--score-only",
                                      "--limit", "1", "--images-per-prompt", "1", "--out", str(tmp_path), "--device", "cpu"])

    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["benchmark"]["name"] == "geneval"
    assert saved["benchmark"]["detector"] == "shapes"
    assert saved["metrics"]["single_object"] == 0.0
    assert saved["n_failed"] == 0


def test_eval_cli_rejects_detector_for_other_bench():
    from typer.testing import CliRunner

    from cogrpo.cli import app

    result = CliRunner().invoke(app, ["eval", "--bench", "shapes", "--detector", "shapes", "--score-only"])

    assert result.exit_code == 2
    assert "--detector only applies to --bench geneval" in result.output

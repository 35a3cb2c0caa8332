"""Tests for the HPS v2 scorer, its preprocessing, checkpoint checks and the HPD v2 benchmark.

A tiny random open_clip model with the parameter names of ViT-H-14 replaces the real
2 GB checkpoint. ``tests/data/hps_golden.json`` contains the scores that hpsv2x's own
code gives for the same model and images (see ``tests/data/make_hps_golden.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cogrpo.legacy_pickle import UnsafeCheckpointError
from cogrpo.rewards import hps
from cogrpo.rewards.base import MissingWeightsError
from cogrpo.rewards.hps import (
    HPDV2_PROMPTS_PER_STYLE,
    HPDV2_STYLES,
    HPSCheckpointError,
    HPSScorer,
    HPSv20Scorer,
    MissingPromptsError,
    load_hpdv2_prompts,
    preprocess,
    preprocess_image,
    summarize_hpdv2,
)

open_clip = pytest.importorskip("open_clip")

DATA_DIR = Path(__file__).parent / "data"
GOLDEN_TOLERANCE = 1e-5
BATCH_TOLERANCE = 1e-6

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


def load_golden_module():
    spec = importlib.util.spec_from_file_location("make_hps_golden", DATA_DIR / "make_hps_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_fixtures = load_golden_module()


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """Keep the hub client offline and pointed at an empty cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


@pytest.fixture(scope="module")
def tiny_state_dict(tmp_path_factory) -> dict[str, torch.Tensor]:
    config_dir = tmp_path_factory.mktemp("open_clip_configs")
    open_clip.add_model_config(golden_fixtures.write_tiny_config(config_dir))
    model = open_clip.create_model(golden_fixtures.TINY_MODEL_NAME, pretrained=None)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return golden_fixtures.make_state_dict(shapes)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_state_dict, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hps") / "tiny_hps.pt"
    torch.save({"state_dict": tiny_state_dict}, path)
    return path


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> HPSScorer:
    return HPSScorer(checkpoint=tiny_checkpoint, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu", batch_size=3)


def save_checkpoint(folder: Path, content) -> Path:
    path = folder / "checkpoint.pt"
    torch.save(content, path)
    return path


def all_pairs() -> tuple[list[np.ndarray], list[str]]:
    """Return every (image, prompt) pair of the golden fixtures, image-major."""
    images = golden_fixtures.make_images()
    prompts = list(golden_fixtures.PROMPTS)
    return [image for image in images for _ in prompts], [prompt for _ in images for prompt in prompts]


# --------------------------------------------------------------------------- official parity


def test_golden_inputs_rebuilt_exactly(tiny_state_dict):
    golden = json.loads((DATA_DIR / "hps_golden.json").read_text())

    assert golden["config"] == golden_fixtures.TINY_CONFIG
    assert golden["prompts"] == list(golden_fixtures.PROMPTS)
    assert golden["state_dict_sha256"] == golden_fixtures.state_dict_sha256(tiny_state_dict)
    assert golden["images_sha256"] == golden_fixtures.images_sha256(golden_fixtures.make_images())


def test_golden_records_generating_script():
    golden = json.loads((DATA_DIR / "hps_golden.json").read_text())

    assert golden["how"] == (DATA_DIR / "make_hps_golden.py").read_text(), "regenerate hps_golden.json"
    assert golden["versions"]["hpsv2x"] == "1.2.0"


def test_scores_match_official_hpsv2(scorer):
    golden = json.loads((DATA_DIR / "hps_golden.json").read_text())
    images, prompts = all_pairs()

    scores = scorer.score(images, prompts).reshape(len(golden["image_shapes"]), len(golden["prompts"]))

    np.testing.assert_allclose(scores, np.array(golden["scores"]), rtol=0, atol=GOLDEN_TOLERANCE)


def test_golden_scores_depend_on_image():
    golden = np.array(json.loads((DATA_DIR / "hps_golden.json").read_text())["scores"])

    # Each prompt's column must vary across images, or the parity test would not
    # notice wrong preprocessing.
    assert np.all(golden.max(axis=0) - golden.min(axis=0) > 1e-2)


# --------------------------------------------------------------------------- batching


def test_batched_scores_equal_single(scorer):
    images, prompts = all_pairs()

    batched = scorer.score(images, prompts)
    single = np.array([scorer.score([image], [prompt])[0] for image, prompt in zip(images, prompts)])

    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, rtol=0, atol=BATCH_TOLERANCE)


def test_score_is_cosine_in_bounds(scorer):
    images, prompts = all_pairs()

    scores = scorer.score(images, prompts)

    assert np.all(np.isfinite(scores))
    assert np.all(np.abs(scores) <= 1.0)
    assert scorer.bounds == (-1.0, 1.0)


def test_unreadable_image_gets_nan(scorer):
    images = [np.zeros((0, 5, 3), dtype=np.uint8), golden_fixtures.make_images()[0]]

    result = scorer.score_detailed(images, ["a", "b"])

    assert math.isnan(result.scores[0])
    assert "empty image" in result.errors[0]
    assert np.isfinite(result.scores[1])


# --------------------------------------------------------------------------- preprocessing


def reference_preprocess(rgb: np.ndarray, size: int = 224) -> torch.Tensor:
    """Hand-written HPS eval transform on an (H, W, 3) uint8 array."""
    pixels = torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1) / 255.0
    height, width = rgb.shape[:2]
    if max(height, width) != size:
        scale = size / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        pixels = F.interpolate(pixels[None], size=(height, width), mode="bicubic", align_corners=False, antialias=True)[0]
    canvas = torch.zeros(3, size, size)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[:, top : top + height, left : left + width] = pixels
    return (canvas - MEAN) / STD


def gradient_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_preprocess_non_square_matches_reference():
    array = gradient_array(200, 320)

    tensor = preprocess_image(Image.fromarray(array))

    assert tensor.shape == (3, 224, 224)
    torch.testing.assert_close(tensor, reference_preprocess(array), rtol=0, atol=1e-5)
    # Landscape: 320 -> 224 wide, 200 -> 140 high, so 42 rows of padding above and below.
    padding_value = (0.0 - MEAN) / STD
    torch.testing.assert_close(tensor[:, :42, :], padding_value.expand(3, 42, 224))
    torch.testing.assert_close(tensor[:, -42:, :], padding_value.expand(3, 42, 224))


def test_preprocess_rgba_drops_alpha():
    rgba = np.concatenate([gradient_array(90, 60, seed=1), np.full((90, 60, 1), 17, dtype=np.uint8)], axis=2)

    tensor = preprocess_image(Image.fromarray(rgba))

    torch.testing.assert_close(tensor, reference_preprocess(rgba[..., :3]), rtol=0, atol=1e-5)


def test_preprocess_greyscale_repeats_channel():
    grey = gradient_array(50, 70, seed=2)[..., 0]

    tensor = preprocess_image(Image.fromarray(grey))

    rgb = np.repeat(grey[..., None], 3, axis=2)
    torch.testing.assert_close(tensor, reference_preprocess(rgb), rtol=0, atol=1e-5)


def test_preprocess_single_pixel_fills_square():
    pixel = np.array([[[200, 30, 90]]], dtype=np.uint8)

    tensor = preprocess_image(pixel)

    expected = ((torch.tensor([200, 30, 90]) / 255.0).view(3, 1, 1) - MEAN) / STD
    torch.testing.assert_close(tensor, expected.expand(3, 224, 224), rtol=0, atol=1e-5)
    torch.testing.assert_close(tensor, reference_preprocess(pixel), rtol=0, atol=1e-5)


def test_preprocess_model_size_is_not_resized():
    array = gradient_array(224, 224, seed=3)

    tensor = preprocess_image(array)

    expected = (torch.tensor(array, dtype=torch.float32).permute(2, 0, 1) / 255.0 - MEAN) / STD
    torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)


def test_preprocess_pads_unresized_non_square():
    # The official transform leaves this 224 x 160 image unpadded (and its ViT then
    # fails); it is padded here so that it can be scored.
    array = gradient_array(160, 224, seed=4)

    tensor = preprocess_image(array)

    assert tensor.shape == (3, 224, 224)
    torch.testing.assert_close(tensor, reference_preprocess(array), rtol=0, atol=1e-6)


def test_preprocess_thin_image_keeps_one_pixel():
    tensor = preprocess_image(gradient_array(2000, 3, seed=5))

    assert tensor.shape == (3, 224, 224)
    assert torch.isfinite(tensor).all()


def test_preprocess_stacks_batch():
    arrays = [gradient_array(30, 40, seed=6), gradient_array(224, 224, seed=7)]

    batch = preprocess(arrays)

    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch[0], preprocess_image(arrays[0]))
    assert preprocess([]).shape == (0, 3, 224, 224)


# --------------------------------------------------------------------------- checkpoint loading


def test_checkpoint_wrong_key_rejected(tiny_state_dict, tmp_path):
    state_dict = dict(tiny_state_dict)
    state_dict["visual.ln_post.gamma"] = state_dict.pop("visual.ln_post.weight")
    path = save_checkpoint(tmp_path, {"state_dict": state_dict})

    with pytest.raises(HPSCheckpointError) as error:
        HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")

    message = str(error.value)
    assert "1 missing keys: visual.ln_post.weight" in message
    assert "1 unexpected keys: visual.ln_post.gamma" in message
    assert str(path) in message
    assert golden_fixtures.TINY_MODEL_NAME in message


def test_checkpoint_wrong_shape_rejected(tiny_state_dict, tmp_path):
    state_dict = dict(tiny_state_dict)
    state_dict["text_projection"] = torch.zeros(64, 16, dtype=torch.float16)
    path = save_checkpoint(tmp_path, {"state_dict": state_dict})

    with pytest.raises(HPSCheckpointError, match=r"text_projection \(checkpoint \(64, 16\), model \(64, 32\)\)"):
        HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")


def test_checkpoint_module_prefix_explained(tiny_state_dict, tmp_path):
    state_dict = {f"module.{name}": tensor for name, tensor in tiny_state_dict.items()}
    path = save_checkpoint(tmp_path, {"state_dict": state_dict})

    with pytest.raises(HPSCheckpointError, match="DistributedDataParallel") as error:
        HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")

    assert f"and {len(state_dict) - hps.MAX_KEYS_IN_MESSAGE} more" in str(error.value)


def test_checkpoint_without_tensors_rejected(tmp_path):
    path = save_checkpoint(tmp_path, {"epoch": 3})

    with pytest.raises(HPSCheckpointError, match="expected a dict with a 'state_dict' entry of tensors, found keys epoch"):
        HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")


def test_checkpoint_state_dict_with_objects_rejected(tmp_path):
    path = save_checkpoint(tmp_path, {"state_dict": {"logit_scale": torch.zeros(()), "step": 3}})

    with pytest.raises(HPSCheckpointError, match="not tensors: step"):
        HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")


def test_checkpoint_bare_state_dict_accepted(tiny_state_dict, tmp_path, scorer):
    path = save_checkpoint(tmp_path, dict(tiny_state_dict))
    images, prompts = all_pairs()

    bare = HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")

    np.testing.assert_array_equal(bare.score(images[:3], prompts[:3]), scorer.score(images[:3], prompts[:3]))


def test_checkpoint_with_objects_needs_trust_pickle(tiny_state_dict, tmp_path):
    path = save_checkpoint(tmp_path, {"state_dict": tiny_state_dict, "args": argparse.Namespace(lr=1e-5)})

    with pytest.raises(UnsafeCheckpointError):
        HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")
    trusted = HPSScorer(checkpoint=path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu", trust_pickle=True)

    assert trusted.checkpoint_path == path


def test_checkpoint_folder_uses_release_file_name(tiny_state_dict, tmp_path):
    torch.save({"state_dict": tiny_state_dict}, tmp_path / "HPS_v2_compressed.pt")

    scorer_v20 = HPSv20Scorer(checkpoint=tmp_path, model_name=golden_fixtures.TINY_MODEL_NAME, device="cpu")

    assert scorer_v20.checkpoint_path == tmp_path / "HPS_v2_compressed.pt"
    assert scorer_v20.name == "hpsv2.0"
    assert scorer_v20.version == "v2.0"


# --------------------------------------------------------------------------- missing weights


def forbid_model_build(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")

    monkeypatch.setattr(open_clip, "create_model", fail)


@pytest.mark.parametrize(("scorer_class", "filename"), [(HPSScorer, "HPS_v2.1_compressed.pt"), (HPSv20Scorer, "HPS_v2_compressed.pt")])
def test_missing_hub_weights_fail_fast_offline(monkeypatch, tmp_path, scorer_class, filename):
    forbid_model_build(monkeypatch)

    with pytest.raises(MissingWeightsError) as error:
        scorer_class()

    message = str(error.value)
    assert "xswu/HPSv2" in message
    assert filename in message
    assert hps.HPS_REVISION in message
    assert str(tmp_path / "empty-hub-cache" / "models--xswu--HPSv2") in message
    assert "HF_HUB_OFFLINE" in message
    assert "HF_HOME" in message
    assert "checkpoint=PATH" in message


def test_missing_local_checkpoint_names_path(monkeypatch, tmp_path):
    forbid_model_build(monkeypatch)
    missing = tmp_path / "nowhere" / "hps.pt"

    with pytest.raises(MissingWeightsError) as error:
        HPSScorer(checkpoint=missing)

    assert str(missing) in str(error.value)
    assert "xswu/HPSv2" in str(error.value)
    assert "Pass the path of that file" in str(error.value)


def test_invalid_arguments_rejected(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown HPS version 'v3'. Choose one of v2.0, v2.1."):
        HPSScorer(version="v3", checkpoint=tiny_checkpoint)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        HPSScorer(checkpoint=tiny_checkpoint, batch_size=0)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        HPSScorer(checkpoint=tiny_checkpoint, device="cpu", autocast=True)


def test_weights_are_pinned():
    for version, spec in hps.HPS_WEIGHTS.items():
        assert len(spec.revision) == 40, version
        assert int(spec.revision, 16) >= 0
        assert len(spec.sha256) == 64
    assert HPSScorer.weights[0].filename == "HPS_v2.1_compressed.pt"
    assert HPSv20Scorer.weights[0].filename == "HPS_v2_compressed.pt"
    assert len(hps.HPDV2_REVISION) == 40


# --------------------------------------------------------------------------- HPD v2 prompts


def write_prompt_files(folder: Path, count: int = HPDV2_PROMPTS_PER_STYLE) -> dict[str, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for style in HPDV2_STYLES:
        prompts = [f"{style} prompt {index}" for index in range(count)]
        (folder / f"{style}.json").write_text(json.dumps(prompts))
        written[style] = prompts
    return written


def test_prompts_load_from_local_folder(tmp_path):
    written = write_prompt_files(tmp_path)

    prompts = load_hpdv2_prompts(local_dir=tmp_path)

    assert list(prompts) == list(HPDV2_STYLES)
    assert prompts == written


def test_prompts_load_from_benchmark_subfolder(tmp_path):
    written = write_prompt_files(tmp_path / "benchmark")

    prompts = load_hpdv2_prompts(["photo", "anime"], local_dir=tmp_path)

    assert list(prompts) == ["photo", "anime"]
    assert prompts["photo"] == written["photo"]


def test_prompts_wrong_count_rejected(tmp_path):
    write_prompt_files(tmp_path, count=799)

    with pytest.raises(ValueError, match="expected 800 prompts, found 799"):
        load_hpdv2_prompts(["anime"], local_dir=tmp_path)


def test_prompts_not_string_list_rejected(tmp_path):
    (tmp_path / "photo.json").write_text(json.dumps({"prompts": []}))

    with pytest.raises(ValueError, match="list of prompt strings"):
        load_hpdv2_prompts(["photo"], local_dir=tmp_path)


def test_prompts_invalid_json_rejected(tmp_path):
    (tmp_path / "photo.json").write_text("[not json")

    with pytest.raises(ValueError, match="invalid JSON"):
        load_hpdv2_prompts(["photo"], local_dir=tmp_path)


def test_prompts_unknown_style_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown HPD v2 styles"):
        load_hpdv2_prompts(["sketch"], local_dir=tmp_path)


def test_prompts_missing_local_file(tmp_path):
    with pytest.raises(MissingPromptsError) as error:
        load_hpdv2_prompts(["paintings"], local_dir=tmp_path)

    assert str(tmp_path / "paintings.json") in str(error.value)
    assert "zhwang/HPDv2" in str(error.value)


def test_prompts_missing_offline_fail_fast(tmp_path):
    with pytest.raises(MissingPromptsError) as error:
        load_hpdv2_prompts(["anime"])

    message = str(error.value)
    assert "zhwang/HPDv2" in message
    assert hps.HPDV2_REVISION in message
    assert str(tmp_path / "empty-hub-cache" / "datasets--zhwang--HPDv2") in message
    assert "local_dir" in message


def test_prompts_checksum_mismatch_rejected(tmp_path, monkeypatch):
    write_prompt_files(tmp_path)
    monkeypatch.setitem(hps.HPDV2_PROMPT_SHA256, "anime", "0" * 64)

    with pytest.raises(ValueError, match="does not match the expected"):
        load_hpdv2_prompts(["anime"], local_dir=tmp_path)


# --------------------------------------------------------------------------- HPD v2 aggregation


def test_summary_full_styles_match_hand_computation():
    rng = np.random.default_rng(0)
    raw = {style: rng.uniform(0.2, 0.3, size=800) for style in HPDV2_STYLES}

    summary = summarize_hpdv2(raw)

    for style, values in raw.items():
        chunk_means = (values * 100).reshape(10, 80).mean(axis=1)
        result = summary.styles[style]
        assert result.count == 800
        assert len(result.chunk_means) == 10
        assert result.mean == pytest.approx(chunk_means.mean(), abs=1e-9)
        assert result.mean == pytest.approx(values.mean() * 100, abs=1e-9)
        assert result.std == pytest.approx(np.sqrt(np.mean((chunk_means - chunk_means.mean()) ** 2)), abs=1e-9)
    assert summary.average == pytest.approx(np.concatenate(list(raw.values())).mean() * 100, abs=1e-9)
    assert summary.count == 3200


def test_summary_drops_nan_and_keeps_partial_chunk():
    values = np.full(85, 0.25)
    values[:5] = np.nan
    values[80:] = 0.35

    summary = summarize_hpdv2({"photo": values, "anime": [0.1, 0.3]})

    photo = summary.styles["photo"]
    assert photo.count == 80
    # After dropping 5 NaN, the 80 remaining scores form one chunk: 75 x 25 and 5 x 35.
    assert photo.chunk_means == pytest.approx(((75 * 25 + 5 * 35) / 80,))
    assert photo.std == 0.0
    assert summary.styles["anime"].mean == pytest.approx(20.0)
    assert summary.average == pytest.approx((75 * 25 + 5 * 35 + 10 + 30) / 82)


def test_summary_average_weights_images_not_styles():
    summary = summarize_hpdv2({"anime": [0.1] * 3, "photo": [0.4]})

    assert summary.average == pytest.approx(17.5)
    assert summary.as_dict()["styles"]["photo"]["mean"] == pytest.approx(40.0)


def test_summary_rejects_empty_inputs():
    with pytest.raises(ValueError, match="no styles"):
        summarize_hpdv2({})
    with pytest.raises(ValueError, match="'photo' has no scored images"):
        summarize_hpdv2({"photo": [float("nan")]})
    with pytest.raises(ValueError, match="chunk_size"):
        summarize_hpdv2({"photo": [0.2]}, chunk_size=0)

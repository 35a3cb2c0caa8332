"""Tests for the CLIPScore scorer on a tiny random open_clip model loaded from a local file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogrpo.rewards import clip_score
from cogrpo.rewards.base import MissingWeightsError
from cogrpo.rewards.clip_score import CLIPScoreScorer

open_clip = pytest.importorskip("open_clip")

TINY_MODEL_NAME = "clip-score-tiny-test"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 56, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red square", "a photo of a dog", "blue sky over hills", "an empty room"]


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """Keep the hub client offline and pointed at an empty cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    config_path = folder / f"{TINY_MODEL_NAME}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None)
    path = folder / "tiny_clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> CLIPScoreScorer:
    return CLIPScoreScorer(model_name=TINY_MODEL_NAME, checkpoint=tiny_checkpoint, device="cpu", batch_size=3)


def make_images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = [(56, 56), (40, 90), (120, 30), (1, 1)]
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for height, width in shapes]


def reference_cosines(checkpoint: Path, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
    """Return the cosines from open_clip's own model and transform, one pair at a time."""
    model, _, transform = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
    cosines = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            image_features = model.encode_image(transform(Image.fromarray(image))[None])
            text_features = model.encode_text(tokenizer([prompt]))
            cosines.append(torch.nn.functional.cosine_similarity(image_features, text_features).item())
    return np.array(cosines)


def test_score_is_clamped_scaled_cosine(scorer, tiny_checkpoint):
    images = make_images()

    scores = scorer.score(images, PROMPTS)

    expected = np.maximum(100.0 * reference_cosines(tiny_checkpoint, images, PROMPTS), 0.0)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)


def test_negative_cosine_scores_zero(scorer, tiny_checkpoint, monkeypatch):
    images = make_images()
    cosines = reference_cosines(tiny_checkpoint, images, PROMPTS)
    encode_text = scorer.model.encode_text
    # Negating the text features flips every cosine, so both signs are exercised.
    monkeypatch.setattr(scorer.model, "encode_text", lambda tokens, normalize=False: -encode_text(tokens, normalize=normalize))

    flipped = scorer.score(images, PROMPTS)

    np.testing.assert_allclose(flipped, np.maximum(-100.0 * cosines, 0.0), rtol=0, atol=1e-4)
    assert np.all(flipped >= 0.0)
    assert np.any(flipped == 0.0)


def test_batched_scores_equal_single(scorer):
    images = make_images() * 2
    prompts = PROMPTS + PROMPTS[::-1]

    batched = scorer.score(images, prompts)
    single = np.array([scorer.score([image], [prompt])[0] for image, prompt in zip(images, prompts)])

    # 1e-6 on the cosine is 1e-4 on the x100 score.
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4)


def test_scorer_metadata(scorer, tiny_checkpoint):
    assert scorer.name == "clip"
    assert scorer.bounds == (0.0, 100.0)
    assert scorer.higher_is_better
    assert scorer.version == f"{TINY_MODEL_NAME}/{tiny_checkpoint.name}"


def forbid_model_build(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")

    monkeypatch.setattr(open_clip, "create_model", fail)


def test_default_weights_fail_fast_offline(monkeypatch, tmp_path):
    forbid_model_build(monkeypatch)

    with pytest.raises(MissingWeightsError) as error:
        CLIPScoreScorer()

    message = str(error.value)
    assert "timm/vit_large_patch14_clip_224.openai" in message
    assert "'openai'" in message
    assert str(tmp_path / "empty-hub-cache" / "models--timm--vit_large_patch14_clip_224.openai") in message
    assert "HF_HUB_OFFLINE" in message
    assert "CLIPScoreScorer(checkpoint=PATH)" in message


def test_missing_local_checkpoint_names_path(monkeypatch, tmp_path):
    forbid_model_build(monkeypatch)
    missing = tmp_path / "absent.pt"

    with pytest.raises(MissingWeightsError) as error:
        CLIPScoreScorer(checkpoint=missing)

    assert str(missing) in str(error.value)
    assert "open_clip checkpoint file" in str(error.value)


def test_default_tag_uses_quick_gelu(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    class Stop(Exception):
        pass

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise Stop

    monkeypatch.setattr(open_clip, "create_model", record)

    with pytest.raises(Stop):
        CLIPScoreScorer()

    (args, kwargs), = calls
    assert args == ("ViT-L-14",)
    assert kwargs["pretrained"] == "openai"
    assert kwargs["force_quick_gelu"] is True


def test_download_failure_becomes_missing_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def fail(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': offline")

    monkeypatch.setattr(open_clip, "create_model", fail)

    with pytest.raises(MissingWeightsError, match=r"CLIPScoreScorer\(checkpoint=PATH\)"):
        CLIPScoreScorer()


def test_invalid_arguments_rejected(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown open_clip weights 'nope'"):
        CLIPScoreScorer(pretrained="nope")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        CLIPScoreScorer(checkpoint=tiny_checkpoint, model_name=TINY_MODEL_NAME, batch_size=0)
    with pytest.raises(ValueError, match="pretrained tag or a checkpoint"):
        CLIPScoreScorer(pretrained=None)


def test_default_weights_spec_names_hub_repo():
    spec = clip_score.DEFAULT_WEIGHTS

    assert spec.repo_id == "timm/vit_large_patch14_clip_224.openai"
    # No command has an option for a local CLIP score checkpoint; only the Python API takes one.
    assert spec.option is None

"""ImageReward adapter: parity with the official code, checkpoint checks, inputs and weight lookup.

``data/imagereward_golden.json`` contains scores that the official ImageReward code
(THUDM/ImageReward at commit c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb) gave for a tiny
seeded model. Its ``how`` field has the script, and ``versions`` the packages it ran
with. These tests rebuild the same weights, vocabulary and images from its ``recipe``,
load them by local path and compare.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cogrpo.rewards.base import MissingWeightsError  # noqa: E402
from cogrpo.rewards.imagereward import (  # noqa: E402
    CHECKPOINT_SPEC,
    CLIP_MEAN,
    CLIP_STD,
    MAX_TEXT_TOKENS,
    POSITION_IDS_KEY,
    REWARD_MEAN,
    REWARD_STD,
    TOKENIZER_SPEC,
    CheckpointMismatchError,
    ImageRewardConfig,
    ImageRewardScorer,
    check_checkpoint,
    expected_checkpoint_shapes,
    load_checkpoint,
    preprocess_image,
    tokenize,
)

GOLDEN_PATH = Path(__file__).parent / "data" / "imagereward_golden.json"
TOLERANCE = 1e-5
# Size of ImageReward.pt in hub repo THUDM/ImageReward, as its file listing gives it.
PUBLISHED_CHECKPOINT_BYTES = 1_786_880_927


# --------------------------------------------------------------------------- golden recipe
# make_image, make_tensor and state_dict_digest repeat the golden script (the "how"
# field of the golden file) so that the same numpy draws rebuild the same inputs.


def make_image(rng: np.random.Generator, spec: dict) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[spec["mode"]]
    rows = math.ceil(spec["height"] / spec["cell"])
    cols = math.ceil(spec["width"] / spec["cell"])
    grid = rng.integers(0, 256, size=(rows, cols, channels))
    array = np.repeat(np.repeat(grid, spec["cell"], axis=0), spec["cell"], axis=1)[: spec["height"], : spec["width"]]
    array = np.clip(array + rng.integers(-8, 9, size=array.shape), 0, 255).astype(np.uint8)
    if spec["mode"] == "L":
        array = array[..., 0]
    return Image.fromarray(array)


def make_tensor(rng: np.random.Generator, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    draws = rng.standard_normal(shape)
    name = key.rsplit(".", 1)[-1]
    module = key.split(".")[-2]
    if name in ("cls_token", "pos_embed"):
        values = 0.5 * draws
    elif "norm" in module.lower() and name == "weight":
        values = 1.0 + 0.1 * draws
    elif name == "bias":
        values = 0.1 * draws
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = draws / math.sqrt(fan_in)
    return torch.from_numpy(values.astype(np.float32))


def state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- official key names
# The keys of an official ImageReward.pt, written out for the tiny golden config. Its ViT
# has width 32, 2 blocks and 196 patches. Its text encoder has width 32, 2 layers, a
# feed-forward width of 64, 123 tokens and 40 positions, and both projections map to 256.
# The full model has the same names with 24 ViT blocks and 12 text layers.

VISION_WIDTH, TEXT_WIDTH, FEED_FORWARD, VOCAB_SIZE, POSITIONS = 32, 32, 64, 123, 40

TINY_TOP_LEVEL_KEYS = {
    "blip.visual_encoder.cls_token": (1, 1, VISION_WIDTH),
    "blip.visual_encoder.pos_embed": (1, 197, VISION_WIDTH),
    "blip.visual_encoder.patch_embed.proj.weight": (VISION_WIDTH, 3, 16, 16),
    "blip.visual_encoder.patch_embed.proj.bias": (VISION_WIDTH,),
    "blip.visual_encoder.norm.weight": (VISION_WIDTH,),
    "blip.visual_encoder.norm.bias": (VISION_WIDTH,),
    "blip.text_encoder.embeddings.position_ids": (1, POSITIONS),
    "blip.text_encoder.embeddings.word_embeddings.weight": (VOCAB_SIZE, TEXT_WIDTH),
    "blip.text_encoder.embeddings.position_embeddings.weight": (POSITIONS, TEXT_WIDTH),
    "blip.text_encoder.embeddings.LayerNorm.weight": (TEXT_WIDTH,),
    "blip.text_encoder.embeddings.LayerNorm.bias": (TEXT_WIDTH,),
    "blip.vision_proj.weight": (256, VISION_WIDTH),
    "blip.vision_proj.bias": (256,),
    "blip.text_proj.weight": (256, TEXT_WIDTH),
    "blip.text_proj.bias": (256,),
    "mlp.layers.0.weight": (1024, TEXT_WIDTH),
    "mlp.layers.0.bias": (1024,),
    "mlp.layers.2.weight": (128, 1024),
    "mlp.layers.2.bias": (128,),
    "mlp.layers.4.weight": (64, 128),
    "mlp.layers.4.bias": (64,),
    "mlp.layers.6.weight": (16, 64),
    "mlp.layers.6.bias": (16,),
    "mlp.layers.7.weight": (1, 16),
    "mlp.layers.7.bias": (1,),
}
TINY_VISION_BLOCK_KEYS = {
    "norm1.weight": (VISION_WIDTH,),
    "norm1.bias": (VISION_WIDTH,),
    "attn.qkv.weight": (3 * VISION_WIDTH, VISION_WIDTH),
    "attn.qkv.bias": (3 * VISION_WIDTH,),
    "attn.proj.weight": (VISION_WIDTH, VISION_WIDTH),
    "attn.proj.bias": (VISION_WIDTH,),
    "norm2.weight": (VISION_WIDTH,),
    "norm2.bias": (VISION_WIDTH,),
    "mlp.fc1.weight": (4 * VISION_WIDTH, VISION_WIDTH),
    "mlp.fc1.bias": (4 * VISION_WIDTH,),
    "mlp.fc2.weight": (VISION_WIDTH, 4 * VISION_WIDTH),
    "mlp.fc2.bias": (VISION_WIDTH,),
}
TINY_TEXT_LAYER_KEYS = {
    "attention.self.query.weight": (TEXT_WIDTH, TEXT_WIDTH),
    "attention.self.query.bias": (TEXT_WIDTH,),
    "attention.self.key.weight": (TEXT_WIDTH, TEXT_WIDTH),
    "attention.self.key.bias": (TEXT_WIDTH,),
    "attention.self.value.weight": (TEXT_WIDTH, TEXT_WIDTH),
    "attention.self.value.bias": (TEXT_WIDTH,),
    "attention.output.dense.weight": (TEXT_WIDTH, TEXT_WIDTH),
    "attention.output.dense.bias": (TEXT_WIDTH,),
    "attention.output.LayerNorm.weight": (TEXT_WIDTH,),
    "attention.output.LayerNorm.bias": (TEXT_WIDTH,),
    "crossattention.self.query.weight": (TEXT_WIDTH, TEXT_WIDTH),
    "crossattention.self.query.bias": (TEXT_WIDTH,),
    "crossattention.self.key.weight": (TEXT_WIDTH, VISION_WIDTH),
    "crossattention.self.key.bias": (TEXT_WIDTH,),
    "crossattention.self.value.weight": (TEXT_WIDTH, VISION_WIDTH),
    "crossattention.self.value.bias": (TEXT_WIDTH,),
    "crossattention.output.dense.weight": (TEXT_WIDTH, TEXT_WIDTH),
    "crossattention.output.dense.bias": (TEXT_WIDTH,),
    "crossattention.output.LayerNorm.weight": (TEXT_WIDTH,),
    "crossattention.output.LayerNorm.bias": (TEXT_WIDTH,),
    "intermediate.dense.weight": (FEED_FORWARD, TEXT_WIDTH),
    "intermediate.dense.bias": (FEED_FORWARD,),
    "output.dense.weight": (TEXT_WIDTH, FEED_FORWARD),
    "output.dense.bias": (TEXT_WIDTH,),
    "output.LayerNorm.weight": (TEXT_WIDTH,),
    "output.LayerNorm.bias": (TEXT_WIDTH,),
}


def tiny_official_keys() -> dict[str, tuple[int, ...]]:
    keys = dict(TINY_TOP_LEVEL_KEYS)
    for block in range(2):
        for suffix, shape in TINY_VISION_BLOCK_KEYS.items():
            keys[f"blip.visual_encoder.blocks.{block}.{suffix}"] = shape
    for layer in range(2):
        for suffix, shape in TINY_TEXT_LAYER_KEYS.items():
            keys[f"blip.text_encoder.encoder.layer.{layer}.{suffix}"] = shape
    return keys


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_config(golden) -> ImageRewardConfig:
    return ImageRewardConfig.from_med_config(golden["recipe"]["med_config"], **golden["recipe"]["vision"])


@pytest.fixture(scope="module")
def tiny_state_dict(golden) -> dict[str, torch.Tensor]:
    shapes = golden["official_state_dict_shapes"]
    rng = np.random.default_rng(golden["recipe"]["weights_seed"])
    return {key: make_tensor(rng, key, tuple(shapes[key])) for key in sorted(shapes)}


@pytest.fixture(scope="module")
def tiny_files(golden, tiny_state_dict, tmp_path_factory) -> tuple[Path, Path]:
    """Write the tiny ImageReward.pt and vocab.txt and return (checkpoint file, vocabulary folder)."""
    folder = tmp_path_factory.mktemp("imagereward")
    checkpoint = folder / "ImageReward.pt"
    torch.save(tiny_state_dict, checkpoint)
    vocab_folder = folder / "vocab"
    vocab_folder.mkdir()
    (vocab_folder / "vocab.txt").write_text("\n".join(golden["recipe"]["vocab"]) + "\n", encoding="utf-8")
    return checkpoint, vocab_folder


@pytest.fixture(scope="module")
def scorer(tiny_files, tiny_config) -> ImageRewardScorer:
    checkpoint, vocab_folder = tiny_files
    return ImageRewardScorer(checkpoint, vocab_folder, config=tiny_config, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def golden_images(golden) -> dict[str, Image.Image]:
    rng = np.random.default_rng(golden["recipe"]["images_seed"])
    return {spec["name"]: make_image(rng, spec) for spec in golden["recipe"]["images"]}


def official_order_transform(image: Image.Image) -> torch.Tensor:
    """The official torchvision pipeline: resize, centre crop, RGB, ToTensor, normalise."""
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            lambda picture: picture.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    return pipeline(image)


# --------------------------------------------------------------------------- golden parity


def test_recipe_rebuilds_golden_weights(golden, tiny_state_dict):
    assert state_dict_digest(tiny_state_dict) == golden["state_dict_sha256"]


def test_official_keys_match_listed_facts(golden):
    recorded = {key: tuple(shape) for key, shape in golden["official_state_dict_shapes"].items()}
    listed = tiny_official_keys()
    assert sorted(set(recorded) - set(listed)) == []
    assert sorted(set(listed) - set(recorded)) == []
    assert recorded == listed


def test_every_official_key_maps(tiny_config):
    expected = expected_checkpoint_shapes(tiny_config)
    listed = tiny_official_keys()
    assert set(listed) - set(expected) == {POSITION_IDS_KEY}
    assert set(expected) - set(listed) == set()
    for key, shape in expected.items():
        assert shape == listed[key], key


def test_full_layout_fits_published_file_size():
    shapes = expected_checkpoint_shapes(ImageRewardConfig())
    entries = len(shapes) + 1  # with the int64 position ids
    tensor_bytes = 4 * sum(math.prod(shape) for shape in shapes.values()) + 8 * 512
    overhead_per_entry = (PUBLISHED_CHECKPOINT_BYTES - tensor_bytes) / entries
    # torch.save spends a few hundred bytes per entry on zip headers and the pickled key.
    assert 200 < overhead_per_entry < 500, overhead_per_entry


def test_scores_match_official(golden, scorer, golden_images):
    rows = [row for row in golden["score"] if row["image"] != "rgba"]
    images = [golden_images[row["image"]] for row in rows]
    scores = scorer.score(images, [row["prompt"] for row in rows])
    for row, score in zip(rows, scores, strict=True):
        assert score == pytest.approx(row["score"], abs=TOLERANCE), row["image"]


def test_rgba_official_order_matches_official(golden, scorer, golden_images):
    row = next(row for row in golden["score"] if row["image"] == "rgba")
    rewards, _ = scorer.rewards(scorer.preprocess([golden_images["rgba"]]), [row["prompt"]])
    assert float(rewards[0]) == pytest.approx(row["score"], abs=TOLERANCE)


def test_inference_rank_matches_official(golden, scorer, golden_images):
    expected = golden["inference_rank"]
    images = [golden_images[spec["name"]] for spec in golden["recipe"]["images"]]
    rewards, _ = scorer.rewards(scorer.preprocess(images), [expected["prompt"]] * len(images))
    assert rewards.tolist() == pytest.approx(expected["rewards"], abs=TOLERANCE)
    ranking = (torch.argsort(torch.argsort(rewards, descending=True)) + 1).tolist()
    assert ranking == expected["ranking"]


def test_tokenization_matches_official(golden, scorer):
    prompts = [row["prompt"] for row in golden["score"]]
    input_ids, attention_mask = tokenize(scorer.tokenizer, prompts)
    for row, ids, mask in zip(golden["score"], input_ids.tolist(), attention_mask.tolist(), strict=True):
        assert ids == row["input_ids"], row["prompt"]
        assert mask == [int(token != 0) for token in row["input_ids"]], row["prompt"]
    assert set(input_ids[:, 0].tolist()) == {scorer.tokenizer.cls_token_id}


def test_pixels_match_official(golden, golden_images):
    for row in golden["score"]:
        pixels = preprocess_image(golden_images[row["image"]]).double()
        assert float(pixels.sum()) == pytest.approx(row["pixel_sum"], rel=1e-9, abs=1e-6), row["image"]
        assert float((pixels**2).sum()) == pytest.approx(row["pixel_square_sum"], rel=1e-9), row["image"]


def test_score_details_hold_raw_reward(golden, scorer, golden_images):
    row = golden["score"][0]
    result = scorer.score_detailed([golden_images[row["image"]]], [row["prompt"]])
    raw = result.details[0]["raw_reward"]
    assert result.errors == [None]
    assert result.scores.dtype == np.float32
    assert (raw - REWARD_MEAN) / REWARD_STD == pytest.approx(row["score"], abs=TOLERANCE)


# --------------------------------------------------------------------------- batching and text


def test_batched_equals_one_at_a_time(golden, scorer, golden_images):
    rows = [row for row in golden["score"] if row["image"] != "rgba"]
    images = [golden_images[row["image"]] for row in rows]
    prompts = [row["prompt"] for row in rows]
    batched = scorer.score(images, prompts)
    singles = [scorer.score([image], [prompt])[0] for image, prompt in zip(images, prompts, strict=True)]
    assert batched.tolist() == pytest.approx(singles, abs=1e-6)
    assert scorer.batch_size < len(images)  # the batched call ran more than one chunk


def test_prompt_truncated_at_35_tokens(scorer, golden_images):
    words = "red blue green cube sphere cat dog photo painting ocean clouds birds".split()
    prefix = " ".join(words * 3)  # 36 words, each one token
    input_ids, attention_mask = tokenize(scorer.tokenizer, [prefix, prefix + " sky grass"])
    assert input_ids.shape == (2, MAX_TEXT_TOKENS)
    assert attention_mask[0].tolist() == [1] * MAX_TEXT_TOKENS
    assert input_ids[0, -1].item() == scorer.tokenizer.sep_token_id
    assert torch.equal(input_ids[0], input_ids[1])
    image = golden_images["square_rgb"]
    scores = scorer.score([image, image], [prefix, prefix + " sky grass"])
    assert scores[0] == scores[1]


def test_bfloat16_encoders_stay_close(golden, tiny_files, tiny_config, golden_images):
    checkpoint, vocab_folder = tiny_files
    low_precision = ImageRewardScorer(checkpoint, vocab_folder, config=tiny_config, device="cpu", dtype=torch.bfloat16)
    rows = [row for row in golden["score"] if row["image"] != "rgba"]
    scores = low_precision.score([golden_images[row["image"]] for row in rows], [row["prompt"] for row in rows])
    assert low_precision.model.mlp.layers[0].weight.dtype == torch.float32
    assert low_precision.model.blip.visual_encoder.pos_embed.dtype == torch.bfloat16
    assert scores.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa, so the tiny model drifts by about 0.01.
    assert scores.tolist() == pytest.approx([row["score"] for row in rows], abs=0.05)


def test_empty_batch_returns_no_scores(scorer):
    result = scorer.score_batch([], [], [])
    assert result.scores.shape == (0,)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    ("mode", "size"),
    [("RGB", (300, 200)), ("RGB", (97, 311)), ("RGBA", (128, 160)), ("L", (70, 90)), ("RGB", (1, 1)), ("L", (1, 1))],
)
def test_preprocess_matches_official_order(mode, size):
    rng = np.random.default_rng(3)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if mode == "L" else array)
    pixels = preprocess_image(image)
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == torch.float32
    assert torch.equal(pixels, official_order_transform(image))


def test_rgba_resized_before_alpha_dropped():
    rng = np.random.default_rng(4)
    array = rng.integers(0, 256, size=(50, 80, 4), dtype=np.uint8)
    official_order = preprocess_image(Image.fromarray(array))
    alpha_dropped_first = preprocess_image(Image.fromarray(array[..., :3]))
    assert not torch.equal(official_order, alpha_dropped_first)


def test_preprocess_accepts_arrays():
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, size=(40, 60), dtype=np.uint8)
    expected = official_order_transform(Image.fromarray(grey))
    assert torch.equal(preprocess_image(grey), expected)
    assert torch.equal(preprocess_image(grey[..., None]), expected)
    floats = grey.astype(np.float32) / 255.0
    assert torch.equal(preprocess_image(floats), expected)


def test_greyscale_score_equals_rgb_copy(scorer):
    rng = np.random.default_rng(6)
    grey = rng.integers(0, 256, size=(90, 130), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    scores = scorer.score([Image.fromarray(grey), rgb], ["a red cube", "a red cube"])
    assert scores[0] == scores[1]


# --------------------------------------------------------------------------- checkpoint checks


def test_check_accepts_tiny_checkpoint(tiny_state_dict, tiny_config):
    check_checkpoint(tiny_state_dict, tiny_config)
    without_position_ids = {key: value for key, value in tiny_state_dict.items() if key != POSITION_IDS_KEY}
    check_checkpoint(without_position_ids, tiny_config)


def test_check_reports_missing_key(tiny_state_dict, tiny_config):
    broken = dict(tiny_state_dict)
    del broken["mlp.layers.7.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: mlp\.layers\.7\.bias"):
        check_checkpoint(broken, tiny_config)


def test_check_reports_unexpected_key(tiny_state_dict, tiny_config):
    broken = dict(tiny_state_dict, **{"blip.itm_head.weight": torch.zeros(2, 32)})
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys: blip\.itm_head\.weight"):
        check_checkpoint(broken, tiny_config)


def test_check_reports_shape_mismatch(tiny_state_dict, tiny_config):
    broken = dict(tiny_state_dict, **{"mlp.layers.0.weight": torch.zeros(1024, 768)})
    pattern = r"1 keys with other shapes: mlp\.layers\.0\.weight \(1024, 768\) \(expected \(1024, 32\)\)"
    with pytest.raises(CheckpointMismatchError, match=pattern):
        check_checkpoint(broken, tiny_config)


def test_check_lists_many_keys_with_count(tiny_state_dict):
    with pytest.raises(CheckpointMismatchError) as raised:
        check_checkpoint(tiny_state_dict, ImageRewardConfig())
    message = str(raised.value)
    assert "missing keys" in message
    assert "more)" in message
    assert "keys with other shapes" in message
    assert "THUDM/ImageReward" in message


def test_check_rejects_wrapped_checkpoint(tiny_state_dict, tiny_config):
    wrapped = {"state_dict": dict(tiny_state_dict), "epoch": 3}
    with pytest.raises(CheckpointMismatchError, match="entries are not tensors: epoch, state_dict"):
        check_checkpoint(wrapped, tiny_config)


def test_check_names_module_prefix(tiny_state_dict, tiny_config):
    prefixed = {f"module.{key}": value for key, value in tiny_state_dict.items()}
    with pytest.raises(CheckpointMismatchError, match="start with 'module.'"):
        check_checkpoint(prefixed, tiny_config)


def test_check_rejects_other_position_ids(tiny_state_dict, tiny_config):
    broken = dict(tiny_state_dict, **{POSITION_IDS_KEY: torch.zeros(1, 40, dtype=torch.int64)})
    with pytest.raises(CheckpointMismatchError, match="position_ids is not 0, 1, ..., 39"):
        check_checkpoint(broken, tiny_config)


def test_load_checkpoint_assigns_weights(tiny_state_dict, tiny_config):
    model = load_checkpoint(tiny_state_dict, tiny_config)
    assert not model.training
    assert torch.equal(model.mlp.layers[7].weight, tiny_state_dict["mlp.layers.7.weight"])
    assert not any(tensor.is_meta for tensor in model.state_dict().values())


def test_scorer_rejects_checkpoint_of_other_size(tiny_files):
    checkpoint, vocab_folder = tiny_files
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        ImageRewardScorer(checkpoint, vocab_folder, device="cpu")


def test_scorer_rejects_non_mapping_checkpoint(tiny_files, tiny_config, tmp_path):
    _, vocab_folder = tiny_files
    checkpoint = tmp_path / "ImageReward.pt"
    torch.save([torch.zeros(1)], checkpoint)
    with pytest.raises(CheckpointMismatchError, match="contains a list, not a state dict"):
        ImageRewardScorer(checkpoint, vocab_folder, config=tiny_config, device="cpu")


def test_med_config_file_gives_tiny_config(golden, tiny_config, tmp_path):
    path = tmp_path / "med_config.json"
    path.write_text(json.dumps(golden["recipe"]["med_config"]), encoding="utf-8")
    assert ImageRewardConfig.from_med_config(path, **golden["recipe"]["vision"]) == tiny_config
    relative = dict(golden["recipe"]["med_config"], position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key' is not supported"):
        ImageRewardConfig.from_med_config(relative)


# --------------------------------------------------------------------------- weight lookup


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_checkpoint_error_message(empty_hub_cache, tiny_files):
    _, vocab_folder = tiny_files
    with pytest.raises(MissingWeightsError) as raised:
        ImageRewardScorer(None, vocab_folder, device="cpu")
    message = str(raised.value)
    assert "ImageReward.pt from hub repo THUDM/ImageReward" in message
    assert CHECKPOINT_SPEC.revision in message
    assert str(empty_hub_cache) in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "weights_path=PATH" in message


def test_offline_tokenizer_error_message(empty_hub_cache, tiny_files, tiny_config):
    checkpoint, _ = tiny_files
    with pytest.raises(MissingWeightsError) as raised:
        ImageRewardScorer(checkpoint, None, config=tiny_config, device="cpu")
    message = str(raised.value)
    assert "vocab.txt from hub repo bert-base-uncased" in message
    assert TOKENIZER_SPEC.revision in message
    assert str(empty_hub_cache) in message
    assert "tokenizer_path=PATH" in message


def test_local_checkpoint_missing_message(tiny_files, tmp_path):
    _, vocab_folder = tiny_files
    missing = tmp_path / "nowhere" / "ImageReward.pt"
    with pytest.raises(MissingWeightsError, match="ImageReward.pt not found at .*nowhere.*weights_path must point"):
        ImageRewardScorer(missing, vocab_folder, device="cpu")


def test_tokenizer_found_in_hub_cache(empty_hub_cache, tiny_files, tiny_config, golden):
    checkpoint, vocab_folder = tiny_files
    snapshot = empty_hub_cache / "models--bert-base-uncased" / "snapshots" / TOKENIZER_SPEC.revision
    snapshot.mkdir(parents=True)
    (snapshot / "vocab.txt").write_bytes((vocab_folder / "vocab.txt").read_bytes())
    cached = ImageRewardScorer(checkpoint.parent, None, config=tiny_config, device="cpu")
    row = golden["score"][0]
    assert (
        cached.tokenizer(row["prompt"], padding="max_length", max_length=MAX_TEXT_TOKENS)["input_ids"]
        == row["input_ids"]
    )

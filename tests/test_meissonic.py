"""Tests for the Meissonic transformer, backend and loader.

The tiny random configuration runs on a CPU. The full-size transformer is built
on the meta device, which allocates no memory, to check its parameter names and
shapes against the published ``MeissonFlow/Meissonic`` checkpoint. The expected
names below are facts about that checkpoint: they follow from the official
``Transformer2DModel`` (viiika/Meissonic ``src/transformer.py``, commit
aeba85e8), whose ``from_pretrained`` loads the checkpoint. The hub lists the
fp32 file as 4.03 GB and the fp16 file as 2.01 GB.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from cogrpo.models.base import MaskedImageBackend, cosine_mask_ratio
from cogrpo.models.meissonic import (
    HUB_ID,
    HUB_REVISION,
    MeissonicTransformer,
    build_clip_tokenizer,
    build_tiny_meissonic,
    image_position_ids,
    load_meissonic,
    pipeline_timesteps,
    weights_available,
)
from cogrpo.rewards.base import MissingWeightsError, ScoreResult, Scorer
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.trainer import CoGRPOTrainer
from cogrpo.sampling.sampler import committed_log_prob, image_generators, sample

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

# transformer/config.json of the hub repository.
PUBLISHED_CONFIG = {
    "_class_name": "Transformer2DModel",
    "_diffusers_version": "0.30.2",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "codebook_size": 8192,
    "downsample": True,
    "guidance_embeds": False,
    "in_channels": 64,
    "joint_attention_dim": 1024,
    "num_attention_heads": 8,
    "num_layers": 14,
    "num_single_layers": 28,
    "patch_size": 1,
    "pooled_projection_dim": 1024,
    "upsample": True,
    "vocab_size": 8256,
}

PUBLISHED_DUAL_BLOCKS = 14
PUBLISHED_SINGLE_BLOCKS = 28

# Every key of the published checkpoint outside the blocks, with its shape.
PUBLISHED_NON_BLOCK_KEYS = {
    "time_text_embed.timestep_embedder.linear_1.weight": (1024, 256),
    "time_text_embed.timestep_embedder.linear_1.bias": (1024,),
    "time_text_embed.timestep_embedder.linear_2.weight": (1024, 1024),
    "time_text_embed.timestep_embedder.linear_2.bias": (1024,),
    "time_text_embed.text_embedder.linear_1.weight": (1024, 1024),
    "time_text_embed.text_embedder.linear_1.bias": (1024,),
    "time_text_embed.text_embedder.linear_2.weight": (1024, 1024),
    "time_text_embed.text_embedder.linear_2.bias": (1024,),
    "context_embedder.weight": (1024, 1024),
    "context_embedder.bias": (1024,),
    "embed.embeddings.weight": (8256, 1024),
    "embed.layer_norm.weight": (1024,),
    "embed.conv.weight": (1024, 1024, 1, 1),
    "mlm_layer.conv1.weight": (1024, 1024, 1, 1),
    "mlm_layer.layer_norm.weight": (1024,),
    "mlm_layer.conv2.weight": (8192, 1024, 1, 1),
    "cond_embed.linear_1.weight": (1024, 2304),
    "cond_embed.linear_2.weight": (1024, 1024),
    "encoder_proj_layer_norm.weight": (1024,),
    "project_to_hidden_norm.weight": (1024,),
    "project_to_hidden.weight": (1024, 1024),
    "project_from_hidden_norm.weight": (1024,),
    "project_from_hidden.weight": (1024, 1024),
    "down_block.downsample.norm.weight": (1024,),
    "down_block.downsample.conv.weight": (1024, 1024, 2, 2),
    "up_block.upsample.norm.weight": (1024,),
    "up_block.upsample.conv.weight": (1024, 1024, 2, 2),
}

# Keys of dual-stream block i, without the "transformer_blocks.{i}." prefix.
PUBLISHED_DUAL_BLOCK_KEYS = {
    "norm1.linear.weight": (6144, 1024),
    "norm1.linear.bias": (6144,),
    "norm1_context.linear.weight": (6144, 1024),
    "norm1_context.linear.bias": (6144,),
    "attn.norm_q.weight": (128,),
    "attn.norm_k.weight": (128,),
    "attn.to_q.weight": (1024, 1024),
    "attn.to_q.bias": (1024,),
    "attn.to_k.weight": (1024, 1024),
    "attn.to_k.bias": (1024,),
    "attn.to_v.weight": (1024, 1024),
    "attn.to_v.bias": (1024,),
    "attn.to_out.0.weight": (1024, 1024),
    "attn.to_out.0.bias": (1024,),
    "attn.norm_added_q.weight": (128,),
    "attn.norm_added_k.weight": (128,),
    "attn.add_q_proj.weight": (1024, 1024),
    "attn.add_q_proj.bias": (1024,),
    "attn.add_k_proj.weight": (1024, 1024),
    "attn.add_k_proj.bias": (1024,),
    "attn.add_v_proj.weight": (1024, 1024),
    "attn.add_v_proj.bias": (1024,),
    "attn.to_add_out.weight": (1024, 1024),
    "attn.to_add_out.bias": (1024,),
    "ff.net.0.proj.weight": (4096, 1024),
    "ff.net.0.proj.bias": (4096,),
    "ff.net.2.weight": (1024, 4096),
    "ff.net.2.bias": (1024,),
    "ff_context.net.0.proj.weight": (4096, 1024),
    "ff_context.net.0.proj.bias": (4096,),
    "ff_context.net.2.weight": (1024, 4096),
    "ff_context.net.2.bias": (1024,),
}

# Keys of single-stream block i, without the "single_transformer_blocks.{i}." prefix.
PUBLISHED_SINGLE_BLOCK_KEYS = {
    "norm.linear.weight": (3072, 1024),
    "norm.linear.bias": (3072,),
    "proj_mlp.weight": (4096, 1024),
    "proj_mlp.bias": (4096,),
    "proj_out.weight": (1024, 5120),
    "proj_out.bias": (1024,),
    "attn.norm_q.weight": (128,),
    "attn.norm_k.weight": (128,),
    "attn.to_q.weight": (1024, 1024),
    "attn.to_q.bias": (1024,),
    "attn.to_k.weight": (1024, 1024),
    "attn.to_k.bias": (1024,),
    "attn.to_v.weight": (1024, 1024),
    "attn.to_v.bias": (1024,),
}


def published_keys() -> dict[str, tuple[int, ...]]:
    """Return every key of the published transformer checkpoint with its shape."""
    keys = dict(PUBLISHED_NON_BLOCK_KEYS)
    for index in range(PUBLISHED_DUAL_BLOCKS):
        prefix = f"transformer_blocks.{index}."
        keys.update({prefix + name: shape for name, shape in PUBLISHED_DUAL_BLOCK_KEYS.items()})
    for index in range(PUBLISHED_SINGLE_BLOCKS):
        prefix = f"single_transformer_blocks.{index}."
        keys.update({prefix + name: shape for name, shape in PUBLISHED_SINGLE_BLOCK_KEYS.items()})
    return keys


@pytest.fixture
def tiny():
    return build_tiny_meissonic(seed=0)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """Keep the hub client offline and pointed at an empty cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


def tiny_inputs(backend, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    h, w = backend.grid
    tokens = torch.randint(0, backend.codebook_size, (batch, h, w), generator=generator)
    masked = torch.rand(batch, h, w, generator=generator) < 0.5
    tokens = torch.where(masked, torch.full_like(tokens, backend.mask_token_id), tokens)
    prompts = ["a red cube on a table", "two blue spheres"][:batch]
    return tokens, backend.encode_prompts(prompts)


# ---------------------------------------------------------------------------- published checkpoint


def test_keys_match_published_checkpoint():
    with torch.device("meta"):
        transformer = MeissonicTransformer()
    actual = {name: tuple(tensor.shape) for name, tensor in transformer.state_dict().items()}
    expected = published_keys()

    assert sorted(set(actual) - set(expected)) == []
    assert sorted(set(expected) - set(actual)) == []
    assert {name: shape for name, shape in actual.items() if expected[name] != shape} == {}
    assert len(transformer.transformer_blocks) == PUBLISHED_DUAL_BLOCKS
    assert len(transformer.single_transformer_blocks) == PUBLISHED_SINGLE_BLOCKS


def test_parameter_count_matches_file_sizes():
    with torch.device("meta"):
        transformer = MeissonicTransformer()
    count = sum(parameter.numel() for parameter in transformer.parameters())

    assert count == sum(math.prod(shape) for shape in published_keys().values())
    # The hub shows 4.03 GB (fp32) and 2.01 GB (fp16), rounded to 10 MB. Headers add well under 10 MB.
    assert 4.025e9 <= count * 4 < 4.035e9
    assert 2.005e9 <= count * 2 < 2.015e9


def test_published_config_builds_same_module():
    with torch.device("meta"):
        transformer = MeissonicTransformer.from_config(PUBLISHED_CONFIG)
        default = MeissonicTransformer()
    published = {key: value for key, value in PUBLISHED_CONFIG.items() if not key.startswith("_")}

    for key, value in published.items():
        assert list(np.atleast_1d(transformer.config[key])) == list(np.atleast_1d(value)), key
        assert list(np.atleast_1d(default.config[key])) == list(np.atleast_1d(value)), key
    assert transformer.state_dict().keys() == default.state_dict().keys()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"axes_dims_rope": (16, 56, 48)}, "must sum to attention_head_dim"),
        ({"pooled_projection_dim": 768}, "must equal num_attention_heads"),
        ({"patch_size": 2}, "invalid patch_size"),
        ({"guidance_embeds": True}, "guidance_embeds"),
        ({"codebook_size": 8256}, "must be below vocab_size"),
    ],
)
def test_invalid_config_rejected(override, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        MeissonicTransformer(**override)


def test_full_size_backend_wiring_on_meta():
    backend = load_meissonic(random_weights=True, device="meta")

    assert isinstance(backend, MaskedImageBackend)
    assert backend.grid == (64, 64)
    assert backend.codebook_size == 8192
    assert backend.mask_token_id == 8255
    assert backend.text_encoder.config.hidden_size == backend.transformer.config.joint_attention_dim
    assert backend.text_encoder.config.projection_dim == backend.transformer.config.pooled_projection_dim
    assert backend.vq.config.num_vq_embeddings == backend.codebook_size
    assert backend.micro_conds.shape == (1, 5)


# ---------------------------------------------------------------------------- conventions


def test_image_position_ids_row_major():
    ids = image_position_ids(2, 3)

    expected = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]], dtype=torch.float32)
    assert torch.equal(ids, expected)


@pytest.mark.parametrize("steps", [48, 64, 12])
def test_pipeline_timesteps_match_default_schedule(steps):
    length = 64 * 64
    ratios = cosine_mask_ratio(steps)
    # Masked tokens at the input of each step, as the sampler and aMUSEd's scheduler compute them.
    masked = [length] + [int(math.floor(length * float(r))) for r in ratios[:-1]]
    masked_fraction = torch.tensor(masked, dtype=torch.float32) / length

    timesteps = pipeline_timesteps(masked_fraction, steps)

    assert timesteps.tolist() == list(range(steps - 1, -1, -1))


def test_backend_timesteps_from_mask_share(tiny):
    h, w = tiny.grid
    all_masked = torch.full((1, h, w), tiny.mask_token_id)
    one_masked = torch.zeros(1, h, w, dtype=torch.long)
    one_masked[0, 0, 0] = tiny.mask_token_id

    assert tiny.pipeline_timesteps(all_masked).tolist() == [tiny.timestep_steps - 1]
    assert tiny.pipeline_timesteps(one_masked).tolist() == [0]


def test_default_schedule_is_pipeline_default(tiny):
    schedule = tiny.default_schedule(48)

    assert schedule.steps == 48
    assert torch.allclose(schedule.mask_ratio, cosine_mask_ratio(48))
    assert torch.equal(schedule.guidance, torch.full((48,), 9.0))
    assert torch.equal(schedule.sample_temperature, torch.ones(48))
    assert schedule.remask_temperature[0].item() == 2.0
    assert schedule.remask_temperature[-1].item() == 0.0


def test_micro_conditions_width_first():
    backend = build_tiny_meissonic(seed=0)

    assert backend.micro_conds.tolist() == [[32.0, 32.0, 0.0, 0.0, 6.0]]


def test_clip_tokenizer_ids_offline():
    tokenizer = build_clip_tokenizer()

    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(ids) == 77
    assert set(ids[7:]) == {49407}
    assert len(tokenizer) == 49408


# ---------------------------------------------------------------------------- tiny model


def test_tiny_forward_backward(tiny):
    tokens, embeddings = tiny_inputs(tiny)
    transformer = tiny.transformer

    logits = tiny.logits(tokens, embeddings)
    logits.logsumexp(-1).mean().backward()

    assert logits.shape == (2, tiny.grid[0] * tiny.grid[1], tiny.codebook_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    no_grad = [name for name, p in transformer.named_parameters() if p.grad is None]
    assert no_grad == []
    bad_grad = [name for name, p in transformer.named_parameters() if not torch.isfinite(p.grad).all()]
    assert bad_grad == []


def test_tiny_output_layout(tiny):
    tokens, embeddings = tiny_inputs(tiny)

    with torch.no_grad():
        output = tiny.transformer(
            tokens,
            embeddings.hidden_states,
            embeddings.pooled,
            timestep=torch.tensor([3]),
            micro_conds=tiny.micro_conds.expand(2, -1),
        ).sample

    assert output.shape == (2, tiny.codebook_size, *tiny.grid)


def test_gradient_checkpointing_same_gradients(tiny):
    tokens, embeddings = tiny_inputs(tiny)
    transformer = tiny.transformer
    block_calls = []
    transformer.single_transformer_blocks[0].attn.register_forward_hook(lambda *args: block_calls.append(1))

    tiny.logits(tokens, embeddings).logsumexp(-1).mean().backward()
    plain = {name: p.grad.clone() for name, p in transformer.named_parameters()}
    transformer.zero_grad()
    block_calls.clear()
    tiny.enable_gradient_checkpointing()
    tiny.logits(tokens, embeddings).logsumexp(-1).mean().backward()

    assert transformer.gradient_checkpointing
    assert len(block_calls) == 2  # the backward pass recomputed the block
    for name, p in transformer.named_parameters():
        assert torch.allclose(p.grad, plain[name], atol=1e-6), name


def test_lora_only_in_attention_projections(tiny):
    from peft import LoraConfig

    transformer = tiny.transformer
    tokens, embeddings = tiny_inputs(tiny)
    with torch.no_grad():
        before = tiny.logits(tokens, embeddings)
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))

    trainable = [name for name, p in transformer.named_parameters() if p.requires_grad]
    pattern = re.compile(
        r"^(transformer_blocks|single_transformer_blocks)\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)\.lora_[AB]\."
    )
    assert trainable
    assert [name for name in trainable if not pattern.match(name)] == []
    dual, single = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
    # Dual-stream blocks adapt to_q, to_k, to_v and to_out.0, but single-stream blocks have no to_out.
    assert len(trainable) == 2 * (4 * dual + 3 * single)
    assert not [name for name in trainable if "add_" in name or "to_add_out" in name]

    with torch.no_grad():
        after = tiny.logits(tokens, embeddings)
    assert torch.allclose(before, after, atol=1e-6)  # lora_B starts at zero


def test_sampler_runs_and_decodes(tiny):
    prompts = ["a red cube", "a blue sphere"]
    steps = 4

    first = sample(tiny, prompts, image_generators([0, 1]), steps=steps)
    second = sample(tiny, prompts, image_generators([0, 1]), steps=steps)

    assert first.tokens.shape == (2, tiny.grid[0] * tiny.grid[1])
    assert torch.equal(first.tokens, second.tokens)
    assert int(first.tokens.max()) < tiny.codebook_size
    assert int(first.tokens.min()) >= 0
    assert int(first.commit_step.min()) >= 0
    assert int(first.commit_step.max()) == steps - 1
    assert torch.isfinite(first.model_logp).all()
    images = tiny.decode(first.tokens.view(2, *tiny.grid))
    assert images.shape == (2, 32, 32, 3)
    assert images.dtype == np.uint8


def test_committed_log_prob_matches_rollout(tiny):
    from peft import LoraConfig

    transformer = tiny.transformer
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    prompts = ["a red cube", "a blue sphere"]
    steps = 3
    trajectory = sample(tiny, prompts, image_generators([5, 6]), steps=steps)
    cond = tiny.encode_prompts(prompts)
    uncond = tiny.encode_prompts([""])
    rows = slice(0, 2)

    for step in range(steps):
        logp, per_token = committed_log_prob(tiny, trajectory, step, rows, cond, uncond)
        assert torch.allclose(logp.detach(), trajectory.model_logp[:, step], atol=1e-4), step
        assert per_token.shape == trajectory.tokens.shape
    logp.sum().backward()

    lora_b_grads = [p.grad for name, p in transformer.named_parameters() if "lora_B" in name]
    assert lora_b_grads
    assert all(grad is not None for grad in lora_b_grads)
    assert any(float(grad.abs().sum()) > 0 for grad in lora_b_grads)


class MeanRedReward(Scorer):
    """The mean red channel of an image in [0, 1], a cheap reward that differs between random images."""

    name = "mean-red"

    def score_batch(self, images, prompts, metadata):
        return ScoreResult(scores=np.asarray([im[..., 0].mean() / 255.0 for im in images], np.float32))


class FixedPrompts:
    """A prompt source that cycles through a fixed list."""

    def __init__(self, prompts: list[str]):
        self.prompts = prompts

    def sample(self, rng, n):
        return [{"prompt": self.prompts[i % len(self.prompts)]} for i in range(n)]


def test_trainer_iteration_trains_lora_only(tiny):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from threads, and on a loaded machine they slow it down
    config = TrainConfig(model="meissonic", mode="co", prompts_per_iteration=2, group_size=2, steps=3, chunk_size=4,
                         train_step_fraction=1.0, lora_rank=4, lr_model=1e-2, gradient_checkpointing=True,
                         device="cpu", final_eval=False, checkpoint_every=0)
    try:
        trainer = CoGRPOTrainer(config, tiny, MeanRedReward(), prompts=FixedPrompts(["a red cube", "a blue sphere"]))
        transformer = trainer.unwrapped_transformer
        before = {name: p.detach().clone() for name, p in transformer.named_parameters()}
        result = trainer.train_iteration()
    finally:
        torch.set_num_threads(threads)

    after = dict(transformer.named_parameters())
    lora_b = [name for name in before if "lora_B" in name]
    base = [name for name in before if "lora_" not in name]
    assert result.phase == "model"
    assert not result.skipped
    assert result.advantages.any()
    assert result.metrics["policy/model/max_abs_ratio_minus_one"] < 1e-3
    assert lora_b
    # lora_B starts at zero, so lora_A has a zero gradient in the first update and only lora_B moves.
    assert [name for name in lora_b if torch.equal(after[name], before[name])] == []
    assert [name for name in base if not torch.equal(after[name], before[name])] == []
    assert all(not after[name].requires_grad for name in base)


def test_bf16_autocast_logits_float32(tiny):
    tokens, embeddings = tiny_inputs(tiny)
    with torch.no_grad():
        reference = tiny.logits(tokens, embeddings)
    tiny.compute_dtype = torch.bfloat16
    output_dtypes = set()
    tiny.transformer.register_forward_hook(lambda module, args, output: output_dtypes.add(output[0].dtype))

    with torch.no_grad():
        logits = tiny.logits(tokens, embeddings)
    trajectory = sample(tiny, ["a red cube", "a blue sphere"], image_generators([0, 1]), steps=3)

    assert output_dtypes == {torch.bfloat16}
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # bfloat16 keeps 8 significant bits, so logits move by about 1% of their scale.
    assert torch.allclose(logits, reference, atol=0.05 * float(reference.abs().max()))
    assert torch.isfinite(trajectory.model_logp).all()


# ---------------------------------------------------------------------------- loading


def test_offline_load_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("load_meissonic tried to download while HF_HUB_OFFLINE is set")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)

    with pytest.raises(MissingWeightsError) as caught:
        load_meissonic(cache_dir=tmp_path / "cache")

    message = str(caught.value)
    assert HUB_ID in message
    assert HUB_REVISION in message
    assert "path=" in message
    assert "HF_HUB_OFFLINE" in message


def test_hub_revision_is_pinned_commit():
    assert re.fullmatch(r"[0-9a-f]{40}", HUB_REVISION)


def test_weights_available_empty_cache():
    assert weights_available() is False


def save_tiny(backend, folder):
    backend.transformer.save_pretrained(folder / "transformer")
    backend.vq.save_pretrained(folder / "vqvae")
    backend.text_encoder.save_pretrained(folder / "text_encoder")
    backend.tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def test_load_local_folder_round_trip(tiny, tmp_path):
    folder = save_tiny(tiny, tmp_path / "meissonic")
    tokens, embeddings = tiny_inputs(tiny)
    with torch.no_grad():
        expected = tiny.logits(tokens, embeddings)

    loaded = load_meissonic(path=folder, image_size=32)
    with torch.no_grad():
        actual = loaded.logits(tokens, loaded.encode_prompts(["a red cube on a table", "two blue spheres"]))

    assert loaded.grid == tiny.grid
    assert loaded.mask_token_id == tiny.mask_token_id
    assert loaded.revision == f"local:{folder}"
    assert loaded.weights_dir == folder
    assert torch.allclose(actual, expected, atol=1e-5)


def test_text_encoder_source_weights_recorded(tiny, tmp_path):
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import base_model_weight_sha256
    from cogrpo.weight_digests import file_sha256

    folder = save_tiny(tiny, tmp_path / "meissonic")
    encoder = tmp_path / "clip-h"
    tiny.text_encoder.save_pretrained(encoder)

    loaded = load_meissonic(path=folder, image_size=32, text_encoder_source=encoder)
    digests = base_model_weight_sha256(TrainConfig(model="meissonic", model_path=str(folder)), loaded)

    assert loaded.extra_weight_dirs == {"text_encoder_source": encoder}
    assert digests["text_encoder_source/model.safetensors"] == file_sha256(encoder / "model.safetensors")
    assert "text_encoder/model.safetensors" in digests
    assert "transformer/diffusion_pytorch_model.safetensors" in digests


def test_load_local_folder_missing_component(tiny, tmp_path):
    folder = save_tiny(tiny, tmp_path / "meissonic")
    (folder / "vqvae" / "config.json").unlink()
    (folder / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vqvae").rmdir()

    with pytest.raises(MissingWeightsError, match="lacks vqvae"):
        load_meissonic(path=folder, image_size=32)


def test_load_rejects_extra_keys(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_tiny(tiny, tmp_path / "meissonic")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["transformer_blocks.0.attn.to_qkv.weight"] = torch.zeros(96, 32)
    save_file(state, str(weights))

    with pytest.raises(ValueError, match="does not match MeissonicTransformer"):
        load_meissonic(path=folder, image_size=32)


def test_random_weights_rejects_path(tmp_path):
    with pytest.raises(ValueError, match="drop path"):
        load_meissonic(path=tmp_path, random_weights=True, device="meta")

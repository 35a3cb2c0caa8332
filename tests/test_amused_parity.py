"""Parity of our sampler with diffusers' AmusedPipeline, and the aMUSEd loaders.

The parity tests build tiny random aMUSEd components in code (no download) and
check that ``sample`` at aMUSEd's default schedule returns the same tokens as
``AmusedPipeline(..., output_type="latent")`` for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch

from cogrpo.models import amused
from cogrpo.models.amused import AmusedWeightsError, build_clip_tokenizer, build_tiny_amused, load_amused
from cogrpo.sampling.sampler import image_generators, sample

PROMPT = "A painting of a squirrel eating a burger"
BATCH_PROMPTS = ["a red cube on a table", "two blue spheres", "a photo of a green cat"]
SEEDS = (0, 1, 7)
STEPS = (2, 4, 12)
# 4 x 4 is the grid of the removed diffusers fast tests; 8 x 8 reaches the unclamped cosine
# mask lengths; 4 x 8 checks the width/height order of the micro-conditioning.
GRIDS = ((4, 4), (8, 8), (4, 8))


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny models gain nothing from intra-op threads, and on a loaded machine
    # OpenMP workers waiting for each other made these tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_backends():
    return {grid: build_tiny_amused(seed=0, grid=grid) for grid in GRIDS}


def make_pipeline(backend):
    from diffusers import AmusedPipeline, AmusedScheduler

    pipe = AmusedPipeline(
        vqvae=backend.vq,
        tokenizer=backend.tokenizer,
        text_encoder=backend.text_encoder,
        transformer=backend.transformer,
        scheduler=AmusedScheduler(mask_token_id=backend.mask_token_id),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_tokens(backend, prompt: str, steps: int, guidance: float, seed: int) -> torch.Tensor:
    height, width = backend.grid
    output = make_pipeline(backend)(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=height,
        width=width,
    )
    return output.images.cpu()


def schedule_with_guidance(backend, steps: int, guidance: float):
    schedule = backend.default_schedule(steps)
    return dataclasses.replace(schedule, guidance=torch.full((steps,), float(guidance)))


def our_tokens(backend, prompts: list[str], steps: int, guidance: float, seeds: list[int]) -> torch.Tensor:
    trajectory = sample(
        backend, prompts, image_generators(seeds), steps=steps, schedule=schedule_with_guidance(backend, steps, guidance)
    )
    return trajectory.tokens.view(len(prompts), *backend.grid)


def test_clip_tokenizer_matches_open_clip():
    import open_clip

    tokenizer = build_clip_tokenizer()
    reference = open_clip.tokenizer.SimpleTokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    for text in [PROMPT, "Héllo wörld 🙂, x-ray 3D!!", "a  photo   of\tTWO dogs", ""]:
        expected = [49406] + reference.encode(text) + [49407]
        assert tokenizer(text).input_ids == expected, text


def test_default_schedule_equals_amused_scheduler(tiny_backends):
    from diffusers import AmusedScheduler

    backend = tiny_backends[(4, 4)]
    for steps in (1, *STEPS):
        schedule = backend.default_schedule(steps)
        scheduler = AmusedScheduler(mask_token_id=backend.mask_token_id)
        scheduler.set_timesteps(steps, (2, 0))
        # AmusedScheduler.step: ratio = (step_idx + 1) / N with an integer tensor, then cos(ratio * pi / 2).
        expected_ratio = [
            torch.cos((torch.tensor([[step]]) + 1) / steps * math.pi / 2).item() for step in range(steps - 1)
        ] + [0.0]
        assert torch.equal(schedule.remask_temperature, scheduler.temperatures)
        assert schedule.mask_ratio.tolist() == expected_ratio
        assert torch.equal(schedule.guidance, torch.full((steps,), 10.0))
        assert torch.equal(schedule.sample_temperature, torch.ones(steps))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("guidance", [10.0, 1.0], ids=["cfg10", "cfg-off"])
def test_sampler_equals_pipeline(tiny_backends, grid, steps, guidance):
    backend = tiny_backends[grid]
    for seed in SEEDS:
        expected = pipeline_tokens(backend, PROMPT, steps, guidance, seed)
        got = our_tokens(backend, [PROMPT], steps, guidance, [seed])
        assert torch.equal(got, expected), f"seed {seed}: sampler {got.flatten().tolist()} != pipeline {expected.flatten().tolist()}"


@pytest.mark.parametrize("steps", [4, 12])
@pytest.mark.parametrize("guidance", [10.0, 1.0], ids=["cfg10", "cfg-off"])
def test_batch_equals_single_pipeline_runs(tiny_backends, steps, guidance):
    backend = tiny_backends[(8, 8)]
    seeds = [11, 12, 13]
    got = our_tokens(backend, BATCH_PROMPTS, steps, guidance, seeds)
    for index, (prompt, seed) in enumerate(zip(BATCH_PROMPTS, seeds)):
        expected = pipeline_tokens(backend, prompt, steps, guidance, seed)
        assert torch.equal(got[index : index + 1], expected), f"image {index} ({prompt!r}, seed {seed})"


def test_parity_cases_are_sensitive(tiny_backends):
    """The tiny model must react to guidance and to the micro-conditioning order, or parity proves little."""
    backend = tiny_backends[(4, 8)]
    cfg_on = [pipeline_tokens(backend, PROMPT, 12, 10.0, seed) for seed in SEEDS]
    cfg_off = [pipeline_tokens(backend, PROMPT, 12, 1.0, seed) for seed in SEEDS]
    assert any(not torch.equal(a, b) for a, b in zip(cfg_on, cfg_off))

    assert backend.micro_conds.tolist() == [[8.0, 4.0, 0.0, 0.0, 6.0]]  # width, height, crop top, crop left, score
    embeddings = backend.encode_prompts([PROMPT])
    tokens = torch.full((1, 4, 8), backend.mask_token_id)
    with torch.no_grad():
        logits = backend.logits(tokens, embeddings)
        swapped = backend.transformer(
            tokens,
            encoder_hidden_states=embeddings.hidden_states,
            pooled_text_emb=embeddings.pooled,
            micro_conds=torch.tensor([[4.0, 8.0, 0.0, 0.0, 6.0]]),
        )
    assert not torch.equal(logits, swapped.float().flatten(2).transpose(1, 2))


def test_decode_equals_pipeline_images(tiny_backends):
    backend = tiny_backends[(4, 8)]
    height, width = backend.grid
    images = make_pipeline(backend)(
        PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(3), output_type="np",
        height=height, width=width,
    ).images
    expected = (images * 255).round().astype(np.uint8)
    tokens = our_tokens(backend, [PROMPT], 4, 10.0, [3])
    assert np.array_equal(backend.decode(tokens), expected)


def test_tiny_build_is_deterministic():
    first = build_tiny_amused(seed=5)
    second = build_tiny_amused(seed=5)
    other = build_tiny_amused(seed=6)
    state = first.transformer.state_dict()
    assert all(torch.equal(value, second.transformer.state_dict()[key]) for key, value in state.items())
    assert not all(torch.equal(value, other.transformer.state_dict()[key]) for key, value in state.items())
    with pytest.raises(ValueError, match="even"):
        build_tiny_amused(grid=(3, 4))


@pytest.mark.parametrize(
    ("variant", "transformer_params", "image_size", "grid"),
    [("256", 603_537_664, 256, 16), ("512", 608_257_792, 512, 32)],
)
def test_full_size_configs_on_meta(variant, transformer_params, image_size, grid):
    with torch.device("meta"):
        transformer, vq, text_encoder = amused.build_random_components(variant)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    # Exact counts of these configurations. The 512 model's extra 4,720,128 parameters are its
    # 2x2 down-sampling and up-sampling convolutions (768 x 768 x 4 each) with their norms.
    assert count(transformer) == transformer_params
    assert count(text_encoder) == 123_650_304  # CLIP ViT-L/14 text tower + 768 x 768 projection
    assert count(vq) == 146_244_675
    assert transformer.embed.embeddings.weight.shape == (8256, 768)  # 8192 codes + mask, padded
    assert transformer.mlm_layer.conv2.out_channels == 8192
    assert transformer.config.vocab_size - 1 == 8255
    assert len(transformer.transformer_layers) == 22
    assert (transformer.down_block.downsample is not None) == (variant == "512")
    assert vq.quantize.embedding.weight.shape == (8192, 64)
    assert 2 ** (len(vq.config.block_out_channels) - 1) * grid == image_size
    assert text_encoder.text_model.embeddings.token_embedding.weight.shape == (49408, 768)
    assert text_encoder.text_projection.weight.shape == (768, 768)
    assert len(text_encoder.text_model.encoder.layers) == 12


@pytest.fixture(scope="module")
def random_amused_256():
    started = time.perf_counter()
    backend = load_amused(variant="256", random_weights=True)
    return backend, time.perf_counter() - started


def test_load_random_weights_256(random_amused_256):
    backend, seconds = random_amused_256
    assert backend.name == "amused-256"
    assert backend.grid == (16, 16)
    assert backend.image_size == (256, 256)
    assert backend.codebook_size == 8192
    assert backend.mask_token_id == 8255
    assert backend.revision == "random"
    assert backend.micro_conds.tolist() == [[256.0, 256.0, 0.0, 0.0, 6.0]]
    schedule = backend.default_schedule(12)
    assert torch.equal(schedule.guidance, torch.full((12,), 10.0))
    assert torch.equal(schedule.remask_temperature, torch.linspace(2, 0, 12))
    embeddings = backend.encode_prompts(["a red cube", ""])
    assert embeddings.hidden_states.shape == (2, 77, 768)
    assert embeddings.pooled.shape == (2, 768)
    assert seconds < 120, f"building the random amused-256 took {seconds:.0f} s"


def test_random_weights_256_logits(random_amused_256):
    backend, _ = random_amused_256
    embeddings = backend.encode_prompts(["a red cube"])
    with torch.no_grad():
        logits = backend.logits(torch.full((1, 16, 16), backend.mask_token_id), embeddings)
    assert logits.shape == (1, 256, 8192)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.fixture
def empty_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("variant", ["256", "512"])
def test_offline_without_weights_fails_fast(empty_offline_cache, variant):
    spec = amused.VARIANTS[variant]
    started = time.perf_counter()
    with pytest.raises(AmusedWeightsError) as caught:
        load_amused(variant)
    assert time.perf_counter() - started < 10
    message = str(caught.value)
    assert spec.repo_id in message
    assert spec.revision in message
    assert "HF_HUB_OFFLINE" in message
    assert "path=" in message
    assert "--model-path" in message


def test_offline_error_names_requested_revision(empty_offline_cache):
    revision = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(AmusedWeightsError, match=revision):
        load_amused("256", revision=revision)


def test_pinned_revisions_are_commits():
    for spec in amused.VARIANTS.values():
        assert len(spec.revision) == 40
        assert all(c in "0123456789abcdef" for c in spec.revision)
    with pytest.raises(ValueError, match="variant"):
        load_amused("1024", random_weights=True)


def test_local_path_missing_subfolders(tmp_path):
    (tmp_path / "transformer").mkdir()
    with pytest.raises(AmusedWeightsError, match="missing vqvae, text_encoder, tokenizer"):
        load_amused("256", path=tmp_path)


def test_local_path_loads_saved_components(tmp_path, empty_offline_cache):
    tiny = build_tiny_amused(seed=2)
    tiny.transformer.save_pretrained(tmp_path / "transformer")
    tiny.vq.save_pretrained(tmp_path / "vqvae")
    tiny.text_encoder.save_pretrained(tmp_path / "text_encoder")
    tiny.tokenizer.save_pretrained(tmp_path / "tokenizer")

    backend = load_amused("256", path=tmp_path)
    assert backend.name == "amused-256"
    assert backend.revision == f"path:{tmp_path.resolve()}"
    assert backend.weights_dir == tmp_path
    assert backend.mask_token_id == 31
    saved = tiny.transformer.state_dict()
    assert all(torch.equal(value, backend.transformer.state_dict()[key]) for key, value in saved.items())
    assert backend.tokenizer(PROMPT).input_ids == tiny.tokenizer(PROMPT).input_ids
    assert backend.text_max_length == 77


def test_gradient_checkpointing_same_gradients():
    backend = build_tiny_amused(seed=3, grid=(8, 8))
    transformer = backend.transformer
    tokens = torch.randint(0, backend.codebook_size, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    tokens[:, :4] = backend.mask_token_id
    embeddings = backend.encode_prompts(BATCH_PROMPTS[:2])
    attention_calls = []
    transformer.transformer_layers[0].attn1.register_forward_hook(lambda *args: attention_calls.append(1))

    backend.logits(tokens, embeddings).logsumexp(-1).mean().backward()
    plain = {name: p.grad.clone() for name, p in transformer.named_parameters() if p.grad is not None}
    plain_calls = len(attention_calls)
    transformer.zero_grad(set_to_none=True)
    attention_calls.clear()
    backend.enable_gradient_checkpointing()
    backend.logits(tokens, embeddings).logsumexp(-1).mean().backward()

    assert plain_calls == 1
    assert len(attention_calls) == 2  # the backward pass recomputed the layer
    assert plain
    checkpointed = {name: p.grad for name, p in transformer.named_parameters() if p.grad is not None}
    assert checkpointed.keys() == plain.keys()
    for name, grad in checkpointed.items():
        assert torch.allclose(grad, plain[name], atol=1e-5), name
    with torch.no_grad():
        backend.logits(tokens, embeddings)
    assert len(attention_calls) == 3  # no recomputation without gradients


def test_random_weights_rejects_path(tmp_path):
    with pytest.raises(ValueError, match="drop path"):
        load_amused("256", path=tmp_path, random_weights=True)

"""Pretraining of the embedded shapes model: the VQ tokenizer, then the masked transformer.

Both stages draw scenes from the seeded shapes world, so a run is reproducible.

* ``train_vq``: the patch-local VQ tokenizer (``PatchVQModel``). Its training
  set is every distinct 4 x 4 patch of a seeded pool of scenes, with all
  colour-shape pairs included, because the tokenizer must encode anything the
  judge may look at. Each distinct patch counts once, so rare edge patches
  weigh as much as the background. Phase 1 trains encoder and decoder as a
  plain autoencoder, so distinct patches get well separated latents. The
  codebook is then initialised from those latents (one entry per distinct
  patch, the unused entries parked far away), and phase 2 trains through the
  quantiser (straight-through gradients, codebook and commitment losses).
* ``train_mdm``: aMUSEd's masked-token objective on fresh scenes every step,
  never drawing a held-out colour-shape pair: a masking ratio
  ``cos(pi/2 * u)`` with ``u ~ U(0, 1)``, cross-entropy on masked tokens, and the
  prompt replaced by the empty prompt with probability ``cond_dropout`` so that
  classifier-free guidance works.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cogrpo.models import shapes_components as comp
from cogrpo.world.prompts import render_entry, sample_metadata
from cogrpo.world.render import BACKGROUND

logger = logging.getLogger(__name__)


def scene_batch(rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """Draw ``batch_size`` scenes; return images in [-1, 1] (B, 3, H, W) and their prompts."""
    images, prompts = [], []
    for _ in range(batch_size):
        entry = sample_metadata(rng)
        images.append(render_entry(entry, rng))
        prompts.append(entry["prompt"])
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, prompts


@dataclass
class VQTrainConfig:
    """Settings of the VQ tokenizer stage."""

    steps: int = 1500
    finetune_steps: int = 1500
    pool_scenes: int = 2000
    lr: float = 1e-3
    seed: int = 0


def distinct_patches(pixels: torch.Tensor, patch: int = comp.VQ_DOWNSAMPLE) -> torch.Tensor:
    """Return the distinct ``patch`` x ``patch`` patches (N, 3, patch, patch) of images (B, 3, H, W), sorted."""
    channels = pixels.shape[1]
    patches = pixels.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 1, 4, 5)
    flat = patches.reshape(-1, channels * patch * patch)
    return torch.unique(flat, dim=0).view(-1, channels, patch, patch)


def patch_pool(config: VQTrainConfig) -> torch.Tensor:
    """Draw ``config.pool_scenes`` scenes (held-out pairs allowed) and return their distinct patches."""
    rng = np.random.default_rng(config.seed)
    images = [render_entry(sample_metadata(rng), rng, allow_held_out=True) for _ in range(config.pool_scenes)]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return distinct_patches(pixels)


@torch.no_grad()
def init_codebook(vq, patches: torch.Tensor) -> None:
    """Set one codebook entry per distinct patch (its current latent); park the other entries far away."""
    latents = vq.encode(patches).latents.flatten(1)
    weight = vq.quantize.embedding.weight
    if len(latents) > len(weight):
        raise ValueError(f"{len(latents)} distinct patches exceed the codebook's {len(weight)} entries; "
                         "raise CODEBOOK_SIZE or simplify the world")
    weight[: len(latents)] = latents
    weight[len(latents) :] = 100.0 * latents.abs().max()


def train_vq(config: VQTrainConfig, out_dir: Path, log_every: int = 100):
    """Train the patch-local VQ tokenizer (autoencoder phase, then quantised phase) and save it under ``out_dir``."""
    torch.manual_seed(config.seed)
    vq = comp.build_vq()
    start = time.time()
    patches = patch_pool(config)
    logger.info("vq training set: %d distinct patches from %d scenes", len(patches), config.pool_scenes)
    total = config.steps + config.finetune_steps
    optimizer = torch.optim.Adam(vq.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    history = []
    for step in range(total):
        latents = vq.encode(patches).latents
        if step < config.steps:
            quantized, commit_loss = latents, torch.zeros(())
        else:
            if step == config.steps:
                init_codebook(vq, patches)
            quantized, commit_loss, _ = vq.quantize(latents)
        recon = vq.decoder(vq.post_quant_conv(quantized))
        loss = F.mse_loss(recon, patches) + commit_loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if (step + 1) % log_every == 0:
            logger.info("vq step %d loss %.5f (%.0f s)", step + 1, np.mean(history[-log_every:]), time.time() - start)
    if config.finetune_steps == 0:
        init_codebook(vq, patches)
    vq.eval()
    with torch.no_grad():
        recon = vq(patches).sample
        codes = encode_tokens(vq, patches).flatten()
    fidelity = tokenizer_fidelity(vq)
    logger.info("tokenizer fidelity %.3f", fidelity["overall"])
    out_dir.mkdir(parents=True, exist_ok=True)
    vq.save_pretrained(out_dir, safe_serialization=True)
    stats = {
        "config": asdict(config),
        "fidelity": fidelity,
        "distinct_patches": len(patches),
        "distinct_codes": int(len(torch.unique(codes))),
        "max_abs_error": float((recon - patches).abs().max()),
        "first_loss": float(np.mean(history[:10])),
        "final_loss": float(np.mean(history[-min(100, max(1, len(history) // 10)) :])),
        "wall_time_s": time.time() - start,
        "steps": total,
    }
    (out_dir / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    return vq, stats


@torch.no_grad()
def tokenizer_fidelity(vq, token_map: torch.Tensor | None = None, images_per_prompt: int = 4, seed: int = 0,
                       limit: int | None = None) -> dict[str, float]:
    """Share of ground-truth held-out images the shapes judge still finds correct after encoding and decoding.

    For every prompt of the held-out set (the first ``limit`` when given),
    ``images_per_prompt`` scenes are drawn from its metadata, held-out pairs
    included. Each is encoded to tokens (mapped by ``token_map`` when given),
    decoded, and judged by the strict shapes reward under GenEval's rules.
    Returns the share per tag and ``overall``.
    """
    from cogrpo.benchmarks.geneval import TAGS
    from cogrpo.rewards.shapes import StrictShapesReward
    from cogrpo.world.prompts import load_eval_set

    entries = load_eval_set()[:limit]
    rng = np.random.default_rng(seed)
    drawn = [(entry, render_entry(entry, rng, allow_held_out=True)) for entry in entries for _ in range(images_per_prompt)]
    pixels = torch.from_numpy(np.stack([image for _, image in drawn])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    decoded = []
    for begin in range(0, len(pixels), 256):
        tokens = encode_tokens(vq, pixels[begin : begin + 256], token_map)
        shape = (*tokens.shape, vq.config.latent_channels)
        images = vq.decode(tokens, force_not_quantize=True, shape=shape).sample
        decoded.append(((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    images = list(np.concatenate(decoded))
    metadata = [entry for entry, _ in drawn]
    scores = StrictShapesReward().score(images, [entry["prompt"] for entry in metadata], metadata)
    result = {}
    for tag in TAGS:
        tagged = [score for score, entry in zip(scores, metadata) if entry["tag"] == tag]
        if tagged:
            result[tag] = float(np.mean(tagged))
    result["overall"] = float(np.mean(scores))
    return result


@dataclass
class MDMTrainConfig:
    """Settings of the masked-transformer stage (aMUSEd's objective)."""

    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    cond_dropout: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 500
    seed: int = 0


def random_mask(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return a bool mask (B, L) hiding ``ceil(cos(pi/2 * u) * L)`` random positions per row, u ~ U(0, 1)."""
    batch, length = tokens.shape
    u = torch.rand(batch, generator=generator)
    n_masked = torch.ceil(torch.cos(u * math.pi / 2) * length).clamp(1, length).long()
    order = torch.rand(batch, length, generator=generator).argsort(dim=1)
    ranks = order.argsort(dim=1)
    return ranks < n_masked[:, None]


@torch.no_grad()
def encode_tokens(vq, pixels: torch.Tensor, token_map: torch.Tensor | None = None) -> torch.Tensor:
    """Return the VQ token ids (B, h, w) of images in [-1, 1], mapped to canonical codes when a map is given."""
    latents = vq.encode(pixels).latents
    _, _, (_, _, indices) = vq.quantize(latents)
    indices = indices.view(pixels.shape[0], latents.shape[2], latents.shape[3])
    return token_map[indices] if token_map is not None else indices


TOKEN_MAP_FILE = "token_map.json"


@torch.no_grad()
def build_token_map(vq, threshold: float = 0.1, samples: int = 1280, seed: int = 0) -> dict:
    """Map every code that decodes to plain background onto the most used such code.

    A VQ trained with codebook restarts spreads the flat background over many
    interchangeable codes. Left as is, the masked transformer would have to
    guess which of them an encoder picked, an entropy that carries no image
    content. A code counts as background when an image made only of that code
    decodes, away from the borders, to within ``threshold`` (in [-1, 1] units)
    of the background colour.
    """
    codebook = comp.CODEBOOK_SIZE
    grid = torch.arange(codebook).view(codebook, 1, 1).expand(codebook, comp.GRID, comp.GRID).contiguous()
    images = vq.decode(grid, force_not_quantize=True, shape=(codebook, comp.GRID, comp.GRID, comp.LATENT_CHANNELS)).sample
    margin = comp.IMAGE_SIZE // 4
    centre = images[:, :, margin:-margin, margin:-margin]
    background = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1.0
    deviation = (centre - background).abs().amax(dim=(1, 2, 3))
    usage = torch.zeros(codebook)
    rng = np.random.default_rng(seed)
    for _ in range(max(1, samples // 64)):
        pixels, _ = scene_batch(rng, 64)
        usage += torch.bincount(encode_tokens(vq, pixels).flatten(), minlength=codebook).float()
    background_codes = (deviation < threshold).nonzero().flatten()
    canonical = torch.arange(codebook)
    if len(background_codes):
        target = int(background_codes[usage[background_codes].argmax()])
        canonical[background_codes] = target
    return {"canonical": canonical.tolist(), "threshold": threshold, "background_codes": len(background_codes),
            "background_code": int(canonical[background_codes[0]]) if len(background_codes) else None}


def load_token_map(model_dir: Path) -> torch.Tensor | None:
    """Return the canonical-code map saved next to the VQ, if any."""
    path = model_dir / TOKEN_MAP_FILE
    return torch.tensor(json.loads(path.read_text())["canonical"]) if path.exists() else None


def save_embedded_model(out_dir: Path, transformer, text_encoder, tokenizer, stats: dict) -> None:
    """Write the transformer, text encoder and tokenizer next to the VQ (safetensors), then swap them in."""
    staging = out_dir.with_name(out_dir.name + ".saving")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    transformer.save_pretrained(staging / "transformer", safe_serialization=True)
    text_encoder.save_pretrained(staging / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(staging / "tokenizer")
    (staging / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("transformer", "text_encoder", "tokenizer", "training.json"):
        target = out_dir / name
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        (staging / name).replace(target)
    staging.rmdir()


def train_mdm(config: MDMTrainConfig, model_dir: Path, log_every: int = 100):
    """Pretrain the transformer and text encoder on VQ tokens of fresh scenes."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed + 2)
    vq = comp.load_vq(model_dir / "vqvae").eval()
    token_map = load_token_map(model_dir)
    if token_map is None:
        token_map_info = build_token_map(vq, seed=config.seed)
        (model_dir / TOKEN_MAP_FILE).write_text(json.dumps(token_map_info) + "\n")
        token_map = torch.tensor(token_map_info["canonical"])
    tokenizer = comp.build_tokenizer()
    text_encoder = comp.build_text_encoder()
    transformer = comp.build_transformer()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / config.warmup_steps)
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps)))),
    )
    micro_conds = torch.tensor([[comp.IMAGE_SIZE, comp.IMAGE_SIZE, 0, 0, 6]], dtype=torch.float32)
    history: list[float] = []
    start = time.time()
    for step in range(config.steps):
        pixels, prompts = scene_batch(rng, config.batch_size)
        tokens = encode_tokens(vq, pixels, token_map).flatten(1)  # (B, L)
        drop = torch.rand(len(prompts), generator=generator) < config.cond_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        text = tokenizer(prompts, padding="max_length", max_length=comp.TEXT_MAX_LENGTH, truncation=True, return_tensors="pt")
        encoded = text_encoder(text.input_ids, output_hidden_states=True)
        masked = random_mask(tokens, generator)
        inputs = torch.where(masked, comp.MASK_TOKEN_ID, tokens).view(-1, comp.GRID, comp.GRID)
        logits = transformer(
            inputs,
            encoder_hidden_states=encoded.hidden_states[-2],
            pooled_text_emb=encoded.text_embeds,
            micro_conds=micro_conds.expand(len(prompts), -1),
        )  # (B, K, h, w)
        logits = logits.flatten(2).transpose(1, 2)  # (B, L, K)
        loss = F.cross_entropy(logits[masked], tokens[masked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if (step + 1) % log_every == 0:
            logger.info("mdm step %d loss %.4f (%.0f s)", step + 1, np.mean(history[-log_every:]), time.time() - start)
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            stats = {
                "config": asdict(config),
                "steps_done": step + 1,
                "final_loss": float(np.mean(history[-log_every:])),
                "loss_curve": [float(np.mean(history[i : i + log_every])) for i in range(0, len(history), log_every)],
                "wall_time_s": time.time() - start,
                "torch_threads": torch.get_num_threads(),
            }
            save_embedded_model(model_dir, transformer, text_encoder, tokenizer, stats)
    return transformer, text_encoder, history

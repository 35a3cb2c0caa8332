"""Benchmark the sampler against bare transformer forwards and against diffusers' AmusedPipeline.

For each model, three variants run side by side in one process:

* ``rollout``: ``cogrpo.sampling.sampler.sample`` at the backend's default
  schedule, which records the trajectory and the per-step log-probabilities and
  encodes the prompts;
* ``bare_forwards``: T calls of the backend's transformer on the same per-step
  input grids and prompt embeddings, with the unconditional and conditional
  rows batched into one forward as the sampler does, and nothing else;
* ``pipeline``: ``AmusedPipeline`` built from the same components, with
  ``output_type="latent"`` so that it stops at the tokens, as the sampler does.

A fourth, ``encode_prompts``, times the prompt encoding that ``rollout``
includes and ``bare_forwards`` does not.

Models: the embedded shapes model and aMUSEd-256 with random weights, at one
of three sizes:

* ``full``: the released configuration, the default on CUDA;
* ``reduced``: the same 16 x 16 grid and 8192-code vocabulary with a narrow,
  shallow transformer and text encoder. It is the default on the CPU, because
  one full-size rollout takes tens of minutes there;
* ``tiny``: the test components, the default with --small.

    python benchmarks/sampler.py [--small] [--device cpu|cuda] [--amused-size full|reduced|tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import (  # noqa: E402
    Goal,
    add_common_arguments,
    build_result,
    emit_result,
    finish_arguments,
    log,
    medians,
    quiet_stdout,
    run_alternating,
)

PROMPTS = (
    "a photo of a red circle",
    "a photo of two blue squares",
    "a photo of a green triangle above a yellow cross",
    "a photo of three purple circles",
    "a photo of an orange square left of a white triangle",
    "a photo of a brown cross",
    "a photo of four pink triangles",
    "a photo of a black circle and a gray square",
)
GOALS = {"rollout_over_bare_forwards": Goal("<=", 1.05), "images_per_s_ours_over_pipeline": Goal(">=", 1.0)}

# aMUSEd-256 with every width and depth cut. It keeps the 16 x 16 token grid and the
# 8192-code vocabulary, so softmax, sampling and the output layer keep their size. It also
# keeps the 77-token CLIP context and the 5-level VQ, so the pipeline's image size stays 256 px.
REDUCED_TRANSFORMER = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=704,
    in_channels=256,
    block_out_channels=256,
    num_res_blocks=1,
    block_num_heads=4,
    cond_embed_dim=256,
    encoder_hidden_size=256,
    sample_size=16,
    downsample=False,
    upsample=False,
)
REDUCED_TEXT_ENCODER = dict(hidden_size=256, intermediate_size=1024, projection_dim=256, num_hidden_layers=4, num_attention_heads=4)
REDUCED_VQ = dict(block_out_channels=(32, 32, 32, 32, 32), norm_num_groups=8)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--batch", type=int, default=None, help="images per call (default 8, 2 with --small)")
    parser.add_argument("--steps", type=int, default=None, help="decoding steps T (default 12, 4 with --small)")
    parser.add_argument(
        "--amused-size",
        choices=("full", "reduced", "tiny"),
        default=None,
        help="aMUSEd-256 configuration (default: full on CUDA, reduced on the CPU, tiny with --small)",
    )
    parser.add_argument("--models", default="shapes,amused-256", help="comma-separated models to run (shapes, amused-256)")
    args = finish_arguments(parser.parse_args(argv))
    args.batch = args.batch or (2 if args.small else 8)
    args.steps = args.steps or (4 if args.small else 12)
    if args.amused_size is None and args.small:
        args.amused_size = "tiny"
    elif args.amused_size is None:
        args.amused_size = "full" if args.device.type == "cuda" else "reduced"
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(args.models) - {"shapes", "amused-256"})
    if unknown or not args.models:
        raise SystemExit(f"invalid --models {','.join(args.models)!r}; allowed: shapes, amused-256")
    return args


# --------------------------------------------------------------------------- models


def build_reduced_amused_256(seed: int, device: torch.device):
    """Build aMUSEd-256 at the reduced configuration with random weights."""
    from diffusers import UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from cogrpo.models import amused

    configs = amused.amused_configs("256")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = UVit2DModel(**{**configs["transformer"], **REDUCED_TRANSFORMER})
        vq = VQModel(**{**configs["vqvae"], **REDUCED_VQ})
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**{**configs["text_encoder"], **REDUCED_TEXT_ENCODER}))
    spec = amused.VARIANTS["256"]
    return amused.AmusedBackend(
        "amused-256-reduced",
        transformer.eval(),
        vq.eval(),
        text_encoder.eval(),
        amused.build_clip_tokenizer(),
        grid=(spec.grid, spec.grid),
        image_size=(spec.image_size, spec.image_size),
        mask_token_id=int(transformer.config.vocab_size) - 1,
        default_guidance=amused.DEFAULT_GUIDANCE,
        default_remask_temperature=amused.DEFAULT_REMASK_TEMPERATURE,
        text_max_length=amused.TEXT_MAX_LENGTH,
        device=device,
        revision=f"random-reduced-seed{seed}",
    )


def build_amused_256(size: str, seed: int, device: torch.device):
    """Build aMUSEd-256 with random weights at ``size`` (full, reduced or tiny)."""
    from cogrpo.models.amused import build_tiny_amused, load_amused

    if size == "full":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return load_amused("256", random_weights=True, device=device)
    if size == "reduced":
        return build_reduced_amused_256(seed, device)
    return build_tiny_amused(seed=seed, grid=(16, 16), device=device)


def parameter_counts(backend) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("transformer", backend.transformer), ("text_encoder", backend.text_encoder), ("vqvae", backend.vq))
    }


# --------------------------------------------------------------------------- variants


def make_variants(backend, prompts: list[str], steps: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Return the four timed callables for one backend, all working on the same prompts and seeds."""
    from diffusers import AmusedPipeline, AmusedScheduler

    from cogrpo.models.base import PromptEmbeddings
    from cogrpo.sampling.sampler import sample

    batch = len(prompts)
    # Generators on the model's device, for both our sampler and the pipeline, so that
    # neither copies the probabilities to the host for sampling.
    seeds = [seed * 1000 + index for index in range(batch)]

    def generators() -> list[torch.Generator]:
        return [torch.Generator(device).manual_seed(s) for s in seeds]

    def rollout():
        return sample(backend, prompts, generators(), steps=steps, chunk_size=batch)

    # The per-step inputs of one real rollout, so the bare forwards see the grids the sampler saw.
    trajectory = rollout()
    grids = [trajectory.input_tokens(step).to(device) for step in range(steps)]
    grids = [torch.cat([grid, grid]) for grid in grids]  # (2B, h, w): unconditional rows, then conditional
    cond = backend.encode_prompts(prompts)
    uncond = backend.encode_prompts([""])
    embeddings = PromptEmbeddings.cat(
        [PromptEmbeddings(uncond.hidden_states.expand(batch, -1, -1), uncond.pooled.expand(batch, -1)), cond]
    )
    micro_conds = backend.micro_conds.expand(2 * batch, -1)

    # The backend's autocast context, so the bare forwards run in the dtype that backend.logits uses.
    autocast = getattr(backend, "autocast", contextlib.nullcontext)

    @torch.inference_mode()
    def bare_forwards():
        for grid in grids:
            with autocast():
                backend.transformer(
                    grid,
                    encoder_hidden_states=embeddings.hidden_states,
                    pooled_text_emb=embeddings.pooled,
                    micro_conds=micro_conds,
                )

    def encode_prompts():
        backend.encode_prompts(prompts)
        backend.encode_prompts([""])

    # The pipeline returns latents (tokens), so it never calls its VQ. The VQ is left out because AmusedPipeline
    # reads the downsampling factor from a VQModel config field that PatchVQModel lacks, so the factor is set
    # from the backend instead.
    pipeline = AmusedPipeline(
        vqvae=None,
        tokenizer=backend.tokenizer,
        text_encoder=backend.text_encoder,
        transformer=backend.transformer,
        scheduler=AmusedScheduler(mask_token_id=backend.mask_token_id),
    )
    pipeline.vae_scale_factor = backend.image_size[0] // backend.grid[0]
    pipeline.set_progress_bar_config(disable=True)
    height, width = backend.image_size

    def run_pipeline():
        return pipeline(
            prompts,
            num_inference_steps=steps,
            guidance_scale=backend.default_guidance,
            generator=torch.Generator(device).manual_seed(seed),
            output_type="latent",
            height=height,
            width=width,
        )

    return {"rollout": rollout, "bare_forwards": bare_forwards, "pipeline": run_pipeline, "encode_prompts": encode_prompts}


def benchmark_model(label: str, backend, args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    prompts = [PROMPTS[index % len(PROMPTS)] for index in range(args.batch)]
    variants = make_variants(backend, prompts, args.steps, args.seed, args.device)
    seconds = run_alternating(variants, args.device, args.repeats, args.warmup, label=label)
    median = medians(seconds)
    ratios = {
        f"{label}/rollout_over_bare_forwards": median["rollout"] / median["bare_forwards"],
        f"{label}/images_per_s_ours_over_pipeline": median["pipeline"] / median["rollout"],
    }
    return {f"{label}/{name}": values for name, values in seconds.items()}, ratios


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    seconds: dict[str, list[float]] = {}
    ratios: dict[str, float] = {}
    goals: dict[str, Goal] = {}
    models: dict[str, dict[str, Any]] = {}
    with quiet_stdout(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        for label in args.models:
            if label == "shapes":
                from cogrpo.models.shapes import load_shapes_backend

                backend = load_shapes_backend(device=args.device)
                models[label] = {"weights": "embedded (cogrpo/assets/shapes)"}
            else:
                log(f"building aMUSEd-256 ({args.amused_size}, random weights)")
                backend = build_amused_256(args.amused_size, args.seed, args.device)
                models[label] = {"weights": "random", "size": args.amused_size}
            models[label].update(grid=list(backend.grid), codebook_size=backend.codebook_size, parameters=parameter_counts(backend))
            model_seconds, model_ratios = benchmark_model(label, backend, args)
            seconds.update(model_seconds)
            ratios.update(model_ratios)
            goals.update({f"{label}/{name}": goal for name, goal in GOALS.items()})
            del backend
    median = medians(seconds)
    images_per_s = {
        f"{label}/{variant}": args.batch / median[f"{label}/{variant}"]
        for label in args.models
        for variant in ("rollout", "pipeline")
    }
    note = None
    if "amused-256" in args.models and args.amused_size != "full":
        note = (
            f"aMUSEd-256 ran at the {args.amused_size} configuration, not the released size; "
            "pass --amused-size full (default on CUDA) for the full-size model"
        )
    emit_result(
        build_result(
            "sampler",
            args.device,
            ratios,
            goals,
            seconds,
            images_per_s=images_per_s,
            batch=args.batch,
            steps=args.steps,
            repeats=args.repeats,
            warmup=args.warmup,
            small=args.small,
            generator_device=str(args.device),
            models=models,
            note=note,
        )
    )


if __name__ == "__main__":
    main()

"""Benchmark how rollout and iteration time grow with T, batch size and group size.

On the embedded shapes model, each axis is swept over three sizes with the
other settings fixed. The sizes of one axis run side by side in alternating
rounds, and a least-squares line ``seconds = intercept + slope * size`` is fitted
through the medians, with its R².

* rollout (``sample`` at the default schedule) against the number of steps T and
  against the batch size;
* one model-phase Co-GRPO iteration (``CoGRPOTrainer.train_iteration`` with
  the ``shapes`` reward) against T, the number of prompts (so the batch size)
  and the group size (images per prompt).

The rollout does not depend on the group size except through the batch size
(prompts x group size), so it has no group-size axis of its own.

    python benchmarks/scaling.py [--small] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
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
    linear_fit,
    medians,
    quiet_stdout,
    run_alternating,
)

R2_GOAL = 0.98
PROMPTS = (
    "a photo of a red circle",
    "a photo of two blue squares",
    "a photo of a green triangle above a yellow cross",
    "a photo of three purple circles",
)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    args = finish_arguments(parser.parse_args(argv))
    if args.small:
        args.rollout_base = {"steps": 2, "batch": 2}
        args.rollout_axes = {"steps": (1, 2, 3), "batch": (1, 2, 3)}
        args.iteration_base = {"steps": 2, "prompts": 1, "group_size": 2, "chunk_size": 2}
        args.iteration_axes = {"steps": (1, 2, 3), "prompts": (1, 2, 3), "group_size": (2, 3, 4)}
    else:
        args.rollout_base = {"steps": 12, "batch": 8}
        args.rollout_axes = {"steps": (6, 12, 24), "batch": (4, 8, 16)}
        args.iteration_base = {"steps": 12, "prompts": 2, "group_size": 4, "chunk_size": 8}
        args.iteration_axes = {"steps": (6, 12, 24), "prompts": (1, 2, 4), "group_size": (2, 4, 8)}
    return args


def make_trainer(args: argparse.Namespace, steps: int, prompts: int, group_size: int, chunk_size: int):
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import build_backend, build_reward
    from cogrpo.rl.trainer import CoGRPOTrainer

    config = TrainConfig(
        model="shapes",
        reward="shapes",
        mode="co",
        prompts_per_iteration=prompts,
        group_size=group_size,
        steps=steps,
        chunk_size=chunk_size,
        seed=args.seed,
        device=str(args.device),
        final_eval=False,
        checkpoint_every=0,
    )
    # build_backend sets the compute dtype as `cogrpo train` does (bfloat16 autocast on CUDA, float32 on the CPU).
    return CoGRPOTrainer(config, build_backend(config, args.device), build_reward(config.reward))


def model_phase_iteration(trainer) -> None:
    """Run the trainer's iteration 0 (a model phase) again, so every run does the same work."""
    trainer.iteration = 0
    trainer.train_iteration()


def sweep(args: argparse.Namespace, name: str, sizes: tuple[int, ...], make_function) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time ``make_function(size)`` for each size in alternating rounds and fit a line through the medians."""
    variants = {f"{name}={size}": make_function(size) for size in sizes}
    seconds = run_alternating(variants, args.device, args.repeats, args.warmup, label=name)
    median = medians(seconds)
    fit = linear_fit(list(sizes), [median[f"{name}={size}"] for size in sizes])
    return seconds, {"x": list(sizes), "median_s": [median[f"{name}={size}"] for size in sizes], **fit}


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    from cogrpo.models.shapes import load_shapes_backend
    from cogrpo.sampling.sampler import image_generators, sample

    seconds: dict[str, list[float]] = {}
    fits: dict[str, dict[str, Any]] = {}
    with quiet_stdout(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        backend = load_shapes_backend(device=args.device)

        def rollout(steps: int, batch: int):
            prompts = [PROMPTS[index % len(PROMPTS)] for index in range(batch)]
            seeds = [args.seed * 1000 + index for index in range(batch)]
            return lambda: sample(backend, prompts, image_generators(seeds), steps=steps, chunk_size=max(args.rollout_axes["batch"]))

        base = args.rollout_base
        for axis, sizes in args.rollout_axes.items():
            settings = lambda size, axis=axis: {**base, axis: size}  # noqa: E731
            axis_seconds, fits[f"rollout/{axis}"] = sweep(
                args, f"rollout/{axis}", sizes, lambda size, settings=settings: rollout(**settings(size))
            )
            seconds.update(axis_seconds)
        del backend

        base = args.iteration_base
        for axis, sizes in args.iteration_axes.items():
            trainers = {size: make_trainer(args, **{**base, axis: size}) for size in sizes}
            axis_seconds, fits[f"iteration/{axis}"] = sweep(
                args, f"iteration/{axis}", sizes, lambda size, trainers=trainers: lambda: model_phase_iteration(trainers[size])
            )
            seconds.update(axis_seconds)
            del trainers

    ratios = {f"{name}/r2": fit["r2"] for name, fit in fits.items()}
    goals = {name: Goal(">=", R2_GOAL) for name in ratios}
    emit_result(
        build_result(
            "scaling",
            args.device,
            ratios,
            goals,
            seconds,
            fits=fits,
            rollout_fixed=args.rollout_base,
            iteration_fixed=args.iteration_base,
            repeats=args.repeats,
            warmup=args.warmup,
            small=args.small,
            model="shapes (embedded weights)",
            reward="shapes",
        )
    )


if __name__ == "__main__":
    main()

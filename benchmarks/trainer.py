"""Benchmark one Co-GRPO iteration against the same work written by hand, and its peak memory.

Time, side by side in one process, on the embedded shapes model with the
``shapes`` reward:

* ``iteration``: ``CoGRPOTrainer.train_iteration()`` in its model phase
  (iteration 0 each time, so every run draws the same prompts, seeds and
  trained steps);
* ``by_hand``: the same rollout (``sample`` with the trainer's schedule
  policy), decoding, reward and group advantages. Then the clipped-ratio loss,
  forward and backward, on the same trained steps of each chunk, and one AdamW
  step. It has none of the trainer's bookkeeping: statistics, finite checks,
  gradient clipping, the reward guard and metrics.

Then the peak memory of one model-phase iteration against the number of steps
T (chunk size fixed) and against the chunk size, which is the number of images
in each forward/backward micro-batch (T fixed), with a least-squares line
through each.

    python benchmarks/trainer.py [--small] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import (  # noqa: E402
    Goal,
    add_common_arguments,
    build_result,
    emit_result,
    finish_arguments,
    linear_fit,
    log,
    medians,
    memory_method,
    peak_memory,
    quiet_stdout,
    run_alternating,
)

MIB = 1024 * 1024
# Peak memory may change by at most this factor over the whole range of T, and must
# change by at least this factor over the range of chunk sizes.
FLAT_IN_STEPS = 1.10
GROWS_WITH_CHUNK = 1.10
GOALS = {
    "iteration_over_by_hand": Goal("<=", 1.10),
    "peak_memory_max_steps_over_min_steps": Goal("<=", FLAT_IN_STEPS),
    "peak_memory_max_chunk_over_min_chunk": Goal(">=", GROWS_WITH_CHUNK),
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--prompts", type=int, default=None, help="prompts per iteration (default 4, 1 with --small)")
    parser.add_argument("--group-size", type=int, default=None, help="images per prompt (default 8, 4 with --small)")
    parser.add_argument("--steps", type=int, default=None, help="decoding steps T of the timed iteration (default 12, 2 with --small)")
    parser.add_argument("--chunk-size", type=int, default=None, help="images per micro-batch of the timed iteration (default 16, 2 with --small)")
    parser.add_argument(
        "--memory-steps", default=None, help="comma-separated T values of the memory sweep (default 6,12,24; 1,2,3 with --small)"
    )
    parser.add_argument(
        "--memory-chunks", default=None, help="comma-separated chunk sizes of the memory sweep (default 4,8,16; 1,2,4 with --small)"
    )
    parser.add_argument("--memory-repeats", type=int, default=None, help="measured iterations per memory point (default 3, 1 with --small)")
    args = finish_arguments(parser.parse_args(argv))
    small = args.small
    args.prompts = args.prompts or (1 if small else 4)
    args.group_size = args.group_size or (4 if small else 8)
    args.steps = args.steps or (2 if small else 12)
    args.chunk_size = args.chunk_size or (2 if small else 16)
    args.memory_steps = parse_sizes(args.memory_steps or ("1,2,3" if small else "6,12,24"), "--memory-steps")
    args.memory_chunks = parse_sizes(args.memory_chunks or ("1,2,4" if small else "4,8,16"), "--memory-chunks")
    args.memory_repeats = args.memory_repeats or (1 if small else 3)
    return args


def parse_sizes(text: str, option: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"invalid {option} {text!r}; expected comma-separated integers") from None
    if len(set(sizes)) < 2 or min(sizes) < 1:
        raise SystemExit(f"invalid {option} {text!r}; expected at least two different positive integers")
    return sorted(sizes)


def make_trainer(args: argparse.Namespace, steps: int, chunk_size: int):
    """Build a model-phase Co-GRPO trainer on a freshly loaded shapes model."""
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import build_backend, build_reward
    from cogrpo.rl.trainer import CoGRPOTrainer

    config = TrainConfig(
        model="shapes",
        reward="shapes",
        mode="co",
        prompts_per_iteration=args.prompts,
        group_size=args.group_size,
        steps=steps,
        chunk_size=chunk_size,
        seed=args.seed,
        device=str(args.device),
        final_eval=False,
        checkpoint_every=0,
    )
    # build_backend sets the compute dtype as `cogrpo train` does (bfloat16 autocast on CUDA, float32 on the CPU).
    backend = build_backend(config, args.device)
    return CoGRPOTrainer(config, backend, build_reward(config.reward))


def model_phase_iteration(trainer) -> None:
    """Run the trainer's iteration 0 (a model phase) again."""
    trainer.iteration = 0
    result = trainer.train_iteration()
    if result.phase != "model":
        raise RuntimeError(f"iteration 0 ran the {result.phase} phase; the benchmark times the model phase")


def make_by_hand(trainer):
    """Return a callable that does the model-phase work of iteration 0 without the trainer's bookkeeping."""
    from cogrpo.rl.objective import group_advantages
    from cogrpo.rl.trainer import derive_seed
    from cogrpo.sampling.sampler import UnconditionalCache, committed_log_prob, image_generators, sample

    config = trainer.config
    backend = trainer.backend
    device = backend.device
    entries, indices = trainer.local_batch(0)
    prompts = [entry["prompt"] for entry in entries]
    metadata = [entry if "include" in entry else None for entry in entries]
    seeds = [derive_seed(config.seed, 0, 2, index) for index in indices]
    chunks = [slice(start, min(len(prompts), start + config.chunk_size)) for start in range(0, len(prompts), config.chunk_size)]
    # The trainer's own choice of trained steps (keyed by the chunk's first global image index),
    # so both variants train the same (chunk, step) pairs.
    trained_steps = [trainer._trained_steps(0, indices[rows.start]) for rows in chunks]
    total_terms = sum((rows.stop - rows.start) * len(steps) for rows, steps in zip(chunks, trained_steps))
    params = [p for p in backend.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr_model, weight_decay=config.weight_decay)
    cache = UnconditionalCache()
    # The trainer wraps its reward in a guard with a timeout and retries, but the hand-written loop calls the reward itself.
    reward = getattr(trainer.reward, "inner", trainer.reward)

    def by_hand() -> None:
        trajectory = sample(
            backend, prompts, image_generators(seeds, device=backend.device), steps=config.steps, schedule=trainer.schedule_policy,
            chunk_size=config.chunk_size, uncond_cache=cache,
        )
        images = []
        for rows in chunks:
            images.extend(backend.decode(trajectory.tokens[rows].view(-1, *trajectory.grid)))
        rewards = reward.score_detailed(images, prompts, metadata).scores.astype(np.float32)
        advantages = group_advantages(torch.from_numpy(rewards).view(-1, config.group_size)).flatten().to(device)
        uncond = cache.get(backend)
        optimizer.zero_grad(set_to_none=True)
        for rows, steps in zip(chunks, trained_steps):
            cond = backend.encode_prompts(prompts[rows])
            for step in steps:
                new_logp, _ = committed_log_prob(backend, trajectory, step, rows, cond, uncond)
                ratio = torch.exp(new_logp - trajectory.model_logp[rows, step].to(device))
                clipped = ratio.clamp(1.0 - config.clip_range, 1.0 + config.clip_range)
                loss = -torch.minimum(ratio * advantages[rows], clipped * advantages[rows]).sum() / total_terms
                loss.backward()
        optimizer.step()

    return by_hand


def memory_sweep(args: argparse.Namespace, axis: str, sizes: list[int]) -> dict[str, Any]:
    """Return the peak memory (MiB) of one model-phase iteration at each size of ``axis``, with a linear fit."""
    peaks = []
    for size in sizes:
        steps, chunk_size = (size, args.chunk_size) if axis == "steps" else (args.steps, size)
        trainer = make_trainer(args, steps, chunk_size)
        model_phase_iteration(trainer)  # allocates the optimizer state before measuring
        measured = [peak_memory(lambda: model_phase_iteration(trainer), args.device) / MIB for _ in range(args.memory_repeats)]
        peaks.append(statistics.median(measured))
        log(f"memory, {axis} = {size}: {peaks[-1]:.1f} MiB (runs {', '.join(f'{value:.1f}' for value in measured)})")
        del trainer
    fit = linear_fit(sizes, peaks)
    return {
        "x": sizes,
        "peak_mib": peaks,
        "slope_mib_per_unit": fit["slope"],
        "intercept_mib": fit["intercept"],
        "r2": fit["r2"],
        "fixed": {"chunk_size": args.chunk_size} if axis == "steps" else {"steps": args.steps},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    with quiet_stdout(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        trainer = make_trainer(args, args.steps, args.chunk_size)
        variants = {"iteration": lambda: model_phase_iteration(trainer), "by_hand": make_by_hand(trainer)}
        seconds = run_alternating(variants, args.device, args.repeats, args.warmup, label="time")
        trained_pairs = int(trainer.history[-1].metrics["policy/model/trained_steps"])
        compute_dtype = str(trainer.backend.compute_dtype).removeprefix("torch.")
        del trainer, variants
        method = memory_method(args.device)
        memory = {
            "method": method,
            "against_steps": memory_sweep(args, "steps", args.memory_steps),
            "against_chunk_size": memory_sweep(args, "chunk_size", args.memory_chunks),
        }
    median = medians(seconds)
    floor = 1.0 / MIB  # one byte, so that a zero reading cannot divide by zero
    steps_peaks = memory["against_steps"]["peak_mib"]
    chunk_peaks = memory["against_chunk_size"]["peak_mib"]
    ratios = {
        "iteration_over_by_hand": median["iteration"] / median["by_hand"],
        "peak_memory_max_steps_over_min_steps": max(steps_peaks[-1], floor) / max(steps_peaks[0], floor),
        "peak_memory_max_chunk_over_min_chunk": max(chunk_peaks[-1], floor) / max(chunk_peaks[0], floor),
    }
    emit_result(
        build_result(
            "trainer",
            args.device,
            ratios,
            GOALS,
            seconds,
            memory=memory,
            memory_method=method,
            images_per_iteration=args.prompts * args.group_size,
            prompts=args.prompts,
            group_size=args.group_size,
            steps=args.steps,
            chunk_size=args.chunk_size,
            trained_chunk_step_pairs=trained_pairs,
            repeats=args.repeats,
            warmup=args.warmup,
            small=args.small,
            model="shapes (embedded weights)",
            compute_dtype=compute_dtype,
            reward="shapes",
        )
    )


if __name__ == "__main__":
    main()

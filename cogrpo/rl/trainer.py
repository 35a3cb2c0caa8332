"""The Co-GRPO training loop: rollout, reward, group advantages, alternating updates.

One iteration:

1. draw the global prompt batch from a generator seeded by (seed, iteration);
   this process keeps its share of whole prompt groups;
2. roll out G images per prompt with the current model and schedule policy
   (one generator per image on the model's device, seeded from (seed, iteration,
   image index));
3. decode, score, and turn rewards into group-relative advantages. Invalid
   rewards (None, NaN, infinite or raised) get advantage 0 and a line in
   ``failures.jsonl``; when more than ``max_invalid_reward_fraction`` of the
   iteration's rewards are invalid, every process skips the update;
4. update the phase's parameters. The model phase recomputes the
   log-probability of the tokens committed at a random subset of steps, with
   the same chunks, guidance and temperatures as the rollout. It minimises the
   clipped ratio objective plus an optional k3 KL to the reference model. The
   schedule phase does the same with the schedule policy's log-probabilities of
   the recorded actions. The KL term covers every committed token, those of
   zero-variance groups (advantage 0) included: it pulls the policy toward the
   reference whatever the rewards, as in the KL-regularised GRPO objective;
5. check for divergence: ``divergence_patience`` updates in a row whose
   gradient norm before clipping or approximate KL exceed their thresholds
   stop training, and a first inner epoch whose ratios are not 1 within
   ``ratio_tolerance`` is logged as a warning.

Every random choice is a function of (seed, iteration), so a resumed run
repeats what an uninterrupted run would do.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogrpo.faults import FaultPlan
from cogrpo.models.base import MaskedImageBackend, PromptEmbeddings
from cogrpo.rewards.base import Scorer
from cogrpo.rewards.guard import GuardedScorer
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.objective import clipped_objective, group_advantages, k3_kl
from cogrpo.rewards.requirements import MetadataNeeds, check_prompts, metadata_needs, read_utf8
from cogrpo.sampling.sampler import Trajectory, UnconditionalCache, committed_log_prob, image_generators, sample
from cogrpo.sampling.schedule import SchedulePolicy

logger = logging.getLogger(__name__)


class TrainingAborted(RuntimeError):
    """Training stopped because too many consecutive updates were skipped."""


# Causes of a skipped update, the keys of ``CoGRPOTrainer.skip_counts``.
SKIP_NON_FINITE = "non_finite"
SKIP_INVALID_REWARDS = "invalid_rewards"


@dataclass
class SkipReport:
    """The cause of a skipped update: the inner epoch and the ranks whose loss or gradients were not finite."""

    epoch: int
    ranks: list[int]


def derive_seed(*parts: int) -> int:
    """Return a 63-bit seed derived from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


@dataclass
class IterationResult:
    """The outcome of one iteration (rewards, advantages, metrics), for logs and tests."""

    iteration: int
    phase: str
    rewards: np.ndarray
    advantages: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    # SKIP_NON_FINITE or SKIP_INVALID_REWARDS when the update was skipped.
    skip_reason: str | None = None


class PromptSource:
    """Training prompts: a callable returning ``n`` metadata dicts for a numpy generator.

    ``needs`` (see ``cogrpo.rewards.requirements``) rejects, before training, a
    prompt file without GenEval metadata for a reward that judges metadata, and
    metadata naming a class that the reward cannot detect.
    """

    def __init__(self, name: str, needs: MetadataNeeds | None = None, reward: str = "the reward"):
        needs = needs or MetadataNeeds()
        if name != "shapes":
            path = Path(name)
            if path.suffix not in {".txt", ".jsonl"}:
                raise ValueError(f"unknown prompt source {name!r}; use 'shapes' or a path to a .txt or .jsonl file")
            if not path.is_file():
                raise ValueError(f"prompt file {name} not found; pass an existing .txt or .jsonl file, or 'shapes'")
            self._pool = _read_prompt_file(path, needs.classes)
        else:
            from cogrpo.world.prompts import TrainingPrompts

            self._pool = TrainingPrompts().pool
        if not self._pool:
            raise ValueError(f"prompt source {name!r} has no prompts")
        check_prompts(self._pool, needs, reward, name)

    def sample(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        return [self._pool[i] for i in rng.integers(len(self._pool), size=n)]


def _read_prompt_file(path: Path, classes: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    text = read_utf8(path)
    if path.suffix == ".jsonl":
        from cogrpo.benchmarks.geneval import load_metadata

        return load_metadata(path, allowed_classes=classes)
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    return [{"prompt": p} for p in prompts]


class CoGRPOTrainer:
    """Trains a masked image backend and its schedule policy with Co-GRPO (or a baseline mode)."""

    def __init__(
        self,
        config: TrainConfig,
        backend: MaskedImageBackend,
        reward: Scorer,
        prompts: PromptSource | None = None,
        accelerator=None,
        failures_path: Path | None = None,
    ):
        """``failures_path`` is the JSON Lines file that rank 0 appends invalid rewards to (None: log only)."""
        from accelerate import Accelerator

        self.config = config
        self.backend = backend
        self.reward = GuardedScorer.wrap(reward, timeout_s=config.reward_timeout_s, retries=config.reward_retries)
        self.prompts = prompts or PromptSource(config.prompts, metadata_needs(reward), config.reward)
        self.accelerator = accelerator or Accelerator(cpu=backend.device.type == "cpu")
        world = self.accelerator.num_processes
        self.faults = FaultPlan.from_env()
        self.faults.check_world_size(world)
        if config.prompts_per_iteration % world:
            raise ValueError(
                f"invalid prompts_per_iteration={config.prompts_per_iteration}; it must be divisible by the "
                f"number of processes ({world}) so that every process gets whole prompt groups"
            )
        self.uncond_cache = UnconditionalCache()
        self.iteration = 0
        self.consecutive_skips = 0
        self.consecutive_divergent = 0
        self.skip_counts = {SKIP_NON_FINITE: 0, SKIP_INVALID_REWARDS: 0}
        self.failures_path = failures_path
        self.history: list[IterationResult] = []
        self._setup_model()
        self._setup_schedule()

    # ------------------------------------------------------------------ setup

    def _setup_model(self) -> None:
        config = self.config
        transformer = self.backend.transformer
        self.reference = None
        if config.mode == "schedule":
            transformer.requires_grad_(False)
            self.model_params: list[torch.nn.Parameter] = []
        elif config.lora_rank > 0:
            from peft import LoraConfig

            transformer.requires_grad_(False)
            transformer.add_adapter(
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=config.lora_alpha or config.lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                )
            )
            self.model_params = [p for p in transformer.parameters() if p.requires_grad]
        else:
            transformer.requires_grad_(True)
            self.model_params = list(transformer.parameters())
            if config.kl_weight > 0:
                self.reference = copy.deepcopy(transformer).requires_grad_(False).eval()
        if config.gradient_checkpointing:
            if not hasattr(self.backend, "enable_gradient_checkpointing"):
                name = getattr(self.backend, "name", type(self.backend).__name__)
                raise ValueError(f"backend {name!r} does not support gradient checkpointing; run without --gradient-checkpointing")
            self.backend.enable_gradient_checkpointing()
        transformer.eval()  # no dropout in rollouts or recomputation
        if self.model_params:
            self.model_optimizer = torch.optim.AdamW(self.model_params, lr=config.lr_model, weight_decay=config.weight_decay)
            prepared, self.model_optimizer = self.accelerator.prepare(transformer, self.model_optimizer)
            self.backend.transformer = prepared
        else:
            self.model_optimizer = None

    def _setup_schedule(self) -> None:
        config = self.config
        default = self.backend.default_schedule(config.steps)
        self.schedule_policy = SchedulePolicy(
            default,
            learn=config.schedule_knobs,
            init_std=config.schedule_init_std,
            learn_std=config.schedule_learn_std,
            min_std=config.schedule_min_std,
        ).to(self.backend.device)
        if config.mode == "model":
            self.schedule_policy.requires_grad_(False)
            self.schedule_optimizer = None
        else:
            params = [p for p in self.schedule_policy.parameters() if p.requires_grad]
            self.schedule_optimizer = torch.optim.Adam(params, lr=config.lr_schedule)

    @property
    def unwrapped_transformer(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.backend.transformer)

    # ------------------------------------------------------------------ one iteration

    def phase(self, iteration: int) -> str:
        """Return which parameters iteration ``iteration`` updates: "model" or "schedule"."""
        if self.config.mode != "co":
            return self.config.mode
        cycle = self.config.model_phase_iterations + self.config.schedule_phase_iterations
        return "model" if iteration % cycle < self.config.model_phase_iterations else "schedule"

    def local_batch(self, iteration: int) -> tuple[list[dict[str, Any]], list[int]]:
        """Return this process's prompt metadata (repeated G times) and the global image indices."""
        config = self.config
        rng = np.random.default_rng([config.seed, iteration, 1])
        entries = self.prompts.sample(rng, config.prompts_per_iteration)
        per_rank = config.prompts_per_iteration // self.accelerator.num_processes
        first = self.accelerator.process_index * per_rank
        local = []
        indices = []
        for p in range(first, first + per_rank):
            for g in range(config.group_size):
                local.append(entries[p])
                indices.append(p * config.group_size + g)
        return local, indices

    def rollout(self, iteration: int, entries: list[dict[str, Any]], indices: list[int]) -> Trajectory:
        """Sample the trajectories of this process's images."""
        seeds = [derive_seed(self.config.seed, iteration, 2, i) for i in indices]
        schedule = self.backend.default_schedule(self.config.steps) if self.config.mode == "model" else self.schedule_policy
        return sample(
            self.backend,
            [e["prompt"] for e in entries],
            image_generators(seeds, device=self.backend.device),
            steps=self.config.steps,
            schedule=schedule,
            schedule_mode="sample",
            chunk_size=self.config.chunk_size,
            uncond_cache=self.uncond_cache,
        )

    def score(self, trajectory: Trajectory, entries: list[dict[str, Any]], indices: list[int] | None = None) -> np.ndarray:
        """Decode and score the images; failed rewards are NaN.

        ``indices`` are the images' global indices from ``local_batch``, used to name prompts in logs.
        """
        return self.score_with_failures(trajectory, entries, indices)[0]

    def score_with_failures(self, trajectory: Trajectory, entries: list[dict[str, Any]],
                            indices: list[int] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Decode and score the images; return the rewards (NaN where invalid) and one record per invalid reward.

        A record contains the iteration, rank, prompt id (the prompt's position in the iteration's global
        batch), global image index, prompt text, reward name and error.
        """
        images = []
        for start in range(0, len(trajectory), self.config.chunk_size):
            grid = trajectory.tokens[start : start + self.config.chunk_size].view(-1, *trajectory.grid)
            images.extend(self.backend.decode(grid))
        metadata = [e if "include" in e else None for e in entries]
        result = self.reward.score_detailed(images, [e["prompt"] for e in entries], metadata)
        scores = result.scores
        errors = list(result.errors) or [None] * len(images)
        if self._fault("nan_reward"):
            scores = np.full(len(images), np.nan, dtype=np.float32)
            errors = ["injected fault nan_reward"] * len(images)
        if indices is None:
            indices = self.local_batch(self.iteration)[1]
        rank = self.accelerator.process_index
        for index, error in enumerate(errors):
            if error:
                logger.warning("iteration %d (rank %d): reward failed for image %d of prompt %d (%r): %s", self.iteration,
                               rank, indices[index], indices[index] // self.config.group_size, entries[index]["prompt"], error)
        rewards = scores.astype(np.float32)
        non_finite = ~np.isfinite(rewards)
        failures = []
        if non_finite.any():
            logger.warning("iteration %d (rank %d): %d of %d rewards are not finite; they get advantage 0",
                           self.iteration, rank, int(non_finite.sum()), len(rewards))
            for index in np.flatnonzero(non_finite).tolist():
                failures.append({
                    "iteration": self.iteration,
                    "rank": rank,
                    "prompt_id": indices[index] // self.config.group_size,
                    "image_index": indices[index],
                    "prompt": entries[index]["prompt"],
                    "reward": self.reward.name,
                    "error": errors[index] or f"reward is {float(scores[index])!r}",
                })
            rewards = np.where(non_finite, np.nan, rewards).astype(np.float32)
        return rewards, failures

    def train_iteration(self) -> IterationResult:
        """Run one iteration and advance ``self.iteration``."""
        iteration = self.iteration
        config = self.config
        phase = self.phase(iteration)
        entries, indices = self.local_batch(iteration)
        start = time.perf_counter()
        trajectory = self.rollout(iteration, entries, indices)
        rollout_time = time.perf_counter() - start
        rewards, failures = self.score_with_failures(trajectory, entries, indices)
        advantages = group_advantages(torch.from_numpy(rewards).view(-1, config.group_size)).flatten()
        invalid, total = self._record_failures(failures, len(rewards))
        invalid_fraction = invalid / total
        update_start = time.perf_counter()
        self._inject_process_fault()
        skip_reason = None
        if invalid_fraction > config.max_invalid_reward_fraction:
            # Every process has the same counts, so every process skips and no collective is left unmatched.
            metrics: dict[str, float] = {}
            skip_reason = SKIP_INVALID_REWARDS
            logger.warning(
                "iteration %d (rank %d): skipped the %s update because %d of %d rewards (%.1f%%) are invalid, more than "
                "max_invalid_reward_fraction=%g; the failed samples are listed in %s",
                iteration, self.accelerator.process_index, phase, invalid, total, 100 * invalid_fraction,
                config.max_invalid_reward_fraction, self.failures_path or "the log above",
            )
        else:
            if phase == "model":
                metrics, skip = self._update_model(iteration, trajectory, advantages, indices)
            else:
                metrics, skip = self._update_schedule(trajectory, advantages)
            if skip is None:
                self._check_divergence(iteration, phase, metrics)
            else:
                skip_reason = SKIP_NON_FINITE
                prompt_ids = sorted({i // config.group_size for i in indices})
                logger.warning(
                    "iteration %d (rank %d): skipped the %s update at inner epoch %d because the loss or a gradient was "
                    "not finite on rank(s) %s; this rank's prompts %s: %s",
                    iteration, self.accelerator.process_index, phase, skip.epoch, skip.ranks, prompt_ids,
                    sorted({e["prompt"] for e in entries}),
                )
        metrics.update(self._reward_metrics(rewards, advantages))
        metrics["rewards/invalid_fraction"] = invalid_fraction
        metrics["time/rollout_s"] = rollout_time
        metrics["time/update_s"] = time.perf_counter() - update_start
        if skip_reason is not None:
            self.consecutive_skips += 1
            self.skip_counts[skip_reason] += 1
        else:
            self.consecutive_skips = 0
        for reason, count in self.skip_counts.items():
            metrics[f"skips/{reason}"] = float(count)
        if skip_reason is not None and self.consecutive_skips >= config.max_consecutive_skips:
            raise TrainingAborted(
                f"{self.consecutive_skips} consecutive updates were skipped (limit max_consecutive_skips="
                f"{config.max_consecutive_skips}); the last checkpoint is kept"
            )
        result = IterationResult(iteration, phase, rewards, advantages.numpy(), metrics, skip_reason is not None,
                                 skip_reason)
        self.history.append(result)
        self.iteration += 1
        return result

    def _record_failures(self, failures: list[dict[str, Any]], count: int) -> tuple[int, int]:
        """Gather the invalid-reward records of all processes, and append them to ``failures_path`` on rank 0.

        Returns (invalid rewards, rewards) over all processes. Every process calls this once per iteration,
        because the gather is a collective.
        """
        shares = [{"count": count, "failures": failures}]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            shares = gather_object(shares)
        gathered = [record for share in shares for record in share["failures"]]
        total = sum(share["count"] for share in shares)
        if gathered and self.failures_path is not None and self.accelerator.is_main_process:
            self.failures_path.parent.mkdir(parents=True, exist_ok=True)
            with self.failures_path.open("a", encoding="utf-8") as handle:
                for record in gathered:
                    handle.write(json.dumps(record) + "\n")
        return len(gathered), total

    def _fault(self, kind: str) -> bool:
        return self.faults.fires(kind, self.accelerator.process_index, self.iteration)

    def _inject_process_fault(self) -> None:
        """Raise out-of-memory or hang here when ``COGRPO_FAULT`` plans it for this process (tests only)."""
        rank = self.accelerator.process_index
        if self._fault("oom"):
            raise torch.OutOfMemoryError(f"injected fault oom at iteration {self.iteration} on rank {rank}")
        if self._fault("hang"):
            logger.warning("iteration %d (rank %d): injected fault hang; sleeping until killed", self.iteration, rank)
            while True:
                time.sleep(60)

    def _reward_metrics(self, rewards: np.ndarray, advantages: torch.Tensor) -> dict[str, float]:
        finite = rewards[np.isfinite(rewards)]
        grouped = torch.from_numpy(rewards).view(-1, self.config.group_size)
        zero_var = float((torch.nan_to_num(grouped.amax(1) - grouped.amin(1), nan=0.0) <= 1e-8).float().mean())
        return {
            f"rewards/{self.reward.name}/mean": float(finite.mean()) if len(finite) else math.nan,
            f"rewards/{self.reward.name}/std": float(finite.std()) if len(finite) else math.nan,
            "rewards/failed": float((~np.isfinite(rewards)).sum()),
            "advantages/mean": float(advantages.mean()),
            "advantages/std": float(advantages.std()),
            "advantages/abs_max": float(advantages.abs().max()),
            "advantages/zero_variance_groups": zero_var,
        }

    # ------------------------------------------------------------------ updates

    def _trained_steps(self, iteration: int, first_image: int) -> list[int]:
        """Return the denoising steps trained for the chunk whose first image has global index ``first_image``.

        Keying by the global image index (not the chunk's position on this process) gives every
        image the same trained steps however the prompts are split across processes, provided
        ``chunk_size`` divides the number of images per process.
        """
        steps = self.config.steps
        count = max(1, int(round(self.config.train_step_fraction * steps)))
        rng = np.random.default_rng([self.config.seed, iteration, 3, first_image])
        return sorted(rng.choice(steps, size=count, replace=False).tolist())

    def _update_model(self, iteration: int, trajectory: Trajectory, advantages: torch.Tensor,
                      indices: list[int]) -> tuple[dict[str, float], SkipReport | None]:
        config = self.config
        transformer = self.backend.transformer
        device = self.backend.device
        uncond = self.uncond_cache.get(self.backend)
        chunks = [slice(s, min(len(trajectory), s + config.chunk_size)) for s in range(0, len(trajectory), config.chunk_size)]
        plan = [(c, step) for c in chunks for step in self._trained_steps(iteration, indices[c.start])]
        total_terms = sum(c.stop - c.start for c, _ in plan)
        stats: dict[str, list[float]] = {"clip_fraction": [], "approx_kl": [], "max_abs_ratio_minus_one": [], "kl_ref": [], "entropy": []}
        skip = None
        losses = []
        first_ratio: list[float] = []
        for epoch in range(config.inner_epochs):
            self.model_optimizer.zero_grad(set_to_none=True)
            epoch_loss = torch.zeros((), device=device)
            cond_cache: dict[int, PromptEmbeddings] = {}
            for position, (rows, step) in enumerate(plan):
                if rows.start not in cond_cache:
                    cond_cache[rows.start] = self.backend.encode_prompts(trajectory.prompts[rows])
                cond = cond_cache[rows.start]
                last = position == len(plan) - 1
                sync = contextlib.nullcontext() if last else self.accelerator.no_sync(transformer)
                with sync:
                    new_logp, per_token = committed_log_prob(self.backend, trajectory, step, rows, cond, uncond)
                    old_logp = trajectory.model_logp[rows, step].to(device)
                    adv = advantages[rows].to(device)
                    loss_terms, term_stats = clipped_objective(new_logp - old_logp, adv, config.clip_range)
                    loss = loss_terms.sum() / total_terms
                    if self._fault("nan_loss"):
                        loss = loss * float("nan")
                    if config.kl_weight > 0:
                        ref_logp = self._reference_log_probs(trajectory, step, rows, cond, uncond)
                        committed = trajectory.committed_at(step, rows).to(device)
                        kl = (k3_kl(per_token, ref_logp) * committed).sum(-1)
                        loss = loss + config.kl_weight * kl.sum() / total_terms
                        stats["kl_ref"].append(float(kl.detach().mean()))
                    self.accelerator.backward(loss)
                epoch_loss += loss.detach()
                for key, value in term_stats.items():
                    stats[key].append(float(value))
                if epoch == 0:
                    first_ratio.append(float(term_stats["max_abs_ratio_minus_one"]))
            if self._fault("nan_grad"):
                _poison_first_gradient(self.model_params)
            bad_ranks = self._non_finite_ranks(epoch_loss, self.model_params)
            if bad_ranks:
                skip = SkipReport(epoch, bad_ranks)
                self.model_optimizer.zero_grad(set_to_none=True)
                break
            grad_norm = self.accelerator.clip_grad_norm_(self.model_params, config.max_grad_norm)
            stats.setdefault("grad_norm", []).append(float(grad_norm))
            self.model_optimizer.step()
            losses.append(float(epoch_loss))
        metrics = {f"policy/model/{k}": float(np.mean(v)) for k, v in stats.items() if v}
        metrics["policy/model/max_abs_ratio_minus_one"] = max(stats["max_abs_ratio_minus_one"] or [0.0])
        metrics.update(self._update_extremes("model", stats, first_ratio))
        if losses:
            metrics["loss/model"] = float(np.mean(losses))
        metrics["policy/model/trained_steps"] = float(len(plan))
        return metrics, skip

    def _reference_log_probs(self, trajectory, step, rows, cond, uncond) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                live = self.backend.transformer
                self.backend.transformer = self.reference
                try:
                    _, per_token = committed_log_prob(self.backend, trajectory, step, rows, cond, uncond)
                finally:
                    self.backend.transformer = live
                return per_token
            model = self.unwrapped_transformer
            model.disable_adapters()
            try:
                _, per_token = committed_log_prob(self.backend, trajectory, step, rows, cond, uncond)
            finally:
                model.enable_adapters()
            return per_token

    def _update_schedule(self, trajectory: Trajectory, advantages: torch.Tensor) -> tuple[dict[str, float], SkipReport | None]:
        config = self.config
        policy = self.schedule_policy
        raw = trajectory.raw_actions.to(policy.mean.device)
        old_logp = trajectory.schedule_logp.to(policy.mean.device)
        adv = advantages.to(policy.mean.device)[:, None].expand_as(old_logp)
        active_steps = policy.active.any(-1)  # (T,)
        stats: dict[str, list[float]] = {"clip_fraction": [], "approx_kl": [], "max_abs_ratio_minus_one": []}
        skip = None
        first_ratio: list[float] = []
        for epoch in range(config.schedule_inner_epochs):
            self.schedule_optimizer.zero_grad(set_to_none=True)
            new_logp = policy.log_prob(raw)
            terms, term_stats = clipped_objective(new_logp - old_logp, adv, config.clip_range)
            loss = terms[:, active_steps].mean()
            if self._fault("nan_loss"):
                loss = loss * float("nan")
            loss.backward()
            params = [p for p in policy.parameters() if p.requires_grad]
            if self.accelerator.num_processes > 1:
                for p in params:
                    if p.grad is not None:
                        p.grad = self.accelerator.reduce(p.grad, reduction="mean")
            if self._fault("nan_grad"):
                _poison_first_gradient(params)
            bad_ranks = self._non_finite_ranks(loss.detach(), params)
            if bad_ranks:
                skip = SkipReport(epoch, bad_ranks)
                self.schedule_optimizer.zero_grad(set_to_none=True)
                break
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            stats.setdefault("grad_norm", []).append(float(grad_norm))
            self.schedule_optimizer.step()
            for key, value in term_stats.items():
                stats[key].append(float(value))
            if epoch == 0:
                first_ratio.append(float(term_stats["max_abs_ratio_minus_one"]))
        metrics = {f"policy/schedule/{k}": float(np.mean(v)) for k, v in stats.items() if v}
        metrics.update(self._update_extremes("schedule", stats, first_ratio))
        metrics["policy/schedule/entropy"] = float(policy.entropy().detach())
        mean = policy.mean_schedule()
        for index, knob in enumerate(("mask_ratio", "sample_temperature", "remask_temperature", "guidance")):
            values = mean.as_actions()[:, index]
            metrics[f"schedule/{knob}/mean"] = float(values.mean())
        return metrics, skip

    def _update_extremes(self, part: str, stats: dict[str, list[float]], first_ratio: list[float]) -> dict[str, float]:
        """Return the largest gradient norm, approximate KL and first-epoch |ratio - 1| of an update, over all processes.

        The divergence rule and the ratio warning read these values. The maximum over processes gives every
        process the same decision, so no process stops or warns alone.
        """
        values = torch.tensor(
            [max(stats.get("grad_norm") or [0.0]), max(stats.get("approx_kl") or [0.0]), max(first_ratio or [0.0])],
            dtype=torch.float64, device=self.backend.device,
        )
        if self.accelerator.num_processes > 1:
            values = self.accelerator.gather(values.view(1, -1)).amax(dim=0)
        grad_norm, approx_kl, ratio = values.tolist()
        return {f"policy/{part}/max_grad_norm": grad_norm, f"policy/{part}/max_approx_kl": approx_kl,
                f"policy/{part}/first_epoch_max_abs_ratio_minus_one": ratio}

    def _check_divergence(self, iteration: int, part: str, metrics: dict[str, float]) -> None:
        """Count divergent updates, warn about off-policy first epochs, and stop after ``divergence_patience`` in a row."""
        config = self.config
        ratio = metrics[f"policy/{part}/first_epoch_max_abs_ratio_minus_one"]
        if ratio > config.ratio_tolerance:
            logger.warning(
                "iteration %d: the %s update's first inner epoch has max |ratio - 1| = %.3g, above ratio_tolerance=%g; "
                "the rollout and the update computed different probabilities for the same policy (dtype, "
                "nondeterministic kernels or a bug)", iteration, part, ratio, config.ratio_tolerance,
            )
        reasons = []
        for name, threshold in (("max_grad_norm", config.divergence_grad_norm), ("max_approx_kl", config.divergence_approx_kl)):
            value = metrics[f"policy/{part}/{name}"]
            if threshold and not value <= threshold:
                reasons.append(f"{name.removeprefix('max_')} {value:.4g} > {threshold:g}")
        self.consecutive_divergent = self.consecutive_divergent + 1 if reasons else 0
        metrics["divergence/consecutive"] = float(self.consecutive_divergent)
        if not reasons:
            return
        logger.warning("iteration %d: divergent %s update (%s), %d of divergence_patience=%d in a row",
                       iteration, part, ", ".join(reasons), self.consecutive_divergent, config.divergence_patience)
        if self.consecutive_divergent >= config.divergence_patience:
            raise TrainingAborted(
                f"{self.consecutive_divergent} divergent updates in a row (last: {part} update at iteration {iteration}, "
                f"{', '.join(reasons)}); the last checkpoint is kept. Lower the learning rate, or raise "
                "divergence_grad_norm / divergence_approx_kl (0 disables a rule) if these values are expected"
            )

    def _non_finite_ranks(self, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[int]:
        """Return the ranks whose loss or a gradient is not finite. Every process gets the same list.

        The flags are gathered from all processes, so a NaN on one rank makes every rank skip the update
        and the parameters stay identical across ranks.
        """
        finite = bool(torch.isfinite(loss).all())
        for p in params:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                finite = False
                break
        flags = torch.tensor([0.0 if finite else 1.0], device=self.backend.device)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.gather(flags)
        return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def _poison_first_gradient(params: list[torch.nn.Parameter]) -> None:
    """Set the first element of the first gradient to NaN (the ``nan_grad`` fault)."""
    for p in params:
        if p.grad is not None:
            p.grad[(0,) * p.grad.dim()] = float("nan")
            return

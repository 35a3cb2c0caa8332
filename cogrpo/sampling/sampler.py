"""The masked-token sampler with per-step schedule actions, and its trajectory records.

One step, for every image of a batch (aMUSEd's ``AmusedScheduler.step`` with
the four knobs exposed):

1. guided logits ``uncond + w * (cond - uncond)`` in float32, with the
   unconditional (empty prompt) and conditional passes batched as one forward;
2. a token is sampled at every position from ``softmax(logits / tau_s)``
   (known positions keep their token);
3. confidence = ``log p(sampled) + tau_r * Gumbel``; committed positions get
   infinite confidence, so they are never re-masked;
4. the ``mask_len = floor(L * mask_ratio)`` least confident positions are
   re-masked. ``mask_len`` is clamped so that at least one token is revealed
   and, before the last step, at least one stays masked. The last step reveals
   everything.

Each image has its own ``torch.Generator``, used in the same order as aMUSEd's
scheduler (multinomial, then Gumbel noise), so an image does not depend on the
batch it is in, and a batch-of-one run equals ``AmusedPipeline`` at equal seeds.

The model policy's log-probability at step t is the sum of
``log softmax(guided_logits / tau_s)`` over the tokens committed at that step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from cogrpo.models.base import DefaultSchedule, MaskedImageBackend, PromptEmbeddings
from cogrpo.sampling.schedule import SchedulePolicy, to_constrained

NOT_COMMITTED = -1


@dataclass
class Trajectory:
    """A compact record of sampled decodes.

    ``tokens`` (B, L) are the final tokens and ``commit_step`` (B, L) the step
    at which each position was committed. ``actions`` (B, T, 4) are the knob
    values used and ``raw_actions`` (B, T, 4) the unconstrained schedule actions
    (None for a fixed schedule). ``model_logp`` and ``schedule_logp`` (B, T) are
    the rollout log-probabilities of the two policy parts.
    """

    prompts: list[str]
    tokens: torch.Tensor
    commit_step: torch.Tensor
    actions: torch.Tensor
    raw_actions: torch.Tensor | None
    model_logp: torch.Tensor
    schedule_logp: torch.Tensor
    grid: tuple[int, int]
    mask_token_id: int

    @property
    def steps(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def input_tokens(self, step: int, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Rebuild the input grid (B, h, w) of ``step``: tokens committed before it, the rest masked."""
        tokens = self.tokens if rows is None else self.tokens[rows]
        commit = self.commit_step if rows is None else self.commit_step[rows]
        grid = torch.where(commit < step, tokens, torch.full_like(tokens, self.mask_token_id))
        return grid.view(-1, *self.grid)

    def committed_at(self, step: int, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Return the (B, L) bool mask of positions committed at ``step``."""
        commit = self.commit_step if rows is None else self.commit_step[rows]
        return commit == step

    def select(self, rows: torch.Tensor | slice) -> Trajectory:
        """Return the trajectories of ``rows``."""
        if isinstance(rows, torch.Tensor):
            prompts = [self.prompts[i] for i in rows.tolist()]
        else:
            prompts = self.prompts[rows]
        return Trajectory(
            prompts=prompts,
            tokens=self.tokens[rows],
            commit_step=self.commit_step[rows],
            actions=self.actions[rows],
            raw_actions=None if self.raw_actions is None else self.raw_actions[rows],
            model_logp=self.model_logp[rows],
            schedule_logp=self.schedule_logp[rows],
            grid=self.grid,
            mask_token_id=self.mask_token_id,
        )

    @staticmethod
    def cat(parts: Sequence[Trajectory]) -> Trajectory:
        """Concatenate trajectories along the batch dimension."""
        raw = None if parts[0].raw_actions is None else torch.cat([p.raw_actions for p in parts])
        return Trajectory(
            prompts=[p for part in parts for p in part.prompts],
            tokens=torch.cat([p.tokens for p in parts]),
            commit_step=torch.cat([p.commit_step for p in parts]),
            actions=torch.cat([p.actions for p in parts]),
            raw_actions=raw,
            model_logp=torch.cat([p.model_logp for p in parts]),
            schedule_logp=torch.cat([p.schedule_logp for p in parts]),
            grid=parts[0].grid,
            mask_token_id=parts[0].mask_token_id,
        )


class UnconditionalCache:
    """The empty-prompt embedding of a backend, computed once."""

    def __init__(self) -> None:
        self._value: PromptEmbeddings | None = None

    def get(self, backend: MaskedImageBackend) -> PromptEmbeddings:
        if self._value is None:
            self._value = backend.encode_prompts([""])
        return self._value


def guided_logits(
    backend: MaskedImageBackend,
    tokens: torch.Tensor,
    cond: PromptEmbeddings,
    uncond: PromptEmbeddings,
    guidance: torch.Tensor,
) -> torch.Tensor:
    """Return float32 guided logits (B, L, K) for token grids (B, h, w) and guidance scales (B,).

    The backend's logits are cast to float32 before guidance, so the softmax,
    log-softmax and Gumbel steps run in float32 even when the transformer runs
    under bfloat16 autocast. Pass ``guidance`` on the CPU: whether the
    unconditional pass can be skipped is decided from its values, which on an
    accelerator would wait for the device.
    """
    batch = tokens.shape[0]
    if bool((guidance == 1.0).all()):
        return backend.logits(tokens, cond).float()
    uncond_rows = PromptEmbeddings(
        uncond.hidden_states.expand(batch, -1, -1), uncond.pooled.expand(batch, -1)
    )
    both = backend.logits(torch.cat([tokens, tokens]), PromptEmbeddings.cat([uncond_rows, cond])).float()
    uncond_logits, cond_logits = both.chunk(2)
    scale = guidance.to(device=both.device, dtype=both.dtype).view(-1, 1, 1)
    return uncond_logits + scale * (cond_logits - uncond_logits)


def token_log_probs(logits: torch.Tensor, sample_temperature: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Return log p(tokens) (B, L) under ``softmax(logits / tau_s)``."""
    return _scaled_token_log_probs(logits / sample_temperature.view(-1, 1, 1), tokens)


def _scaled_token_log_probs(scaled_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    log_probs = F.log_softmax(scaled_logits, dim=-1)
    return log_probs.gather(-1, tokens[..., None].clamp_max(scaled_logits.shape[-1] - 1))[..., 0]


def committed_log_prob(
    backend: MaskedImageBackend,
    trajectory: Trajectory,
    step: int,
    rows: torch.Tensor | slice,
    cond: PromptEmbeddings,
    uncond: PromptEmbeddings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute the model policy's log-probability (B,) of step ``step`` for ``rows``.

    Returns the summed log-probability of the tokens committed at that step and
    the per-token log-probabilities (B, L) (zero elsewhere), for KL terms.
    """
    actions = trajectory.actions[rows][:, step]
    logits = guided_logits(backend, trajectory.input_tokens(step, rows).to(backend.device), cond, uncond, actions[:, 3])
    per_token = token_log_probs(logits, actions[:, 1].to(backend.device), trajectory.tokens[rows].to(backend.device))
    committed = trajectory.committed_at(step, rows).to(backend.device)
    per_token = torch.where(committed, per_token, torch.zeros_like(per_token))
    return per_token.sum(-1), per_token


def _gumbel(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    noise = torch.zeros(shape, device=generator.device).uniform_(0, 1, generator=generator)
    return -torch.log((-torch.log(noise.clamp(1e-20))).clamp(1e-20))


@torch.inference_mode()
def _decode_chunk(
    backend: MaskedImageBackend,
    cond: PromptEmbeddings,
    uncond: PromptEmbeddings,
    actions: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, steps = actions.shape[:2]
    h, w = backend.grid
    length = h * w
    device = backend.device
    mask_id = backend.mask_token_id
    tokens = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    commit_step = torch.full((batch, length), NOT_COMMITTED, dtype=torch.int16, device=device)
    # Kept on the device and copied once at the end, so a step waits for the device only where
    # sampling needs the probabilities on the host (CPU generators).
    model_logp = torch.zeros(batch, steps, dtype=torch.float32, device=device)
    actions_device = actions.to(device)
    for step in range(steps):
        ratio, sample_temperature, remask_temperature, _ = actions_device[:, step].unbind(-1)
        logits = guided_logits(backend, tokens.view(batch, h, w), cond, uncond, actions[:, step, 3])
        # Divided once for both the sampling softmax and the log-probabilities. token_log_probs divides the
        # same way, so a recomputation in the trainer gives bitwise the same values.
        scaled_logits = logits / sample_temperature.view(-1, 1, 1)
        probs = F.softmax(scaled_logits, dim=-1)  # (B, L, K)
        unknown = tokens == mask_id
        # Sampling uses each image's generator, on the generator's device, as aMUSEd's scheduler does;
        # generators on the model's device avoid copying the probabilities to the host.
        generator_device = generators[0].device
        probs_for_sampling = probs if probs.device == generator_device else probs.to(generator_device)
        sampled = torch.stack(
            [torch.multinomial(probs_for_sampling[i], 1, generator=generators[i])[:, 0] for i in range(batch)]
        ).to(device)
        sampled = torch.where(unknown, sampled, tokens)
        if step == steps - 1:
            remask = torch.zeros_like(unknown)
        else:
            mask_len = (length * ratio.float()).floor()[:, None]  # float32, as aMUSEd's scheduler
            mask_len = torch.minimum(unknown.sum(-1, keepdim=True) - 1, mask_len)
            mask_len = torch.maximum(torch.ones_like(mask_len), mask_len)
            selected = probs.gather(-1, sampled[..., None])[..., 0]
            selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
            noise = torch.stack([_gumbel(torch.Size([length]), generators[i]) for i in range(batch)]).to(device)
            confidence = torch.log(selected.clamp(1e-20)) + remask_temperature[:, None] * noise
            confidence = torch.where(unknown, confidence, torch.full_like(confidence, float("inf")))
            cut_off = confidence.sort(dim=-1).values.gather(1, mask_len.long())
            remask = confidence < cut_off
        newly = unknown & ~remask
        per_token = _scaled_token_log_probs(scaled_logits, sampled)
        model_logp[:, step] = torch.where(newly, per_token, torch.zeros_like(per_token)).sum(-1)
        commit_step = torch.where(newly, torch.full_like(commit_step, step), commit_step)
        tokens = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
    return tokens.cpu(), commit_step.cpu(), model_logp.cpu()


def sample(
    backend: MaskedImageBackend,
    prompts: Sequence[str],
    generators: Sequence[torch.Generator],
    *,
    steps: int,
    schedule: DefaultSchedule | SchedulePolicy | None = None,
    schedule_mode: str = "sample",
    chunk_size: int = 16,
    uncond_cache: UnconditionalCache | None = None,
) -> Trajectory:
    """Decode one image per prompt and return the trajectory record.

    ``schedule`` is a fixed schedule (the backend's default when None) or a
    ``SchedulePolicy`` whose actions are sampled (``schedule_mode="sample"``)
    or set to its mean (``"mean"``). Images are processed in chunks of
    ``chunk_size``; the trainer recomputes log-probabilities with the same
    chunks, so rollout and recomputation see identical inputs.
    """
    if len(generators) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(generators)} generators; pass one generator per image")
    if steps < 1:
        raise ValueError(f"invalid number of steps {steps}; expected at least 1")
    tokens_per_image = backend.grid[0] * backend.grid[1]
    if steps > tokens_per_image:
        raise ValueError(
            f"invalid number of steps {steps}: {backend.name} images have {tokens_per_image} tokens, and a step "
            f"beyond that count would commit no token; pass at most {tokens_per_image} steps"
        )
    if schedule_mode not in {"sample", "mean"}:
        raise ValueError(f"invalid schedule_mode {schedule_mode!r}; allowed: 'sample', 'mean'")
    schedule = schedule if schedule is not None else backend.default_schedule(steps)
    batch = len(prompts)
    if isinstance(schedule, SchedulePolicy):
        if schedule.steps != steps:
            raise ValueError(f"the schedule policy has {schedule.steps} steps but {steps} were requested")
        with torch.no_grad():
            raw = schedule.sample_raw(generators) if schedule_mode == "sample" else schedule.mean_raw(batch)
            schedule_logp = schedule.log_prob(raw).cpu()
            actions = to_constrained(raw).cpu()
            actions[:, -1, 0] = 0.0
        raw = raw.cpu()
    else:
        if schedule.steps != steps:
            raise ValueError(f"the schedule has {schedule.steps} steps but {steps} were requested")
        actions = schedule.as_actions().float().expand(batch, -1, -1).clone()
        raw = None
        schedule_logp = torch.zeros(batch, steps)
    cache = uncond_cache or UnconditionalCache()
    uncond = cache.get(backend)
    parts = []
    for start in range(0, batch, chunk_size):
        rows = slice(start, min(batch, start + chunk_size))
        cond = backend.encode_prompts(list(prompts[rows]))
        parts.append(_decode_chunk(backend, cond, uncond, actions[rows], generators[rows]))
    return Trajectory(
        prompts=list(prompts),
        tokens=torch.cat([p[0] for p in parts]),
        commit_step=torch.cat([p[1] for p in parts]),
        actions=actions,
        raw_actions=raw,
        model_logp=torch.cat([p[2] for p in parts]),
        schedule_logp=schedule_logp,
        grid=tuple(backend.grid),
        mask_token_id=backend.mask_token_id,
    )


def image_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """Return one generator per image on ``device``, seeded with ``seeds``.

    CPU generators draw the same random numbers whatever the model's device
    (as ``AmusedPipeline`` does with CPU generators). Generators on the
    model's device avoid copying each step's probabilities to the host, but
    their draws differ from the CPU's.
    """
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

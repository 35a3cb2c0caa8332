"""Schedule policies: a distribution over the four sampler knobs at every step.

Knob order: mask ratio (share of the grid still masked after the step), sampling
temperature, re-mask (Gumbel) temperature, guidance scale. Actions are Gaussian
in an unconstrained space and mapped by a sigmoid (mask ratio) or a softplus
(the other three), so every sampled action is valid. The per-step means start at
the inverse map of the backend's default schedule, so the policy's mean
schedule equals the default schedule (up to float rounding) before training.
The mask ratio of the last step is always 0 and is not part of the action.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cogrpo.models.base import DefaultSchedule

KNOBS: tuple[str, ...] = ("mask_ratio", "sample_temperature", "remask_temperature", "guidance")
_MIN_POSITIVE = 1e-3
_MIN_RATIO = 1e-4


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """Return x with softplus(x) = y, for y > 0."""
    return y + torch.log(-torch.expm1(-y))


def to_unconstrained(actions: torch.Tensor) -> torch.Tensor:
    """Map knob values (..., 4) to the unconstrained space."""
    ratio = actions[..., 0].clamp(_MIN_RATIO, 1 - _MIN_RATIO)
    positive = actions[..., 1:].clamp_min(_MIN_POSITIVE)
    return torch.cat([torch.logit(ratio)[..., None], inverse_softplus(positive)], dim=-1)


def to_constrained(raw: torch.Tensor) -> torch.Tensor:
    """Map unconstrained actions (..., 4) to knob values."""
    return torch.cat([torch.sigmoid(raw[..., :1]), F.softplus(raw[..., 1:])], dim=-1)


class SchedulePolicy(nn.Module):
    """Per-step Gaussian schedule policy with learnable means and (optionally) standard deviations."""

    def __init__(
        self,
        default: DefaultSchedule,
        learn: Iterable[str] = KNOBS,
        init_std: float = 0.2,
        learn_std: bool = True,
        min_std: float = 0.02,
    ):
        super().__init__()
        learn = tuple(learn)
        unknown = set(learn) - set(KNOBS)
        if unknown:
            raise ValueError(f"unknown schedule knobs {sorted(unknown)}; allowed: {', '.join(KNOBS)}")
        if init_std <= 0:
            raise ValueError(f"invalid init_std {init_std}; expected a positive standard deviation")
        steps = default.steps
        self.steps = steps
        self.min_std = float(min_std)
        self.mean = nn.Parameter(to_unconstrained(default.as_actions()).clone())
        self.log_std = nn.Parameter(torch.full((steps, len(KNOBS)), math.log(init_std)), requires_grad=learn_std)
        active = torch.zeros(steps, len(KNOBS), dtype=torch.bool)
        for index, knob in enumerate(KNOBS):
            active[:, index] = knob in learn
        active[-1, 0] = False  # the last step unmasks everything
        self.register_buffer("active", active)
        self.learned_knobs = learn

    def std(self) -> torch.Tensor:
        """Return the (T, 4) standard deviations, floored at ``min_std``."""
        return self.log_std.exp().clamp_min(self.min_std)

    def sample_raw(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Draw unconstrained actions (B, T, 4), one generator per image."""
        noise = torch.stack([torch.randn(self.steps, len(KNOBS), generator=g, device=g.device) for g in generators])
        noise = noise.to(self.mean.device)
        raw = self.mean + self.std() * noise
        return torch.where(self.active, raw, self.mean.expand_as(raw)).detach()

    def mean_raw(self, batch: int) -> torch.Tensor:
        """Return the policy's mean actions, repeated for ``batch`` images (B, T, 4)."""
        return self.mean.detach().expand(batch, -1, -1).clone()

    def log_prob(self, raw: torch.Tensor) -> torch.Tensor:
        """Return the log-probability (B, T) of unconstrained actions, summed over the active knobs."""
        dist = torch.distributions.Normal(self.mean, self.std())
        per_knob = dist.log_prob(raw)
        return torch.where(self.active, per_knob, torch.zeros_like(per_knob)).sum(-1)

    def mean_schedule(self) -> DefaultSchedule:
        """Return the mean actions as a schedule (last mask ratio 0)."""
        actions = to_constrained(self.mean.detach()).clone()
        actions[-1, 0] = 0.0
        return DefaultSchedule(*(actions[:, i].contiguous() for i in range(len(KNOBS))))

    def entropy(self) -> torch.Tensor:
        """Return the summed entropy of the active knobs."""
        dist = torch.distributions.Normal(self.mean, self.std())
        return torch.where(self.active, dist.entropy(), torch.zeros_like(self.mean)).sum()

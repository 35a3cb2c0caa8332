"""Group-relative advantages, the clipped ratio objective and the k3 KL estimator."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, zero_variance_tol: float = 1e-8) -> torch.Tensor:
    """Return GRPO advantages (P, G) for rewards (P, G), one row per prompt group.

    ``(r - mean) / (std + eps)`` within each group, over the finite rewards only.
    Failed (NaN or infinite) rewards get advantage 0 and do not enter the
    statistics; groups whose finite rewards are all equal (max - min <= tol), or
    that have fewer than two finite rewards, get exactly 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"expected rewards of shape (prompts, group), got {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float64)
    finite = torch.isfinite(rewards)
    count = finite.sum(1, keepdim=True)
    safe = torch.where(finite, rewards, torch.zeros_like(rewards))
    mean = safe.sum(1, keepdim=True) / count.clamp_min(1)
    centred = torch.where(finite, rewards - mean, torch.zeros_like(rewards))
    std = torch.sqrt((centred**2).sum(1, keepdim=True) / count.clamp_min(1))
    high = torch.where(finite, rewards, torch.full_like(rewards, -torch.inf)).amax(1, keepdim=True)
    low = torch.where(finite, rewards, torch.full_like(rewards, torch.inf)).amin(1, keepdim=True)
    degenerate = (count < 2) | ((high - low) <= zero_variance_tol)
    advantages = centred / (std + eps)
    advantages = torch.where(finite & ~degenerate, advantages, torch.zeros_like(advantages))
    return advantages.to(torch.float32)


def clipped_objective(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return the per-term PPO loss ``-min(rho A, clip(rho) A)`` and statistics.

    ``log_ratio`` and ``advantages`` have the same shape; the statistics are the
    clipped fraction, the approximate KL ``E[(rho - 1) - log rho]`` and
    ``max |rho - 1|``, all detached.
    """
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        stats = {
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "max_abs_ratio_minus_one": (ratio - 1.0).abs().max(),
        }
    return loss, stats


def k3_kl(log_p: torch.Tensor, log_ref: torch.Tensor) -> torch.Tensor:
    """Return the k3 estimator of KL(p || ref) per element: ``exp(d) - d - 1`` with ``d = log_ref - log_p``."""
    delta = log_ref - log_p
    return torch.exp(delta) - delta - 1.0

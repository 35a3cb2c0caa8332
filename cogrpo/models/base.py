"""The protocol every masked image model backend implements.

A backend owns a token grid (h x w ids in ``[0, codebook_size)`` plus a mask
id), a text encoder with the empty prompt as the unconditional input for
classifier-free guidance, a transformer that returns logits for a partly masked
grid, and a decoder from token grids to images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class PromptEmbeddings:
    """Text conditioning of a batch: hidden states (B, S, D) and pooled vectors (B, P)."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor

    def index(self, rows: torch.Tensor | slice | list[int]) -> PromptEmbeddings:
        """Return the rows ``rows`` of both tensors."""
        return PromptEmbeddings(self.hidden_states[rows], self.pooled[rows])

    @staticmethod
    def cat(parts: list[PromptEmbeddings]) -> PromptEmbeddings:
        """Concatenate along the batch dimension."""
        return PromptEmbeddings(torch.cat([p.hidden_states for p in parts]), torch.cat([p.pooled for p in parts]))


@dataclass(frozen=True)
class DefaultSchedule:
    """A backend's hand-set schedule, as values per step (each a float32 tensor of shape (T,)).

    ``mask_ratio[t]`` is the share of the whole grid still masked after step t
    (0 at the last step), ``sample_temperature`` divides the logits,
    ``remask_temperature`` scales the Gumbel noise of the re-mask confidence and
    ``guidance`` is the classifier-free guidance scale w in
    ``uncond + w * (cond - uncond)``.
    """

    mask_ratio: torch.Tensor
    sample_temperature: torch.Tensor
    remask_temperature: torch.Tensor
    guidance: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.mask_ratio.shape[0])

    def as_actions(self) -> torch.Tensor:
        """Return the schedule as a (T, 4) tensor in knob order."""
        return torch.stack([self.mask_ratio, self.sample_temperature, self.remask_temperature, self.guidance], dim=1)


def cosine_mask_ratio(steps: int) -> torch.Tensor:
    """Return aMUSEd's cosine schedule ``cos(pi/2 * (t+1)/T)`` in float32, as its scheduler computes it."""
    ratios = torch.arange(1, steps + 1, dtype=torch.float32) / steps
    out = torch.cos(ratios * torch.pi / 2)
    out[-1] = 0.0
    return out


@runtime_checkable
class MaskedImageBackend(Protocol):
    """The interface the sampler and trainer use to drive a masked image model."""

    name: str
    grid: tuple[int, int]
    codebook_size: int
    mask_token_id: int
    transformer: torch.nn.Module
    device: torch.device

    def default_schedule(self, steps: int) -> DefaultSchedule:
        """Return the backend's hand-set schedule for ``steps`` steps."""

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """Encode prompts ("" is the unconditional prompt) without gradients."""

    def logits(self, tokens: torch.Tensor, embeddings: PromptEmbeddings) -> torch.Tensor:
        """Return float32 logits (B, L, codebook_size) for token grids (B, h, w)."""

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """Decode token grids (B, h, w) to uint8 images (B, H, W, 3)."""

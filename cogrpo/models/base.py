"""The protocol every masked image model backend implements.

A backend owns a token grid (h x w ids in ``[0, codebook_size)`` plus a mask
id), a text encoder with the empty prompt as the unconditional input for
classifier-free guidance, a transformer that returns logits for a partly masked
grid, and a decoder from token grids to images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from cogrpo.models.precision import autocast

# Seed of every random-weight build, so that a run on random weights can be reloaded with the same base model.
RANDOM_WEIGHTS_SEED = 0


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


@contextlib.contextmanager
def random_init(device: str | torch.device, seed: int = RANDOM_WEIGHTS_SEED) -> Iterator[None]:
    """Create modules on ``device`` with weights drawn from ``seed``, then restore the global random state.

    On the ``meta`` device nothing is allocated, which lets tests check the
    shapes of full-size models.
    """
    device = torch.device(device)
    forked = []
    if device.type == "cuda":
        forked.append(device.index if device.index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=forked), device:
        torch.manual_seed(seed)
        yield


class VQTokenBackend:
    """The parts shared by backends made of a transformer, a VQ decoder, a CLIP-style text encoder and a tokenizer.

    Subclasses implement ``logits`` and call the transformer inside
    ``self.autocast()``. ``compute_dtype`` (float32 unless set) is the autocast
    dtype of those forward passes. ``vq_output_range`` is the pixel range of the
    VQ decoder's output, which ``decode`` maps to [0, 255].
    """

    vq_output_range: tuple[float, float] = (-1.0, 1.0)

    def __init__(
        self,
        name: str,
        transformer,
        vq,
        text_encoder,
        tokenizer,
        *,
        grid: tuple[int, int],
        image_size: tuple[int, int],
        mask_token_id: int | None,
        default_guidance: float,
        default_remask_temperature: tuple[float, float],
        score: float,
        text_max_length: int,
        device: str | torch.device,
        revision: str | None,
    ):
        self.name = name
        self.transformer = transformer
        self.vq = vq
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.grid = grid
        self.image_size = image_size
        self.codebook_size = int(transformer.config.codebook_size)
        self.mask_token_id = int(mask_token_id if mask_token_id is not None else transformer.config.vocab_size - 1)
        self.default_guidance = float(default_guidance)
        self.default_remask_temperature = default_remask_temperature
        self.text_max_length = int(text_max_length)
        self.revision = revision
        # The local folder (a model folder or a resolved hub snapshot) that the weights were loaded
        # from, set by loaders that know it. None for random weights and when unknown.
        self.weights_dir: Path | None = None
        # Other local folders a component was loaded from, by label, for weight digests.
        self.extra_weight_dirs: dict[str, Path] = {}
        self.compute_dtype = torch.float32
        height, width = image_size
        # aMUSEd's pipeline passes width before height on purpose, as a comment in it notes, and Meissonic's copies it.
        self.micro_conds = torch.tensor([[width, height, 0, 0, score]], dtype=torch.float32)
        self.device = torch.device(device)
        self.to(self.device)
        for module in (self.vq, self.text_encoder):
            module.eval()
            module.requires_grad_(False)

    def to(self, device: str | torch.device) -> VQTokenBackend:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (self.transformer, self.vq, self.text_encoder):
            module.to(self.device)
        self.micro_conds = self.micro_conds.to(self.device)
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """Return the autocast context of transformer forward passes (a no-op at float32)."""
        return autocast(self.device, self.compute_dtype)

    def default_schedule(self, steps: int) -> DefaultSchedule:
        """Return the pipeline schedule: cosine mask ratio, linear Gumbel temperature, fixed guidance, temperature 1."""
        if steps < 1:
            raise ValueError(f"invalid number of steps {steps}; expected at least 1")
        start, end = self.default_remask_temperature
        return DefaultSchedule(
            mask_ratio=cosine_mask_ratio(steps),
            sample_temperature=torch.ones(steps),
            remask_temperature=torch.linspace(start, end, steps),
            guidance=torch.full((steps,), self.default_guidance),
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """Encode prompts with the frozen text encoder: penultimate hidden states and projected ``text_embeds``.

        Prompts are padded or truncated to ``text_max_length`` tokens. The text
        encoder runs outside autocast, in its own dtype.
        """
        text = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.text_max_length, truncation=True, return_tensors="pt"
        )
        out = self.text_encoder(text.input_ids.to(self.device), return_dict=True, output_hidden_states=True)
        return PromptEmbeddings(hidden_states=out.hidden_states[-2], pooled=out.text_embeds)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the transformer's block activations in the backward pass instead of storing them."""
        self.transformer.enable_gradient_checkpointing()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """Decode token ids (B, h, w) to uint8 RGB images (B, H, W, 3), clipping the VQ output to its range."""
        batch, h, w = tokens.shape
        latent_channels = self.vq.config.latent_channels
        images = self.vq.decode(
            tokens.to(self.device), force_not_quantize=True, shape=(batch, h, w, latent_channels)
        ).sample.to(torch.float32)
        low, high = self.vq_output_range
        images = ((images.clamp(low, high) - low) * (255.0 / (high - low))).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

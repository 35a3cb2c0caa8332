"""A backend for U-ViT masked image models (aMUSEd's architecture) and the embedded shapes model.

Components: diffusers ``UVit2DModel`` (transformer), ``VQModel`` (token decoder),
transformers ``CLIPTextModelWithProjection`` and a tokenizer. Prompt
conditioning follows aMUSEd's pipeline: the penultimate hidden states feed the
cross-attention and the projected pooled embedding joins the micro-conditioning
vector ``[width, height, crop_top, crop_left, aesthetic_score]``.
"""

from __future__ import annotations

import numpy as np
import torch

from cogrpo.models.base import DefaultSchedule, PromptEmbeddings, cosine_mask_ratio


class UVitBackend:
    """A masked image model made of UVit2DModel + VQModel + CLIP text encoder."""

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
        mask_token_id: int | None = None,
        default_guidance: float = 10.0,
        default_remask_temperature: tuple[float, float] = (2.0, 0.0),
        aesthetic_score: float = 6.0,
        text_max_length: int | None = None,
        device: str | torch.device = "cpu",
        revision: str | None = None,
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
        self.text_max_length = int(text_max_length or tokenizer.model_max_length)
        self.device = torch.device(device)
        self.revision = revision
        height, width = image_size
        # aMUSEd's pipeline passes width before height on purpose, as a comment in it notes.
        self.micro_conds = torch.tensor([[width, height, 0, 0, aesthetic_score]], dtype=torch.float32)
        self.to(self.device)
        self.vq.eval()
        self.text_encoder.eval()
        self.vq.requires_grad_(False)
        self.text_encoder.requires_grad_(False)

    def to(self, device: str | torch.device) -> UVitBackend:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (self.transformer, self.vq, self.text_encoder):
            module.to(self.device)
        self.micro_conds = self.micro_conds.to(self.device)
        return self

    def default_schedule(self, steps: int) -> DefaultSchedule:
        """aMUSEd's schedule: cosine mask ratio, Gumbel temperature linear from 2 to 0, guidance, temperature 1."""
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
        """Encode prompts with the frozen text encoder (padded to its maximum length)."""
        text = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.text_max_length, truncation=True, return_tensors="pt"
        )
        out = self.text_encoder(text.input_ids.to(self.device), return_dict=True, output_hidden_states=True)
        return PromptEmbeddings(hidden_states=out.hidden_states[-2], pooled=out.text_embeds)

    def logits(self, tokens: torch.Tensor, embeddings: PromptEmbeddings) -> torch.Tensor:
        """Return float32 logits (B, L, K) of the transformer for token grids (B, h, w)."""
        batch = tokens.shape[0]
        out = self.transformer(
            tokens,
            encoder_hidden_states=embeddings.hidden_states,
            pooled_text_emb=embeddings.pooled,
            micro_conds=self.micro_conds.expand(batch, -1),
        )  # (B, K, h, w)
        return out.float().flatten(2).transpose(1, 2)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """Decode token ids (B, h, w) to uint8 RGB images (B, H, W, 3)."""
        batch, h, w = tokens.shape
        latent_channels = self.vq.config.latent_channels
        images = self.vq.decode(
            tokens.to(self.device), force_not_quantize=True, shape=(batch, h, w, latent_channels)
        ).sample.to(torch.float32)
        images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

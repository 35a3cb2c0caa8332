"""A backend for U-ViT masked image models (aMUSEd's architecture) and the embedded shapes model.

Components: diffusers ``UVit2DModel`` (transformer), a token decoder with
``VQModel``'s interface (``VQModel`` for aMUSEd, ``PatchVQModel`` for the shapes model),
transformers ``CLIPTextModelWithProjection`` and a tokenizer. Prompt
conditioning follows aMUSEd's pipeline: the penultimate hidden states feed the
cross-attention and the projected pooled embedding joins the micro-conditioning
vector ``[width, height, crop_top, crop_left, aesthetic_score]``.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from cogrpo.models.base import PromptEmbeddings, VQTokenBackend


class UVitBackend(VQTokenBackend):
    """A masked image model made of UVit2DModel + a VQ token decoder + CLIP text encoder."""

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
        super().__init__(
            name,
            transformer,
            vq,
            text_encoder,
            tokenizer,
            grid=grid,
            image_size=image_size,
            mask_token_id=mask_token_id,
            default_guidance=default_guidance,
            default_remask_temperature=default_remask_temperature,
            score=aesthetic_score,
            text_max_length=text_max_length or tokenizer.model_max_length,
            device=device,
            revision=revision,
        )

    def logits(self, tokens: torch.Tensor, embeddings: PromptEmbeddings) -> torch.Tensor:
        """Return float32 logits (B, L, K) of the transformer for token grids (B, h, w)."""
        batch = tokens.shape[0]
        with self.autocast():
            out = self.transformer(
                tokens,
                encoder_hidden_states=embeddings.hidden_states,
                pooled_text_emb=embeddings.pooled,
                micro_conds=self.micro_conds.expand(batch, -1),
            )  # (B, K, h, w)
        return out.float().flatten(2).transpose(1, 2)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer layer's activations in the backward pass instead of storing them.

        ``UVit2DModel.enable_gradient_checkpointing`` is not used, because in
        diffusers 0.42.1 the forward pass then raises ``TypeError``. It wraps each
        layer in a function that takes positional arguments only, and calls that
        function with keyword arguments. The convolutional blocks before and
        after the layers are not checkpointed.
        """
        for layer in self.transformer.transformer_layers:
            if not isinstance(layer.forward, _CheckpointedForward):
                layer.forward = _CheckpointedForward(layer.forward)


class _CheckpointedForward:
    """A module's forward under ``torch.utils.checkpoint`` when gradients are enabled (keyword arguments allowed)."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)
        return self.forward(*args, **kwargs)

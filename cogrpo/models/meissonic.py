"""A backend for Meissonic, the 1024 x 1024 masked image model (hub ``MeissonFlow/Meissonic``).

Diffusers has no Meissonic classes, so ``MeissonicTransformer`` rebuilds the
transformer of the official code (viiika/Meissonic ``src/transformer.py`` at
commit aeba85e8) from diffusers' Flux blocks and aMUSEd's token embedding and
logit head. Its ``state_dict()`` has the key names and shapes of the published
checkpoint, so ``from_pretrained`` loads it directly.

Facts taken from the official code and the hub files:

- The transformer is a Flux-style MMDiT with 14 dual-stream and 28
  single-stream blocks, 8 heads of 128 (width 1024) and 2-D RoPE with axes
  (16, 56, 56).
- A VQ grid of 64 x 64 tokens (codebook 8192, mask id 8255 = vocab_size - 1)
  goes through an RMSNorm'd token embedding and a 2x2 stride-2 convolution, so
  the blocks see 32 x 32 = 1024 image tokens. A transposed convolution restores
  64 x 64 before the logit head.
- The text encoder is CLIP ViT-H/14. Its penultimate hidden states (77 x 1024)
  are the joint-attention tokens. Its projected pooled embedding and five
  micro-conditions ``[width, height, crop_top, crop_left, score]`` (256
  sinusoidal dims each) form the conditioning vector.
- The pipeline samples 48 steps with guidance 9, the cosine mask schedule and a
  Gumbel re-mask temperature annealed linearly from 2 to 0 (aMUSEd's
  scheduler). Its VQ decoder output lies in [0, 1].
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, TimestepEmbedding, get_timestep_embedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_flux import (
    FluxPosEmbed,
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from diffusers.models.unets.uvit_2d import ConvMlmLayer, UVit2DConvEmbed
from diffusers.models.upsampling import Upsample2D
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from torch import nn

from cogrpo.models.amused import VQ_CONFIG, build_clip_tokenizer
from cogrpo.models.base import PromptEmbeddings, VQTokenBackend, random_init
from cogrpo.rewards.base import MissingWeightsError

logger = logging.getLogger(__name__)

HUB_ID = "MeissonFlow/Meissonic"
# A hub commit whose transformer/, vqvae/, text_encoder/ and tokenizer/ have the same last commits as main's.
# Main is one README commit ahead of it.
HUB_REVISION = "6e79d28e4b46ba35dd6de05a3d252615c9b88154"
HUB_FILES = (
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vqvae/config.json",
    "vqvae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
)
COMPONENTS = ("transformer", "vqvae", "text_encoder", "tokenizer")

IMAGE_SIZE = 1024
DEFAULT_STEPS = 48
DEFAULT_GUIDANCE = 9.0
DEFAULT_REMASK_TEMPERATURE = (2.0, 0.0)
# The fifth micro-condition, the pipeline's default. Training fed an HPS score in this slot.
DEFAULT_SCORE = 6.0

TEXT_MAX_LENGTH = 77
MICRO_COND_COUNT = 5
MICRO_COND_ENCODE_DIM = 256  # hard-coded in the official transformer: 5 x 256 = 1280 dims

# The hub repository's vqvae/config.json has the values of aMUSEd's VQ_CONFIG (146,244,675 parameters, f16).

# The text tower of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the architecture of the hub's text_encoder/.
CLIP_H_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    max_position_embeddings=77,
    projection_dim=1024,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


# ---------------------------------------------------------------------------- transformer


class ResampleBlock(nn.Module):
    """The official ``Simple_UVitBlock``: an optional 2x down- or up-sampling with RMSNorm, no bias.

    The attribute names ``downsample`` and ``upsample`` are part of the checkpoint's key names.
    """

    def __init__(self, channels: int, *, downsample: bool, upsample: bool, eps: float = 1e-6):
        super().__init__()
        self.downsample = (
            Downsample2D(
                channels,
                use_conv=True,
                padding=0,
                name="Conv2d_0",  # registers the convolution once, as "conv"
                kernel_size=2,
                norm_type="rms_norm",
                eps=eps,
                elementwise_affine=True,
                bias=False,
            )
            if downsample
            else None
        )
        self.upsample = (
            Upsample2D(
                channels,
                use_conv_transpose=True,
                kernel_size=2,
                padding=0,
                name="conv",
                norm_type="rms_norm",
                eps=eps,
                elementwise_affine=True,
                bias=False,
                interpolate=False,
            )
            if upsample
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        if self.upsample is not None:
            hidden_states = self.upsample(hidden_states)
        return hidden_states


def image_position_ids(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Return the RoPE ids (height * width, 3) of a grid: ``(0, row, column)`` in row-major order.

    The official pipeline builds these ids for the transformer's grid after the
    2x down-sampling (at 1024 x 1024, its ``_prepare_latent_image_ids`` on the
    64 x 64 token grid yields the 32 x 32 ids built here).
    """
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device)


def text_position_ids(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Return the RoPE ids (length, 3) of the text tokens: all zero, as in the official pipeline."""
    return torch.zeros(length, 3, device=device)


class MeissonicTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Meissonic's masked-token transformer with the published checkpoint's key names.

    Inputs of ``forward``:

    - ``hidden_states``: token ids (B, h, w), the mask id at masked positions.
    - ``encoder_hidden_states`` (B, S, joint_attention_dim): penultimate CLIP hidden states.
    - ``pooled_projections`` (B, pooled_projection_dim): CLIP ``text_embeds``.
    - ``timestep``: a scalar, (1,) or (B,) tensor in the official pipeline's
      convention. The pipeline passes the scheduler's integer timestep, which
      counts down N-1, ..., 0 over N steps (step i has timestep N-1-i), and
      ``forward`` multiplies it by 1000 before the sinusoidal projection. The
      official training script passes ``mask_prob * 1000`` instead, but the
      released weights are sampled with the pipeline convention.
    - ``micro_conds`` (B, 5): ``[width, height, crop_top, crop_left, score]``.
    - ``img_ids`` / ``txt_ids``: RoPE ids. They default to ``image_position_ids``
      of the down-sampled grid and ``text_position_ids``, as the pipeline builds
      them at 1024 x 1024.

    Returns logits (B, codebook_size, h, w) in the model's dtype. Unlike the
    official class, ``return_dict=True`` returns a ``Transformer2DModelOutput``
    (the official forward returns the bare tensor).

    The configuration keys equal the hub's ``transformer/config.json``, and the
    defaults are its values. ``in_channels`` is stored but unused, as in the
    official class.

    NOTE: written against diffusers 0.42.1, whose single-stream Flux block takes
    the text and image states as separate arguments. Other versions were not run.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        num_layers: int = 14,
        num_single_layers: int = 28,
        attention_head_dim: int = 128,
        num_attention_heads: int = 8,
        joint_attention_dim: int = 1024,
        pooled_projection_dim: int = 1024,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        vocab_size: int = 8256,
        codebook_size: int = 8192,
        downsample: bool = True,
        upsample: bool = True,
    ):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        if patch_size != 1:
            raise ValueError(f"invalid patch_size {patch_size}; Meissonic embeds single tokens, so it must be 1")
        if guidance_embeds:
            raise ValueError("guidance_embeds=True is not supported: the published Meissonic has no guidance embedding")
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(
                f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim {attention_head_dim}"
            )
        if pooled_projection_dim != inner_dim:
            # The conditioning MLP maps [pooled, micro-conditions] to inner_dim, and that vector
            # is the "pooled projection" input of time_text_embed.
            raise ValueError(
                f"pooled_projection_dim {pooled_projection_dim} must equal num_attention_heads * attention_head_dim "
                f"= {inner_dim}"
            )
        if codebook_size >= vocab_size:
            raise ValueError(
                f"codebook_size {codebook_size} must be below vocab_size {vocab_size} (the mask id is vocab_size - 1)"
            )
        self.inner_dim = inner_dim
        eps = 1e-6

        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(axes_dims_rope))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(
            embedding_dim=inner_dim, pooled_projection_dim=pooled_projection_dim
        )
        self.context_embedder = nn.Linear(joint_attention_dim, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(inner_dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                FluxSingleTransformerBlock(inner_dim, num_attention_heads, attention_head_dim)
                for _ in range(num_single_layers)
            ]
        )

        self.embed = UVit2DConvEmbed(inner_dim, inner_dim, vocab_size, True, eps, False)
        self.mlm_layer = ConvMlmLayer(inner_dim, inner_dim, False, True, eps, codebook_size)
        self.cond_embed = TimestepEmbedding(
            MICRO_COND_COUNT * MICRO_COND_ENCODE_DIM + pooled_projection_dim, inner_dim, sample_proj_bias=False
        )
        self.encoder_proj_layer_norm = RMSNorm(inner_dim, eps, True)
        self.project_to_hidden_norm = RMSNorm(inner_dim, eps, True)
        self.project_to_hidden = nn.Linear(inner_dim, inner_dim, bias=False)
        self.project_from_hidden_norm = RMSNorm(inner_dim, eps, True)
        self.project_from_hidden = nn.Linear(inner_dim, inner_dim, bias=False)
        self.down_block = ResampleBlock(inner_dim, downsample=downsample, upsample=False, eps=eps)
        self.up_block = ResampleBlock(inner_dim, downsample=False, upsample=upsample, eps=eps)

        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor | int | float,
        micro_conds: torch.Tensor,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        joint_attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Return the logits (B, codebook_size, h, w) for token grids (B, h, w), as the class docstring describes."""
        joint_attention_kwargs = dict(joint_attention_kwargs) if joint_attention_kwargs else {}
        lora_scale = joint_attention_kwargs.pop("scale", 1.0)
        if USE_PEFT_BACKEND:
            scale_lora_layers(self, lora_scale)
        try:
            logits = self._logits(
                hidden_states, encoder_hidden_states, pooled_projections, timestep, micro_conds, img_ids, txt_ids,
                joint_attention_kwargs or None,
            )
        finally:
            if USE_PEFT_BACKEND:
                unscale_lora_layers(self, lora_scale)
        if not return_dict:
            return (logits,)
        return Transformer2DModelOutput(sample=logits)

    def _conditioning(self, pooled_projections: torch.Tensor, micro_conds: torch.Tensor) -> torch.Tensor:
        batch = pooled_projections.shape[0]
        micro = get_timestep_embedding(
            micro_conds.flatten(), MICRO_COND_ENCODE_DIM, flip_sin_to_cos=True, downscale_freq_shift=0
        ).reshape(batch, -1)
        conditioning = torch.cat([pooled_projections.float(), micro.float()], dim=1)
        return self.cond_embed(conditioning.to(self.context_embedder.weight.dtype))

    def _logits(
        self,
        tokens: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor | int | float,
        micro_conds: torch.Tensor,
        img_ids: torch.Tensor | None,
        txt_ids: torch.Tensor | None,
        joint_attention_kwargs: dict | None,
    ) -> torch.Tensor:
        batch = tokens.shape[0]
        dtype = self.context_embedder.weight.dtype
        pooled = self._conditioning(pooled_projections, micro_conds)

        hidden_states = self.down_block(self.embed(tokens))  # (B, C, h', w')
        _, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        hidden_states = self.project_to_hidden(self.project_to_hidden_norm(hidden_states))
        context = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states.to(dtype)))

        # The pipeline convention: integer scheduler timestep, cast to the weights' dtype, times 1000.
        # Under autocast the weights stay float32, so the product is not rounded to bfloat16.
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch)
        temb = self.time_text_embed(timestep.to(dtype) * 1000, pooled)

        if img_ids is None:
            img_ids = image_position_ids(height, width, hidden_states.device)
        if txt_ids is None:
            txt_ids = text_position_ids(context.shape[1], hidden_states.device)
        rotary = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                context, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, context, temb, rotary, joint_attention_kwargs
                )
            else:
                context, hidden_states = block(hidden_states, context, temb, rotary, joint_attention_kwargs)
        for block in self.single_transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                context, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, context, temb, rotary, joint_attention_kwargs
                )
            else:
                context, hidden_states = block(hidden_states, context, temb, rotary, joint_attention_kwargs)

        hidden_states = self.project_from_hidden(self.project_from_hidden_norm(hidden_states))
        hidden_states = hidden_states.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.mlm_layer(self.up_block(hidden_states))


# ---------------------------------------------------------------------------- backend


def pipeline_timesteps(masked_fraction: torch.Tensor, steps: int) -> torch.Tensor:
    """Return the official pipeline's integer timesteps (long) for grids with the given masked share.

    Under the default cosine schedule of ``steps`` steps, the input of step i
    has ``cos(pi/2 * i / steps)`` of its tokens masked and gets timestep
    ``steps - 1 - i``. This inverts that relation, rounding to the nearest step,
    so the default schedule reproduces the pipeline's timesteps exactly (on the
    64 x 64 grid), and any other schedule gets the timestep of the default step
    with the same masked share.
    """
    if steps < 1:
        raise ValueError(f"invalid number of steps {steps}; expected at least 1")
    angle = torch.arccos(masked_fraction.double().clamp(0.0, 1.0))
    step_index = torch.round(angle * (2.0 / math.pi) * steps).clamp(0, steps - 1)
    return (steps - 1 - step_index).long()


class MeissonicBackend(VQTokenBackend):
    """A masked image model made of ``MeissonicTransformer`` + VQModel + CLIP text encoder.

    ``logits`` conditions on the pipeline timestep derived from each row's
    masked share by ``pipeline_timesteps`` (over ``timestep_steps`` steps), so
    a rollout and its recomputation see equal timesteps without step bookkeeping.
    The VQ decoder output lies in [0, 1].
    """

    vq_output_range = (0.0, 1.0)

    def __init__(
        self,
        transformer: MeissonicTransformer,
        vq,
        text_encoder,
        tokenizer,
        *,
        name: str = "meissonic",
        image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
        mask_token_id: int | None = None,
        default_guidance: float = DEFAULT_GUIDANCE,
        default_remask_temperature: tuple[float, float] = DEFAULT_REMASK_TEMPERATURE,
        score: float = DEFAULT_SCORE,
        timestep_steps: int = DEFAULT_STEPS,
        text_max_length: int = TEXT_MAX_LENGTH,
        device: str | torch.device = "cpu",
        revision: str | None = None,
    ):
        image_size = tuple(image_size)
        self.vq_scale_factor = 2 ** (len(vq.config.block_out_channels) - 1)
        height, width = image_size
        if height % self.vq_scale_factor or width % self.vq_scale_factor:
            raise ValueError(f"image size {image_size} is not a multiple of the VQ factor {self.vq_scale_factor}")
        grid = (height // self.vq_scale_factor, width // self.vq_scale_factor)
        if transformer.config.downsample and (grid[0] % 2 or grid[1] % 2):
            raise ValueError(f"token grid {grid} must have even sides, because the transformer down-samples by 2")
        self.timestep_steps = int(timestep_steps)
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
            score=score,
            text_max_length=text_max_length,
            device=device,
            revision=revision,
        )

    def pipeline_timesteps(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the pipeline timestep (B,) of each token grid (B, h, w) from its masked share."""
        masked = (tokens == self.mask_token_id).flatten(1).float().mean(dim=1)
        return pipeline_timesteps(masked, self.timestep_steps).to(tokens.device)

    def logits(
        self, tokens: torch.Tensor, embeddings: PromptEmbeddings, timestep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return float32 logits (B, L, K) for token grids (B, h, w).

        ``timestep`` overrides the pipeline timestep derived from the masked share.
        """
        batch = tokens.shape[0]
        if timestep is None:
            timestep = self.pipeline_timesteps(tokens)
        with self.autocast():
            (out,) = self.transformer(
                tokens,
                encoder_hidden_states=embeddings.hidden_states,
                pooled_projections=embeddings.pooled,
                timestep=timestep,
                micro_conds=self.micro_conds.expand(batch, -1),
                return_dict=False,
            )  # (B, K, h, w)
        return out.float().flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------- loading


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    return bool(constants.HF_HUB_OFFLINE) or env


def _resolve_hub_snapshot(revision: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return the local snapshot folder of the hub files, downloading them unless the hub is offline."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    fix = (
        f"Download them on a machine with access (hf download {HUB_ID} --revision {revision}) "
        "or pass a folder with transformer/, vqvae/, text_encoder/ and tokenizer/: --model-path FOLDER on the command line, path= in Python."
    )
    found = {name: try_to_load_from_cache(HUB_ID, name, revision=revision, cache_dir=cache_dir) for name in HUB_FILES}
    missing = [name for name, value in found.items() if not isinstance(value, str)]
    if not missing:
        return Path(found[HUB_FILES[0]]).parent.parent
    if _hub_offline():
        raise MissingWeightsError(
            f"Meissonic files from hub repo {HUB_ID} (revision {revision}) are not in the local Hugging Face cache "
            f"and HF_HUB_OFFLINE is set; missing: {', '.join(missing)}. {fix}"
        )
    try:
        folder = snapshot_download(HUB_ID, revision=revision, allow_patterns=list(HUB_FILES), cache_dir=cache_dir)
    except Exception as error:  # the hub client raises many transport error types
        raise MissingWeightsError(
            f"could not download Meissonic from hub repo {HUB_ID} (revision {revision}): {error}. {fix}"
        ) from error
    return Path(folder)


def weights_available(path: str | os.PathLike[str] | None = None, revision: str = HUB_REVISION) -> bool:
    """Return True when every Meissonic file is in ``path`` or, without it, in the local hub cache."""
    if path is not None:
        return all((Path(path) / name).is_file() for name in HUB_FILES)
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(HUB_ID, name, revision=revision), str) for name in HUB_FILES)


def _load_transformer(folder: Path, dtype: torch.dtype) -> MeissonicTransformer:
    transformer, info = MeissonicTransformer.from_pretrained(folder, torch_dtype=dtype, output_loading_info=True)
    problems = {key: info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
    if problems:
        raise ValueError(f"the transformer checkpoint at {folder} does not match MeissonicTransformer: {problems}")
    return transformer


def _build_random_components(device: str | torch.device, dtype: torch.dtype):
    """Build the published architecture with random weights from a fixed seed (no file is read)."""
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with random_init(device):
        transformer = MeissonicTransformer().to(dtype)
        vq = VQModel(**VQ_CONFIG)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_H_TEXT_CONFIG)).to(dtype)
    return transformer, vq, text_encoder, build_clip_tokenizer()


def load_meissonic(
    path: str | os.PathLike[str] | None = None,
    revision: str = HUB_REVISION,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    *,
    dtype: torch.dtype = torch.float32,
    image_size: int = IMAGE_SIZE,
    text_encoder_source: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> MeissonicBackend:
    """Load Meissonic (meant for 1024 x 1024 images, a 64 x 64 token grid) as a ``MeissonicBackend``.

    ``path`` is a local folder with the hub layout (transformer/, vqvae/,
    text_encoder/, tokenizer/). Without it, the files come from hub repo
    ``MeissonFlow/Meissonic`` at ``revision`` (pinned by default) through the
    Hugging Face cache. With ``HF_HUB_OFFLINE`` set and the files not cached,
    ``MissingWeightsError`` names the hub id, the revision and the ``path``
    option at once. ``random_weights=True`` builds the published architecture
    on ``device`` with random weights from a fixed seed and the offline CLIP
    tokenizer, reading no file.

    ``dtype`` applies to the transformer and the text encoder. The VQ stays
    float32 because its config sets ``force_upcast``. The hub's text_encoder/
    is a fine-tuned CLIP-H. The official ``inference.py`` loads
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` instead, which
    ``text_encoder_source`` (a hub id or a folder) selects.

    Other image sizes are accepted, but the official code gives poor images
    below 1024 x 1024.
    """
    from diffusers import VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    if random_weights:
        if path is not None:
            raise ValueError("random_weights=True builds the published architecture from built-in configs; drop path")
        transformer, vq, text_encoder, tokenizer = _build_random_components(device, dtype)
        source = "random"
    else:
        if path is not None:
            folder = Path(path)
            missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
            if missing:
                raise MissingWeightsError(
                    f"the Meissonic folder {folder} lacks {', '.join(missing)}; expected the layout of hub repo "
                    f"{HUB_ID} (transformer/, vqvae/, text_encoder/, tokenizer/)"
                )
            source = f"local:{folder}"
        else:
            folder = _resolve_hub_snapshot(revision, cache_dir)
            source = f"{HUB_ID}@{revision}"
        transformer = _load_transformer(folder / "transformer", dtype)
        vq = VQModel.from_pretrained(folder / "vqvae")
        encoder_source = text_encoder_source if text_encoder_source is not None else folder / "text_encoder"
        text_encoder = CLIPTextModelWithProjection.from_pretrained(encoder_source).to(dtype)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    logger.info("loaded Meissonic from %s", source)
    backend = MeissonicBackend(
        transformer,
        vq,
        text_encoder,
        tokenizer,
        image_size=(image_size, image_size),
        device=device,
        revision=source,
    )
    backend.weights_dir = None if random_weights else folder
    if text_encoder_source is not None and not random_weights:
        encoder_folder = _text_encoder_folder(text_encoder_source, cache_dir)
        if encoder_folder is not None:
            backend.extra_weight_dirs["text_encoder_source"] = encoder_folder
    return backend


def _text_encoder_folder(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """Return the local folder of a text encoder source: the folder itself, or the cached hub snapshot of its default revision."""
    from cogrpo.weight_digests import hub_snapshot_folder

    if Path(source).is_dir():
        return Path(source)
    return hub_snapshot_folder(str(source), None, cache_dir)


# ---------------------------------------------------------------------------- tiny model for tests

TINY_IMAGE_SIZE = 32
TINY_CODEBOOK_SIZE = 32
TINY_TEXT_WIDTH = 32
TINY_TRANSFORMER_CONFIG = dict(
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=TINY_TEXT_WIDTH,
    pooled_projection_dim=32,  # = heads * head_dim = CLIP projection_dim
    axes_dims_rope=(4, 6, 6),
    vocab_size=TINY_CODEBOOK_SIZE + 8,  # padded like 8192 + 64; mask id = vocab_size - 1
    codebook_size=TINY_CODEBOOK_SIZE,
    downsample=True,
    upsample=True,
)
TINY_VQ_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 8, 8),  # VQ factor 4: 32 x 32 pixels -> 8 x 8 tokens
    layers_per_block=1,
    latent_channels=8,
    num_vq_embeddings=TINY_CODEBOOK_SIZE,
    norm_num_groups=4,
    sample_size=TINY_IMAGE_SIZE,
    mid_block_add_attention=False,
    lookup_from_codebook=True,
)
TINY_TEXT_CONFIG = dict(
    vocab_size=49408,  # the real CLIP tokenizer's ids
    hidden_size=TINY_TEXT_WIDTH,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=TEXT_MAX_LENGTH,
    projection_dim=32,
    hidden_act="gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)


def build_tiny_meissonic(seed: int = 0, device: str | torch.device = "cpu") -> MeissonicBackend:
    """Build a tiny random Meissonic (32 x 32 images, 8 x 8 tokens, codebook 32) that runs on a CPU.

    The architecture and conventions are the full model's. The tokenizer is the
    real CLIP tokenizer, built offline.
    """
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = MeissonicTransformer(**TINY_TRANSFORMER_CONFIG)
    vq = VQModel(**TINY_VQ_CONFIG)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_CONFIG))
    return MeissonicBackend(
        transformer,
        vq,
        text_encoder,
        build_clip_tokenizer(),
        name="meissonic-tiny",
        image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
        device=device,
        revision=f"tiny-random-seed-{seed}",
    )

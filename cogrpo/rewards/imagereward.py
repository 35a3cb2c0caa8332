"""ImageReward v1.0: a BLIP-based human-preference reward for text-to-image outputs.

The network is written here as plain PyTorch modules, not built on transformers'
model classes. Its attribute names follow the official ``ImageReward.pt`` layout
(THUDM/ImageReward at commit c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb,
``ImageReward/ImageReward.py`` and ``ImageReward/models/BLIP/{vit,med,blip_pretrain}.py``),
so the official state dict loads with a strict key and shape check and no key map.

* Image encoder: BLIP ViT-L/16 at 224 px (24 blocks, width 1024, 16 heads, pre-norm,
  LayerNorm eps 1e-6, exact GELU).
* Text encoder: BERT-base (hidden 768, 12 layers, 12 heads, vocabulary 30524) whose
  layers run self-attention, then cross-attention into all image tokens, then the
  feed-forward block (post-norm, LayerNorm eps 1e-12). There are no token-type
  embeddings and no pooler.
* Head: linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout between them and
  no activations, applied to the text encoder's hidden state at token 0.
* Reward: ``(r - 0.16717362830052426) / 1.0333394966054072``, the mean and standard
  deviation of the raw output on the authors' test set.

Preprocessing follows the official order: bicubic resize of the shorter side to 224 px,
centre crop to 224 x 224, conversion to RGB, ``ToTensor`` and normalisation with the
OpenAI CLIP mean and standard deviation. Prompts go through the bert-base-uncased
WordPiece tokenizer with ``[DEC]`` added as the bos token and ``[ENC]`` as an additional
special token, padded and truncated to 35 tokens. The first token stays ``[CLS]``
because ``ImageReward.score`` passes the tokenizer's ids unchanged (BLIP's own
image-text matching swaps in ``[ENC]``, ImageReward does not).

The official code encodes images one at a time. ``ImageRewardScorer`` runs the image
encoder, the text encoder and the head over batches instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cogrpo.rewards.base import MissingWeightsError, Scorer, ScoreResult, WeightsSpec, to_rgb_array

logger = logging.getLogger(__name__)

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
MAX_TEXT_TOKENS = 35

# NOTE: this revision is the snapshot folder name that several public projects show for
# their cached THUDM/ImageReward download. It was not checked against the hub from here.
CHECKPOINT_SPEC = WeightsSpec(
    repo_id="THUDM/ImageReward",
    filename="ImageReward.pt",
    revision="5736be03b2652728fb87788c9797b0570450ab72",
    option="weights_path",
)
TOKENIZER_SPEC = WeightsSpec(
    repo_id="bert-base-uncased",
    filename="vocab.txt",
    revision="86b5e0934494bd15c9632b12f734a8a67f723594",
    option="tokenizer_path",
)

# The med_config.json entries that size the network. ImageRewardConfig has fields of the same names.
MED_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "layer_norm_eps",
    "hidden_act",
    "pad_token_id",
)

# Checkpoint keys that the reward does not use. BLIP's contrastive projections must be
# in the file but are dropped. The position-id buffer (0, 1, ..., 511 in the official
# file) may be absent, because the model computes the same ids, and is checked when present.
UNUSED_CHECKPOINT_KEYS = (
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
)
POSITION_IDS_KEY = "blip.text_encoder.embeddings.position_ids"

# The official head's hidden widths after the text features.
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
HEAD_DROPOUTS = (0.2, 0.2, 0.1)


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes differ from the official ImageReward layout."""


@dataclass(frozen=True)
class ImageRewardConfig:
    """Sizes of the ImageReward network, with the defaults of ImageReward v1.0.

    The text fields default to the hub's ``med_config.json`` (BERT-base with
    cross-attention). Its ``encoder_width`` is not a field because the official loader
    replaces it with ``vision_width``.
    """

    image_size: int = IMAGE_SIZE
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_ratio: float = 4.0
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30524
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    projection_dim: int = 256

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width {self.vision_width} must be a multiple of vision_heads {self.vision_heads}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act != "gelu":
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported because ImageReward's text encoder uses 'gelu'"
            )

    @classmethod
    def from_med_config(
        cls, med_config: Mapping[str, Any] | str | os.PathLike[str], **vision: Any
    ) -> ImageRewardConfig:
        """Build a config from a BLIP ``med_config.json`` (a path or its parsed mapping).

        Keys that do not size the network (``architectures``, dropout rates and the like)
        are ignored, and ``encoder_width`` is ignored because the ViT width replaces it.
        ``vision`` sets the image-encoder fields.
        """
        if not isinstance(med_config, Mapping):
            med_config = json.loads(Path(med_config).read_text(encoding="utf-8"))
        if not med_config.get("add_cross_attention", True):
            raise ValueError(
                "med_config sets add_cross_attention to false, but ImageReward's text encoder needs cross-attention"
            )
        position_type = med_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"position_embedding_type {position_type!r} is not supported because ImageReward uses 'absolute'"
            )
        values = {name: med_config[name] for name in MED_CONFIG_FIELDS if name in med_config}
        return cls(**values, **vision)


# --------------------------------------------------------------------------- image encoder


def _multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    additive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attend ``query`` (B, Lq, C) to ``key``/``value`` (B, Lk, C) with scale 1/sqrt(C / num_heads)."""
    batch, query_length, width = query.shape
    head_dim = width // num_heads
    q = query.view(batch, query_length, num_heads, head_dim).transpose(1, 2)  # (B, h, Lq, d)
    k = key.view(batch, key.shape[1], num_heads, head_dim).transpose(1, 2)  # (B, h, Lk, d)
    v = value.view(batch, value.shape[1], num_heads, head_dim).transpose(1, 2)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask)  # (B, h, Lq, d)
    return context.transpose(1, 2).reshape(batch, query_length, width)


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected by a strided convolution."""

    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, patches, width)


class VisionAttention(nn.Module):
    """Self-attention with one fused query/key/value projection."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(hidden_states).chunk(3, dim=-1)
        return self.proj(_multi_head_attention(query, key, value, self.num_heads))


class VisionMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden_states)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisionAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VisionMlp(width, int(width * mlp_ratio))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.mlp(self.norm2(hidden_states))


class VisionTransformer(nn.Module):
    """BLIP's ViT: class token, learned position embeddings, blocks and a final LayerNorm."""

    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = PatchEmbed(config.patch_size, config.vision_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, config.vision_width))
        self.blocks = nn.ModuleList(
            VisionBlock(config.vision_width, config.vision_heads, config.vision_mlp_ratio)
            for _ in range(config.vision_layers)
        )
        self.norm = nn.LayerNorm(config.vision_width, eps=1e-6)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values)
        cls_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        hidden_states = torch.cat([cls_tokens, patches], dim=1) + self.pos_embed[:, : patches.shape[1] + 1]
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return self.norm(hidden_states)  # (B, 1 + patches, vision_width)


# --------------------------------------------------------------------------- text encoder


class TextEmbeddings(nn.Module):
    """Word plus absolute position embeddings, then LayerNorm (no token-type embeddings)."""

    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class AttentionProjections(nn.Module):
    """Query, key and value projections, with keys and values taken from the image tokens in cross-attention."""

    def __init__(self, hidden_size: int, key_value_width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(key_value_width, hidden_size)
        self.value = nn.Linear(key_value_width, hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, additive_mask: torch.Tensor | None
    ) -> torch.Tensor:
        return _multi_head_attention(
            self.query(hidden_states), self.key(context), self.value(context), self.num_heads, additive_mask
        )


class ResidualOutput(nn.Module):
    """Dense projection added to the residual, then post-LayerNorm."""

    def __init__(self, in_features: int, hidden_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + residual)


class TextAttention(nn.Module):
    def __init__(self, config: ImageRewardConfig, key_value_width: int):
        super().__init__()
        # "self" is the official attribute name, which fixes the state-dict keys.
        self.self = AttentionProjections(config.hidden_size, key_value_width, config.num_attention_heads)
        self.output = ResidualOutput(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, additive_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.output(self.self(hidden_states, context, additive_mask), hidden_states)


class Intermediate(nn.Module):
    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden_states))


class TextLayer(nn.Module):
    """Self-attention over the prompt, cross-attention into the image tokens, feed-forward."""

    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.attention = TextAttention(config, config.hidden_size)
        self.crossattention = TextAttention(config, config.vision_width)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        hidden_states = self.attention(hidden_states, hidden_states, text_mask)
        # Every image token is attended to, so the cross-attention needs no mask.
        hidden_states = self.crossattention(hidden_states, image_embeds)
        return self.output(self.intermediate(hidden_states), hidden_states)


class TextLayers(nn.Module):
    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.layer = nn.ModuleList(TextLayer(config) for _ in range(config.num_hidden_layers))


class TextEncoder(nn.Module):
    """BLIP's multimodal BERT encoder."""

    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(config)
        self.encoder = TextLayers(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = self.embeddings(input_ids)
        # BERT's additive padding mask: 0 for tokens to attend to, -10000 for padding.
        text_mask = (1.0 - attention_mask[:, None, None, :].to(hidden_states.dtype)) * -10000.0  # (B, 1, 1, L)
        for layer in self.encoder.layer:
            hidden_states = layer(hidden_states, text_mask, image_embeds)
        return hidden_states  # (B, L, hidden_size)


# --------------------------------------------------------------------------- full model


class RewardHead(nn.Module):
    """Linear layers with dropout and no activations, indexed as in the official ``mlp.layers``."""

    def __init__(self, input_size: int):
        super().__init__()
        widths = (input_size, *HEAD_WIDTHS)
        modules: list[nn.Module] = []
        for index in range(len(HEAD_WIDTHS)):
            modules.append(nn.Linear(widths[index], widths[index + 1]))
            if index < len(HEAD_DROPOUTS):
                modules.append(nn.Dropout(HEAD_DROPOUTS[index]))
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class Blip(nn.Module):
    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.visual_encoder = VisionTransformer(config)
        self.text_encoder = TextEncoder(config)


class ImageRewardModel(nn.Module):
    """ImageReward network; ``forward`` returns normalised rewards (B,) and is differentiable."""

    def __init__(self, config: ImageRewardConfig | None = None):
        super().__init__()
        self.config = config or ImageRewardConfig()
        self.blip = Blip(self.config)
        self.mlp = RewardHead(self.config.hidden_size)

    def raw_rewards(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Return the head's output r (B,) before normalisation, computed in float32."""
        image_embeds = self.blip.visual_encoder(pixel_values)
        hidden_states = self.blip.text_encoder(input_ids, attention_mask, image_embeds)
        features = hidden_states[:, 0, :].float()
        return self.mlp(features).squeeze(-1)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return (self.raw_rewards(pixel_values, input_ids, attention_mask) - REWARD_MEAN) / REWARD_STD


# --------------------------------------------------------------------------- checkpoint


def expected_checkpoint_shapes(config: ImageRewardConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Return every required key of an official ``ImageReward.pt`` for ``config`` with its shape.

    The optional ``POSITION_IDS_KEY`` is not listed.
    """
    config = config or ImageRewardConfig()
    with torch.device("meta"):
        model = ImageRewardModel(config)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    shapes["blip.vision_proj.weight"] = (config.projection_dim, config.vision_width)
    shapes["blip.vision_proj.bias"] = (config.projection_dim,)
    shapes["blip.text_proj.weight"] = (config.projection_dim, config.hidden_size)
    shapes["blip.text_proj.bias"] = (config.projection_dim,)
    return shapes


def _format_keys(keys: Sequence[str], limit: int = 8) -> str:
    first = ", ".join(keys[:limit])
    if len(keys) > limit:
        return f"{first}, ... ({len(keys) - limit} more)"
    return first


def check_checkpoint(state_dict: Mapping[str, Any], config: ImageRewardConfig | None = None) -> None:
    """Raise ``CheckpointMismatchError`` unless ``state_dict`` has exactly the official keys and shapes.

    The message lists the missing keys, the unexpected keys and the shape mismatches.
    """
    config = config or ImageRewardConfig()
    not_tensors = sorted(str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointMismatchError(
            f"state dict entries are not tensors: {_format_keys(not_tensors)}. "
            "Pass the flat state dict of ImageReward.pt, not a training checkpoint that wraps it."
        )
    expected = expected_checkpoint_shapes(config)
    present = set(state_dict) - {POSITION_IDS_KEY}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    wrong_shapes = [
        f"{key} {tuple(state_dict[key].shape)} (expected {expected[key]})"
        for key in sorted(present & set(expected))
        if tuple(state_dict[key].shape) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_format_keys(unexpected)}")
    if wrong_shapes:
        problems.append(f"{len(wrong_shapes)} keys with other shapes: {_format_keys(wrong_shapes)}")
    if POSITION_IDS_KEY in state_dict:
        position_ids = state_dict[POSITION_IDS_KEY]
        if position_ids.numel() != config.max_position_embeddings or not torch.equal(
            position_ids.reshape(-1).long().cpu(), torch.arange(config.max_position_embeddings)
        ):
            problems.append(f"{POSITION_IDS_KEY} is not 0, 1, ..., {config.max_position_embeddings - 1}")
    if not problems:
        return
    hint = "Pass the ImageReward.pt file from hub repo THUDM/ImageReward, and a config that matches its sizes."
    if unexpected and all(key.startswith("module.") for key in unexpected):
        hint = (
            "The keys start with 'module.' because the model was saved inside DataParallel or "
            "DistributedDataParallel. Strip that prefix first."
        )
    raise CheckpointMismatchError(f"state dict does not match the ImageReward layout: {'; '.join(problems)}. {hint}")


def load_checkpoint(state_dict: Mapping[str, Any], config: ImageRewardConfig | None = None) -> ImageRewardModel:
    """Check ``state_dict`` against the official layout and return a model holding its tensors.

    The model is built on the meta device and takes the tensors over, so the weights
    are not allocated twice. The returned model is in eval mode.
    """
    config = config or ImageRewardConfig()
    check_checkpoint(state_dict, config)
    used = {
        key: value for key, value in state_dict.items() if key not in UNUSED_CHECKPOINT_KEYS and key != POSITION_IDS_KEY
    }
    with torch.device("meta"):
        model = ImageRewardModel(config)
    model.load_state_dict(used, strict=True, assign=True)
    return model.eval()


# --------------------------------------------------------------------------- inputs


def preprocess_image(image: Image.Image | np.ndarray, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Return the normalised (3, image_size, image_size) float32 tensor for one image.

    A PIL image is resized and cropped in its own mode and converted to RGB afterwards,
    as the official transform does. So an RGBA image is resampled with premultiplied
    alpha before the alpha is dropped, and a palette image is resized with nearest
    neighbour (the rule of Pillow 13's ``Image.resize`` for mode "P"). An array is first converted with
    ``to_rgb_array``.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if not isinstance(image, Image.Image):
        image = Image.fromarray(to_rgb_array(image))
    image = TF.resize(image, image_size, interpolation=InterpolationMode.BICUBIC)
    image = TF.center_crop(image, image_size)
    image = image.convert("RGB")
    return TF.normalize(TF.to_tensor(image), CLIP_MEAN, CLIP_STD)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load the bert-base-uncased WordPiece tokenizer with ImageReward's two added tokens.

    ``path`` is a folder that contains ``vocab.txt`` (and possibly the other tokenizer
    files of the hub repo), or the ``vocab.txt`` file itself.
    """
    from transformers import BertTokenizer

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name != "vocab.txt":
        raise ValueError(f"tokenizer vocabulary must be named vocab.txt, got {path}. Pass its folder or rename it.")
    if not (folder / "vocab.txt").is_file():
        raise MissingWeightsError(
            f"vocab.txt not found in {folder}. "
            "tokenizer_path must point at bert-base-uncased's vocab.txt or its folder."
        )
    tokenizer = BertTokenizer.from_pretrained(str(folder), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``input_ids`` and ``attention_mask`` (N, 35), padded and truncated as the official ``score``."""
    encoded = tokenizer(
        list(prompts), padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def resolve_file(spec: WeightsSpec, local_path: str | os.PathLike[str] | None) -> Path:
    """Return a local path to ``spec``'s file: ``local_path``, the Hugging Face cache, or a download.

    Raises ``MissingWeightsError`` that names the hub file, the path looked at and the
    argument that points at a local copy, without any network access when
    ``HF_HUB_OFFLINE`` is set.
    """
    if local_path is not None:
        path = Path(local_path)
        if path.is_dir():
            path = path / spec.filename
        if not path.is_file():
            raise MissingWeightsError(
                f"{spec.filename} not found at {path}. {spec.option} must point at {spec.filename} from hub repo "
                f"{spec.repo_id} (revision {spec.revision}) or at the folder that contains it."
            )
        return path
    cached = spec.local_file()
    if cached is not None:
        return cached
    if _hub_offline():
        from huggingface_hub.constants import HF_HUB_CACHE

        raise MissingWeightsError(
            f"{spec.filename} from hub repo {spec.repo_id} (revision {spec.revision}) is not in the Hugging Face "
            f"cache at {HF_HUB_CACHE} and HF_HUB_OFFLINE is set. Download it where the hub is reachable "
            f"(hf download {spec.repo_id} {spec.filename} --revision {spec.revision}) or pass a local copy "
            f"with {spec.option}=PATH."
        )
    return spec.resolve()


# --------------------------------------------------------------------------- scorer


class ImageRewardScorer(Scorer):
    """ImageReward v1.0 as a reward and benchmark scorer, where higher is better.

    Scores are raw rewards standardised with the mean and standard deviation that the
    authors measured on their test set. On images like that set they centre near 0 with
    a spread near 1.

    ``weights_path`` is a local ``ImageReward.pt`` (or its folder) and ``tokenizer_path``
    a local bert-base-uncased ``vocab.txt`` (or its folder). Left as None, each comes
    from the Hugging Face cache, or is downloaded at its pinned revision unless
    ``HF_HUB_OFFLINE`` is set. ``config`` and ``med_config`` change the network sizes,
    for small test checkpoints. ``dtype`` applies to the two encoders, and the head
    always runs in float32. ``trust_pickle`` allows full unpickling of a checkpoint that
    ``torch.load(weights_only=True)`` rejects.

    NOTE: this class has run only on the CPU (float32 and bfloat16). CUDA is untested.
    """

    name = "imagereward"
    version = "1.0"
    higher_is_better = True
    weights = (CHECKPOINT_SPEC, TOKENIZER_SPEC)
    bounds = None

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        config: ImageRewardConfig | None = None,
        med_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        trust_pickle: bool = False,
    ):
        from cogrpo.legacy_pickle import load_torch_weights

        if config is not None and med_config is not None:
            raise ValueError("pass either config or med_config, not both")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if med_config is not None:
            config = ImageRewardConfig.from_med_config(med_config)
        self.config = config or ImageRewardConfig()
        self.batch_size = batch_size
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = dtype

        # Resolve both files before the slow checkpoint load, so a missing one fails fast.
        checkpoint_file = resolve_file(CHECKPOINT_SPEC, weights_path)
        vocab_file = resolve_file(TOKENIZER_SPEC, tokenizer_path)
        self.weight_paths = (checkpoint_file,)

        self.tokenizer = load_tokenizer(vocab_file)
        if len(self.tokenizer) > self.config.vocab_size:
            raise ValueError(
                f"tokenizer at {vocab_file} has {len(self.tokenizer)} tokens but the text encoder's vocabulary has "
                f"{self.config.vocab_size}. Use the bert-base-uncased vocabulary that belongs to this checkpoint."
            )

        state_dict = load_torch_weights(checkpoint_file, trust_pickle=trust_pickle)
        if not isinstance(state_dict, Mapping):
            raise CheckpointMismatchError(f"{checkpoint_file} contains a {type(state_dict).__name__}, not a state dict")
        model = load_checkpoint(state_dict, self.config)
        model.blip.to(self.device, dtype)
        model.mlp.to(self.device, torch.float32)
        self.model = model.requires_grad_(False)
        logger.info("imagereward: loaded %s onto %s (%s)", checkpoint_file, self.device, dtype)

    def preprocess(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Return the stacked pixel tensor (N, 3, S, S) for images in any PIL mode or as arrays."""
        return torch.stack([preprocess_image(image, self.config.image_size) for image in images])

    @torch.inference_mode()
    def rewards(self, pixel_values: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return normalised and raw rewards (N,) for preprocessed pixels and one prompt per image."""
        input_ids, attention_mask = tokenize(self.tokenizer, prompts)
        normalised: list[torch.Tensor] = []
        raw: list[torch.Tensor] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            batch_raw = self.model.raw_rewards(
                pixel_values[start:stop].to(self.device, self.dtype),
                input_ids[start:stop].to(self.device),
                attention_mask[start:stop].to(self.device),
            )
            raw.append(batch_raw.cpu())
            normalised.append(((batch_raw - REWARD_MEAN) / REWARD_STD).cpu())
        return torch.cat(normalised), torch.cat(raw)

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Score RGB uint8 arrays (H, W, 3). ``metadata`` is not used.

        NOTE: ``Scorer.score`` converts images to RGB before this runs, so an RGBA or
        palette image scores slightly differently from the official code, which converts
        after resizing. ``preprocess`` followed by ``rewards`` keeps the official order.
        """
        if not images:
            return ScoreResult(scores=np.zeros(0, dtype=np.float32), errors=[], details=[])
        normalised, raw = self.rewards(self.preprocess(images), prompts)
        return ScoreResult(
            scores=normalised.numpy().astype(np.float32),
            errors=[None] * len(images),
            details=[{"raw_reward": float(value)} for value in raw],
        )

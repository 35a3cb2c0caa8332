"""aMUSEd (amused-256 and amused-512) as a ``UVitBackend``, plus random-weight builds.

aMUSEd is a MUSE-style masked image model: a ``UVit2DModel`` over VQ-GAN tokens
(8192 codes, 16x downsampling), conditioned on a CLIP-L/14 text encoder. The hub
repositories ``amused/amused-256`` and ``amused/amused-512`` hold the components
in the subfolders ``transformer``, ``vqvae``, ``text_encoder`` and ``tokenizer``.
Prompt conditioning, micro-conditioning and the default schedule follow
``AmusedPipeline`` in diffusers 0.42.1: guidance scale 10, Gumbel re-mask
temperature linear from 2 to 0, the empty prompt as the unconditional input.

``load_amused(random_weights=True)`` builds every component at full size from its
configuration, with the CLIP tokenizer built offline from open_clip's BPE file,
and ``build_tiny_amused`` builds a model of the same classes with about 0.4 M
parameters for tests and benchmarks.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cogrpo.models.base import random_init
from cogrpo.models.uvit import UVitBackend

SUBFOLDERS = ("transformer", "vqvae", "text_encoder", "tokenizer")
DEFAULT_GUIDANCE = 10.0  # AmusedPipeline.__call__ default guidance_scale
DEFAULT_REMASK_TEMPERATURE = (2.0, 0.0)  # AmusedPipeline.__call__ default temperature=(2, 0)
TEXT_MAX_LENGTH = 77  # CLIP's context length (its position embeddings)
CLIP_VOCAB_SIZE = 49408

# UVit2DModel's constructor defaults in diffusers are aMUSEd's transformer configuration.
# The 512 model adds a 2x down/up-sampling convolution, so both run a 16 x 16 grid inside.
# diffusers' scripts/convert_amused.py built the released checkpoints with these values.
TRANSFORMER_OVERRIDES = {
    "256": {"sample_size": 16, "downsample": False, "upsample": False},
    "512": {"sample_size": 32, "downsample": True, "upsample": True},
}

# The VQ-GAN of both aMUSEd variants. Meissonic's vqvae/config.json has the same values.
VQ_CONFIG: dict[str, Any] = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 256, 512, 768),
    down_block_types=("DownEncoderBlock2D",) * 5,
    up_block_types=("UpDecoderBlock2D",) * 5,
    in_channels=3,
    out_channels=3,
    latent_channels=64,
    layers_per_block=2,
    norm_num_groups=32,
    norm_type="group",
    num_vq_embeddings=8192,
    vq_embed_dim=None,
    sample_size=32,
    scaling_factor=0.18215,
    mid_block_add_attention=False,
    lookup_from_codebook=True,
    # AmusedPipeline decodes in float32 when this flag is set, because the VQ decoder produces NaNs in float16.
    force_upcast=True,
)

# CLIP ViT-L/14 text tower with its 768-d projection.
TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=TEXT_MAX_LENGTH,
    hidden_act="quick_gelu",
)


@dataclass(frozen=True)
class AmusedVariant:
    """One released aMUSEd checkpoint: its hub repository and token grid."""

    name: str
    repo_id: str
    revision: str
    grid: int
    image_size: int


# Commits of the hub repositories. NOTE: both were taken from public references (a hub cache
# snapshot folder name for amused-256, a raw README address for amused-512) and not checked against
# the hub's file listing. If a download at the pinned commit fails, pass revision=.
VARIANTS = {
    "256": AmusedVariant("amused-256", "amused/amused-256", "09b6259bf96dbe6d70a852b70812420fe02df55e", 16, 256),
    "512": AmusedVariant("amused-512", "amused/amused-512", "1ade4d510b58b500dfe820141737322007d17cd8", 32, 512),
}


class AmusedWeightsError(FileNotFoundError):
    """aMUSEd weights that are neither at the local path nor in (or downloadable to) the hub cache."""


class AmusedBackend(UVitBackend):
    """A ``UVitBackend`` whose VQ decoder outputs pixels in [0, 1], as aMUSEd's does.

    aMUSEd's VQ-GAN was trained on ``ToTensor()`` images without normalisation, and
    ``AmusedPipeline`` clips the decoder output to [0, 1]. The generic backend
    assumes [-1, 1].
    """

    vq_output_range = (0.0, 1.0)


def _variant_key(variant: str | int) -> str:
    key = str(variant)
    if key not in VARIANTS:
        raise ValueError(f"invalid aMUSEd variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return key


def _variant(variant: str | int) -> AmusedVariant:
    return VARIANTS[_variant_key(variant)]


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def build_clip_tokenizer(model_max_length: int = TEXT_MAX_LENGTH):
    """Build the 49,408-token CLIP BPE tokenizer from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary is the 256 byte symbols, the same with the ``</w>`` end-of-word
    mark, the 48,894 merges and the two special tokens, in that order, which is
    how OpenAI's CLIP numbers it. Needs no download.
    """
    import open_clip.tokenizer
    from transformers import CLIPTokenizer

    merge_count = 49152 - 256 - 2
    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : merge_count + 1]]
    symbols = list(open_clip.tokenizer.bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(pair) for pair in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"the CLIP BPE file gave {len(vocab)} tokens; expected {CLIP_VOCAB_SIZE}")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def amused_configs(variant: str | int = "256") -> dict[str, dict[str, Any]]:
    """Return the constructor arguments of the transformer, VQ model and text encoder config of a variant."""
    return {
        "transformer": dict(TRANSFORMER_OVERRIDES[_variant_key(variant)]),
        "vqvae": dict(VQ_CONFIG),
        "text_encoder": dict(TEXT_ENCODER_CONFIG),
    }


def build_random_components(variant: str | int = "256"):
    """Build the transformer, VQ model and text encoder of a variant with random weights.

    Modules are created on the current default device, so a caller can build
    them on ``torch.device("meta")`` to check shapes without allocating memory.
    The weights come from the global random state.
    """
    from diffusers import UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    configs = amused_configs(variant)
    transformer = UVit2DModel(**configs["transformer"])
    vq = VQModel(**configs["vqvae"])
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder"]))
    return transformer.eval(), vq.eval(), text_encoder.eval()


def resolve_weights_dir(variant: str | int = "256", path: str | os.PathLike[str] | None = None,
                        revision: str | None = None) -> Path:
    """Return a folder with the four component subfolders of a variant.

    ``path`` is a local copy (for example from ``hf download amused/amused-256
    --local-dir DIR``). Without it the hub snapshot at ``revision`` (default: the
    pinned one) is taken from the Hugging Face cache, or downloaded unless
    ``HF_HUB_OFFLINE`` is set. Raises ``AmusedWeightsError`` naming the hub id,
    the revision and the local-path option.
    """
    spec = _variant(variant)
    revision = revision or spec.revision
    hint = (
        f"Download it on a machine with hub access (hf download {spec.repo_id} --revision {revision}) "
        "or pass a local folder: --model-path FOLDER on the command line, path= in Python."
    )
    if path is not None:
        root = Path(path)
        missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
        if missing:
            raise AmusedWeightsError(
                f"the {spec.name} weights at {root} are incomplete: missing {', '.join(missing)}. "
                f"Expected the subfolders {', '.join(SUBFOLDERS)} of hub repo {spec.repo_id} (revision {revision})."
            )
        return root

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f"{name}/*.json" for name in SUBFOLDERS] + [f"{name}/*.txt" for name in SUBFOLDERS]
    patterns += [f"{name}/*.safetensors" for name in SUBFOLDERS]
    offline = _offline()
    try:
        folder = snapshot_download(
            spec.repo_id,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=["*.fp16.safetensors"],
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as error:
        reason = "HF_HUB_OFFLINE is set" if offline else "it could not be downloaded"
        raise AmusedWeightsError(
            f"hub repo {spec.repo_id} (revision {revision}) is not in the local Hugging Face cache and {reason}. {hint}"
        ) from error
    except OSError as error:  # the hub client raises several transport and HTTP error types
        raise AmusedWeightsError(
            f"could not download hub repo {spec.repo_id} (revision {revision}): {error}. {hint}"
        ) from error
    return Path(folder)


def _load_components(root: Path, spec: AmusedVariant, revision: str, dtype: torch.dtype):
    from diffusers import UVit2DModel, VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    try:
        transformer = UVit2DModel.from_pretrained(root / "transformer", torch_dtype=dtype, use_safetensors=True)
        vq = VQModel.from_pretrained(root / "vqvae", torch_dtype=torch.float32, use_safetensors=True)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(
            root / "text_encoder", dtype=dtype, use_safetensors=True
        )
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    except OSError as error:
        raise AmusedWeightsError(
            f"could not load {spec.name} from {root} (hub repo {spec.repo_id}, revision {revision}): {error}"
        ) from error
    return transformer, vq, text_encoder, tokenizer


def load_amused(
    variant: str | int = "256",
    path: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    dtype: torch.dtype | None = None,
) -> AmusedBackend:
    """Load amused-256 or amused-512 as a backend.

    ``path`` is a local folder with the four component subfolders, and
    ``revision`` replaces the pinned hub revision. ``dtype`` (default float32)
    applies to the transformer and the text encoder. The VQ decoder stays in
    float32, as ``AmusedPipeline`` upcasts it. ``random_weights=True`` builds
    every component from its configuration on ``device``, with random weights
    drawn from a fixed seed and the offline tokenizer, without any file access.
    Raises ``AmusedWeightsError`` when the weights are neither at ``path`` nor in
    the hub cache and cannot be downloaded.
    """
    spec = _variant(variant)
    revision = revision or spec.revision
    dtype = dtype or torch.float32
    if random_weights:
        if path is not None:
            raise ValueError("random_weights=True builds aMUSEd from built-in configs; drop path (--model-path)")
        with random_init(device):
            transformer, vq, text_encoder = build_random_components(variant)
        transformer.to(dtype)
        text_encoder.to(dtype)
        tokenizer = build_clip_tokenizer()
        backend_revision = "random"
    else:
        root = resolve_weights_dir(variant, path, revision)
        transformer, vq, text_encoder, tokenizer = _load_components(root, spec, revision, dtype)
        backend_revision = revision if path is None else f"path:{Path(path).resolve()}"
    text_max_length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    backend = AmusedBackend(
        spec.name,
        transformer,
        vq,
        text_encoder,
        tokenizer,
        grid=(spec.grid, spec.grid),
        image_size=(spec.image_size, spec.image_size),
        mask_token_id=int(transformer.config.vocab_size) - 1,
        default_guidance=DEFAULT_GUIDANCE,
        default_remask_temperature=DEFAULT_REMASK_TEMPERATURE,
        text_max_length=text_max_length,
        device=device,
        revision=backend_revision,
    )
    backend.weights_dir = None if random_weights else root
    return backend


def load_amused_256(**kwargs: Any) -> AmusedBackend:
    """Load amused-256 (16 x 16 tokens, 256 px); the arguments are those of ``load_amused``."""
    return load_amused("256", **kwargs)


def load_amused_512(**kwargs: Any) -> AmusedBackend:
    """Load amused-512 (32 x 32 tokens, 512 px); the arguments are those of ``load_amused``."""
    return load_amused("512", **kwargs)


def weights_available(variant: str | int = "256") -> bool:
    """Return True when the pinned hub snapshot of a variant is in the local Hugging Face cache."""
    spec = _variant(variant)
    from huggingface_hub import try_to_load_from_cache

    files = ("transformer/config.json", "vqvae/config.json", "text_encoder/config.json")
    return all(isinstance(try_to_load_from_cache(spec.repo_id, f, revision=spec.revision), str) for f in files)


def weights_available_256() -> bool:
    """Return True when amused-256 at its pinned revision is cached."""
    return weights_available("256")


def weights_available_512() -> bool:
    """Return True when amused-512 at its pinned revision is cached."""
    return weights_available("512")


# Tiny components: the shapes of diffusers' aMUSEd fast tests (deleted from diffusers in July 2025),
# except that the CLIP text encoder's vocabulary covers the real 49,408-token tokenizer.
TINY_CODEBOOK_SIZE = 8
TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    hidden_size=8,
    use_bias=False,
    hidden_dropout=0.0,
    cond_embed_dim=8,
    micro_cond_encode_dim=2,
    micro_cond_embed_dim=10,
    encoder_hidden_size=8,
    vocab_size=32,
    codebook_size=TINY_CODEBOOK_SIZE,
    in_channels=8,
    block_out_channels=8,
    num_res_blocks=1,
    downsample=True,
    upsample=True,
    block_num_heads=1,
    num_hidden_layers=1,
    num_attention_heads=1,
    attention_dropout=0.0,
    intermediate_size=8,
    layer_norm_eps=1e-06,
    ln_elementwise_affine=True,
)
TINY_VQ_CONFIG: dict[str, Any] = dict(
    act_fn="silu",
    block_out_channels=[8],
    down_block_types=["DownEncoderBlock2D"],
    in_channels=3,
    latent_channels=8,
    layers_per_block=1,
    norm_num_groups=8,
    num_vq_embeddings=TINY_CODEBOOK_SIZE,
    out_channels=3,
    sample_size=8,
    up_block_types=["UpDecoderBlock2D"],
    mid_block_add_attention=False,
    lookup_from_codebook=True,
)
TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    hidden_size=8,
    intermediate_size=8,
    layer_norm_eps=1e-05,
    num_attention_heads=1,
    num_hidden_layers=1,
    vocab_size=CLIP_VOCAB_SIZE,
    projection_dim=8,
    max_position_embeddings=TEXT_MAX_LENGTH,
)


def build_tiny_amused(
    seed: int = 0, grid: tuple[int, int] = (4, 4), device: str | torch.device = "cpu"
) -> AmusedBackend:
    """Build a tiny random aMUSEd backend (about 0.4 M parameters, most in the token embedding).

    The tiny VQ model has one level, so a ``grid`` of h x w tokens is an h x w
    pixel image. Both grid sides must be even because the transformer down- and
    up-samples by 2. The weights depend only on ``seed``; the global random state
    is left as it was.
    """
    from diffusers import UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    height, width = grid
    if height % 2 or width % 2 or height < 2 or width < 2:
        raise ValueError(f"invalid tiny aMUSEd grid {grid}; both sides must be even and at least 2")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = UVit2DModel(sample_size=height, **TINY_TRANSFORMER_CONFIG)
        vq = VQModel(**TINY_VQ_CONFIG)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_ENCODER_CONFIG))
    return AmusedBackend(
        "amused-tiny",
        transformer.eval(),
        vq.eval(),
        text_encoder.eval(),
        build_clip_tokenizer(),
        grid=(height, width),
        image_size=(height, width),
        mask_token_id=int(transformer.config.vocab_size) - 1,
        default_guidance=DEFAULT_GUIDANCE,
        default_remask_temperature=DEFAULT_REMASK_TEMPERATURE,
        text_max_length=TEXT_MAX_LENGTH,
        device=device,
        revision=f"random-tiny-seed{seed}",
    )

"""The embedded shapes model: loads the committed weights into a ``UVitBackend``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cogrpo.models import shapes_components as comp
from cogrpo.models.base import random_init
from cogrpo.models.uvit import UVitBackend

DEFAULT_GUIDANCE = 3.0
DEFAULT_REMASK_TEMPERATURE = (2.0, 0.0)
REQUIRED = ("vqvae", "transformer", "text_encoder", "tokenizer")


def weights_dir(path: str | Path | None = None) -> Path:
    """Return the folder of the embedded weights (the committed ones by default)."""
    return Path(path) if path is not None else comp.ASSET_DIR


def weights_available(path: str | Path | None = None) -> bool:
    """Return True when every component folder of the embedded model exists."""
    root = weights_dir(path)
    return all((root / name).is_dir() for name in REQUIRED)


def weights_hash(path: str | Path | None = None) -> str:
    """Return a SHA-256 over the embedded model's weight files, to identify the base model."""
    root = weights_dir(path)
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.safetensors")):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_shapes_backend(
    path: str | Path | None = None, device: str | torch.device = "cpu", random_weights: bool = False
) -> UVitBackend:
    """Load the embedded shapes model from ``path`` (default: the committed weights).

    ``random_weights=True`` builds the same architecture on ``device`` with
    random weights from a fixed seed, reading no file.
    """
    from diffusers import UVit2DModel
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

    if random_weights:
        if path is not None:
            raise ValueError("random_weights=True builds the shapes model from built-in configs; drop path (--model-path)")
        with random_init(device):
            transformer = comp.build_transformer().eval()
            vq = comp.build_vq()
            text_encoder = comp.build_text_encoder()
        tokenizer = comp.build_tokenizer()
        revision = "random"
    else:
        root = weights_dir(path)
        missing = [name for name in REQUIRED if not (root / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"the embedded shapes model is incomplete at {root}: missing {', '.join(missing)}. "
                "Run `cogrpo pretrain` to build it, or pass --model-path to a folder that has it."
            )
        transformer = UVit2DModel.from_pretrained(root / "transformer")
        vq = comp.load_vq(root / "vqvae")
        text_encoder = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(root / "tokenizer")
        revision = f"sha256:{weights_hash(root)}"
    return UVitBackend(
        "shapes",
        transformer,
        vq,
        text_encoder,
        tokenizer,
        grid=(comp.GRID, comp.GRID),
        image_size=(comp.IMAGE_SIZE, comp.IMAGE_SIZE),
        mask_token_id=comp.MASK_TOKEN_ID,
        default_guidance=DEFAULT_GUIDANCE,
        default_remask_temperature=DEFAULT_REMASK_TEMPERATURE,
        text_max_length=comp.TEXT_MAX_LENGTH,
        device=device,
        revision=revision,
    )

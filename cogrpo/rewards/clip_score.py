"""CLIPScore of an image and its prompt, on open_clip.

The score is ``max(100 * cos(E_I, E_C), 0)``, the definition used by torchmetrics'
``CLIPScore``: the cosine of the normalised image and text embeddings times 100, with
negative values raised to 0, so scores lie in [0, 100].

The default model is OpenCLIP ``ViT-L-14`` with the ``openai`` weights, the same
weights as torchmetrics' default ``openai/clip-vit-large-patch14``. Differences from
torchmetrics: it runs on transformers' CLIP and image processor, while this module
uses open_clip's model and its eval transform (shorter side to 224 bicubic, centre
crop, OpenAI CLIP mean and std), so scores can differ slightly. torchmetrics also
returns one mean over a batch, while this module gives each image its own score.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cogrpo.rewards.base import MissingWeightsError, Scorer, ScoreResult, WeightsSpec
from cogrpo.rewards.hps import default_device

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"

# NOTE: open_clip downloads the newest revision of this hub repo; it takes no pinned
# revision, so the weights can change without notice.
DEFAULT_WEIGHTS = WeightsSpec(
    repo_id="timm/vit_large_patch14_clip_224.openai",
    filename="open_clip_pytorch_model.bin",
    revision="main",
)

# open_clip's file name for hub weights, and the safetensors copy it tries first.
OPEN_CLIP_HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class CLIPScoreScorer(Scorer):
    """CLIPScore, ``max(100 * cos(image, prompt), 0)``, in [0, 100].

    The weights are loaded once by open_clip's own loader, from a local file given
    as ``checkpoint`` or from the hub for the ``pretrained`` tag. Images are encoded
    ``batch_size`` at a time in fp32.
    """

    name = "clip"
    version = f"{DEFAULT_MODEL_NAME}/{DEFAULT_PRETRAINED}"
    higher_is_better = True
    weights = (DEFAULT_WEIGHTS,)
    bounds = (0.0, 100.0)

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL_NAME,
        pretrained: str | None = DEFAULT_PRETRAINED,
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        quick_gelu: bool | None = None,
    ):
        """Load the CLIP model.

        ``model_name`` is an open_clip config name. ``pretrained`` is an open_clip
        weights tag for that config. ``checkpoint`` is a local weights file and
        replaces the tag's download. ``quick_gelu`` (default: what the tag was trained
        with; True for ``openai``) selects the QuickGELU activation.

        Raises ``MissingWeightsError`` before building the model when the weights are
        not on this machine and ``HF_HUB_OFFLINE`` is set, or when the download fails.
        """
        import open_clip

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if checkpoint is None and not pretrained:
            raise ValueError("missing weights: pass a pretrained tag or a checkpoint path, because a CLIPScore with random weights is meaningless")

        self.model_name = model_name
        self.batch_size = batch_size
        self.device = default_device(device)

        tag_config: dict[str, Any] = {}
        if checkpoint is None:
            tag_config = open_clip.get_pretrained_cfg(model_name, pretrained)
            if not tag_config:
                available = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
                raise ValueError(f"unknown open_clip weights {pretrained!r} for {model_name!r}. Available tags: {available}")
        if quick_gelu is None:
            quick_gelu = bool(tag_config.get("quick_gelu", False))

        if checkpoint is not None:
            source = _local_checkpoint(checkpoint)
            self.version = f"{model_name}/{Path(source).name}"
            self.weight_paths = (Path(source),)
        else:
            check_tag_weights_available(model_name, pretrained, tag_config, DEFAULT_WEIGHTS.option)
            source = pretrained
            self.version = f"{model_name}/{pretrained}"

        try:
            model = open_clip.create_model(model_name, pretrained=source, device="cpu", force_quick_gelu=quick_gelu)
        except RuntimeError as error:
            if checkpoint is not None or "download" not in str(error).lower():
                raise
            raise MissingWeightsError(
                f"could not get the open_clip weights {pretrained!r} for {model_name}: {error}. "
                "In Python, pass a local copy with CLIPScoreScorer(checkpoint=PATH)."
            ) from error
        if checkpoint is None:
            cached = cached_tag_file(tag_config)
            self.weight_paths = (cached,) if cached is not None else ()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.transform = _eval_transform(open_clip, model)
        logger.info("%s: loaded %s on %s (quick_gelu=%s)", self.name, self.version, self.device, quick_gelu)

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Score RGB uint8 arrays against their prompts, ``batch_size`` pairs at a time."""
        scores = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            pixels = torch.stack([self.transform(Image.fromarray(image)) for image in images[start:stop]])
            tokens = self.tokenizer(list(prompts[start:stop]))
            with torch.inference_mode():
                image_features = self.model.encode_image(pixels.to(self.device), normalize=True)
                text_features = self.model.encode_text(tokens.to(self.device), normalize=True)
                # One dot product per pair, so a score does not depend on the rest of the batch.
                cosine = torch.bmm(image_features.unsqueeze(1), text_features.unsqueeze(2)).flatten()
            scores[start:stop] = torch.clamp(100.0 * cosine.float(), min=0.0).cpu().numpy()
        return ScoreResult(scores=scores, errors=[None] * len(images))


def _local_checkpoint(checkpoint: str | os.PathLike[str]) -> str:
    path = Path(checkpoint)
    if not path.is_file():
        raise MissingWeightsError(
            f"CLIP weights not found at {path}; pass the path of an open_clip checkpoint file."
        )
    return str(path)


def cached_tag_file(tag_config: dict[str, Any]) -> Path | None:
    """Return the local file of an open_clip weights tag if it is on this machine, else None.

    Looks where open_clip 3.3 does, in the same order: the Hugging Face cache for a
    tag with a hub repo (the safetensors copy first), else the URL download folder
    ``~/.cache/clip``. Nothing is downloaded.
    """
    hub_entry = tag_config.get("hf_hub", "")
    if hub_entry:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub_entry)
        for name in (filename,) if filename else OPEN_CLIP_HUB_FILENAMES:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str):
                return Path(found)
        return None
    url = tag_config.get("url", "")
    path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    return path if url and path.is_file() else None


def check_tag_weights_available(model_name: str, pretrained: str, tag_config: dict[str, Any], option: str | None) -> None:
    """Raise ``MissingWeightsError`` when ``HF_HUB_OFFLINE`` is set and the tag's file is not on this machine.

    open_clip would otherwise fail only after building the model. The check mirrors
    where open_clip 3.3 looks: the Hugging Face cache for a tag with a hub repo, else
    its URL download folder ``~/.cache/clip``. ``option`` is the command-line option
    that takes a local copy instead, or None for the CLIP score reward, which only
    the Python API can point at a local file.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in {"1", "true", "yes", "on"}:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    hub_entry = tag_config.get("hf_hub", "")
    if hub_entry:
        # "org/repo/" means open_clip's default file names, "org/repo/file" one file.
        repo_id, filename = os.path.split(hub_entry)
        filenames = (filename,) if filename else OPEN_CLIP_HUB_FILENAMES
        if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames):
            return
        looked_at = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        expected = f"{' or '.join(filenames)} from hub repo {repo_id}"
        download = f"hf download {repo_id} {filenames[-1]}"
    else:
        url = tag_config.get("url", "")
        looked_at = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if url and looked_at.is_file():
            return
        expected = f"the file at {url}"
        download = f"download {url} to {looked_at}"
    raise MissingWeightsError(
        f"open_clip weights {pretrained!r} for {model_name} ({expected}) are not on this machine "
        f"(looked at {looked_at}) and HF_HUB_OFFLINE is set. On a machine with access run: {download}; "
        + (f"or pass a local copy with {option} PATH." if option else
           "or, in Python, pass a local copy with CLIPScoreScorer(checkpoint=PATH).")
    )


def _eval_transform(open_clip: Any, model: torch.nn.Module) -> Any:
    """Return open_clip's eval transform for the model's preprocessing config."""
    config = open_clip.get_model_preprocess_cfg(model)
    return open_clip.image_transform(
        config.get("size", 224),
        is_train=False,
        mean=config.get("mean"),
        std=config.get("std"),
        resize_mode=config.get("resize_mode"),
        interpolation=config.get("interpolation"),
        fill_color=config.get("fill_color", 0),
    )

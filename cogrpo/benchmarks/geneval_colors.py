"""GenEval's colour classifier: zero-shot CLIP over ten colours on masked object crops.

The official evaluator (djghosh13/geneval at commit
af4902f24d3ca90ebbb446dd9891a59e0f82725f, ``evaluation/evaluate_images.py``)
classifies the colour of each detected object like this:

* the object's mask is composited over a plain #999999 grey image of the same
  size (pixels outside the mask become grey), then the result is cropped to the
  object's box with PIL's ``Image.crop``, which rounds the box coordinates;
* the crop goes through OpenCLIP's eval transform of ``ViT-L-14`` with the
  ``openai`` weights (QuickGELU);
* each colour's text embedding is the renormalised mean of the normalised
  embeddings of three templates, "a photo of a {colour} {class}", "a photo of
  a {colour}-colored {class}" and "a photo of a {colour} object" (CLIP_benchmark's
  zero-shot classifier), and the colour with the highest 100 x cosine wins.

The official code runs both the text and the image side under fp16 autocast
on CUDA. ``amp`` does the same here, and it is on by default on CUDA only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cogrpo.benchmarks.geneval import COLORS, ColorClassifier, Detection
from cogrpo.rewards.base import MissingWeightsError, WeightsSpec
from cogrpo.rewards.clip_score import DEFAULT_WEIGHTS, cached_tag_file, check_tag_weights_available

logger = logging.getLogger(__name__)

BACKGROUND_COLOR = (153, 153, 153)  # "#999", the official crop background
COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {color} {object}",
    "a photo of a {color}-colored {object}",
    "a photo of a {color} object",
)
DEFAULT_MODEL_NAME = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
# The hub file of the default tag, the same weights as CLIPScore's. NOTE: its revision
# is "main" because open_clip takes no pinned revision.
DEFAULT_CLIP_WEIGHTS: WeightsSpec = DEFAULT_WEIGHTS
# open_clip's file names for hub weights, the safetensors copy first.


@runtime_checkable
class ColorModel(Protocol):
    """A colour model for GenEval: ``bind(image)`` returns the classifier that ``judge`` calls for that image."""

    name: str

    def bind(self, image: np.ndarray) -> ColorClassifier: ...


def color_prompts(object_name: str) -> list[list[str]]:
    """Return the text prompts of each colour, in ``COLORS`` order, for one object class."""
    return [[template.format(color=color, object=object_name) for template in COLOR_TEMPLATES] for color in COLORS]


def object_crop(image: Image.Image, detection: Detection, background: tuple[int, int, int] = BACKGROUND_COLOR) -> Image.Image:
    """Return the official colour crop: the mask over a grey background, cropped to the box.

    A detection without a mask keeps the whole image before the crop, as in the
    official code. A box that rounds to an empty crop keeps the whole masked
    image, where the official code would fail.
    """
    image = image.convert("RGB")
    if detection.mask is not None:
        mask = np.asarray(detection.mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask of shape {mask.shape} does not match the image size {(image.height, image.width)}")
        blank = Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(mask))
    cropped = image.crop(tuple(float(v) for v in detection.box[:4]))
    if cropped.width < 1 or cropped.height < 1:
        logger.warning("colour crop of box %s is empty; using the whole masked image", detection.box)
        return image
    return cropped


class PaletteColorModel:
    """The shapes world's colour rule: the median masked pixel's nearest palette colour."""

    name = "palette"
    weights: tuple[WeightsSpec, ...] = ()
    weight_paths: tuple[Path, ...] = ()

    def bind(self, image: np.ndarray) -> ColorClassifier:
        from cogrpo.world.detector import color_classifier

        return color_classifier(np.asarray(image))


class CLIPColorModel:
    """GenEval's zero-shot CLIP colour classifier (see the module docstring).

    ``checkpoint`` is a local open_clip weights file for ``model_name``. Without
    it, the ``pretrained`` tag's weights come from the Hugging Face cache or hub.
    With ``HF_HUB_OFFLINE`` set, a missing file raises ``MissingWeightsError``
    before the model is built. Crops are encoded ``batch_size`` at a time, and
    the colour embeddings of each object class are computed once and cached.
    """

    name = "clip"
    weights = (DEFAULT_CLIP_WEIGHTS,)
    # The local weights file that was loaded, when its path is known without a download.
    weight_paths: tuple[Path, ...] = ()

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL_NAME,
        pretrained: str | None = DEFAULT_PRETRAINED,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int = 16,
        amp: bool | None = None,
        quick_gelu: bool | None = None,
        option: str = "--clip-weights",
    ):
        import open_clip
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if checkpoint is None and not pretrained:
            raise ValueError("missing weights: pass a pretrained tag or a checkpoint path, because random CLIP weights classify nothing")
        tag_config: dict[str, Any] = {}
        if checkpoint is None:
            tag_config = open_clip.get_pretrained_cfg(model_name, pretrained)
            if not tag_config:
                available = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
                raise ValueError(f"unknown open_clip weights {pretrained!r} for {model_name!r}; available tags: {available}")
            check_tag_weights_available(model_name, pretrained, tag_config, option)
            source = pretrained
            cached = cached_tag_file(tag_config)
            self.weight_paths = (cached,) if cached is not None else ()
        else:
            path = Path(checkpoint)
            if not path.is_file():
                raise MissingWeightsError(
                    f"CLIP weights not found at {path}; expected an open_clip checkpoint of {model_name}. "
                    f"Pass the file with {option} PATH."
                )
            source = str(path)
            self.weight_paths = (path,)
        if quick_gelu is None:
            # A local checkpoint takes the activation of the tag it copies: QuickGELU for "openai" weights.
            quick_gelu = bool(tag_config.get("quick_gelu", False)) if checkpoint is None else pretrained == "openai"

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device="cpu", force_quick_gelu=quick_gelu
            )
        except RuntimeError as error:
            if checkpoint is not None or "download" not in str(error).lower():
                raise
            raise MissingWeightsError(
                f"could not get the open_clip weights {pretrained!r} for {model_name}: {error}. "
                f"Pass a local copy with {option} PATH."
            ) from error
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.transform = transform
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        self.version = f"{model_name}/{Path(source).name if checkpoint is not None else source}"
        self._class_embeddings: dict[str, Any] = {}
        logger.info("clip colours: loaded %s on %s (quick_gelu=%s, amp=%s)", self.version, self.device, quick_gelu, self.amp)

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def class_embeddings(self, object_name: str) -> Any:
        """Return the (embedding dim, 10) colour embeddings of one object class, cached."""
        import torch

        cached = self._class_embeddings.get(object_name)
        if cached is not None:
            return cached
        columns = []
        with torch.inference_mode(), self._autocast():
            for texts in color_prompts(object_name):
                features = self.model.encode_text(self.tokenizer(texts).to(self.device))
                features = torch.nn.functional.normalize(features, dim=-1).mean(dim=0)
                columns.append(features / features.norm())
        weights = torch.stack(columns, dim=1)
        self._class_embeddings[object_name] = weights
        return weights

    def logits(self, image: Image.Image, object_name: str, objects: Sequence[Detection]) -> Any:
        """Return the (objects, 10) logits, 100 x cosine, of each object's crop against each colour."""
        import torch

        weights = self.class_embeddings(object_name)
        rows = []
        for start in range(0, len(objects), self.batch_size):
            crops = [object_crop(image, obj) for obj in objects[start : start + self.batch_size]]
            pixels = torch.stack([self.transform(crop) for crop in crops]).to(self.device)
            with torch.inference_mode(), self._autocast():
                features = torch.nn.functional.normalize(self.model.encode_image(pixels), dim=-1)
                rows.append((100.0 * features @ weights).float())
        if not rows:
            return torch.zeros((0, len(COLORS)))
        return torch.cat(rows)

    def classify(self, image: np.ndarray | Image.Image, object_name: str, objects: Sequence[Detection]) -> list[str]:
        """Return the colour name of each object."""
        picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        logits = self.logits(picture, object_name, list(objects))
        return [COLORS[int(index)] for index in logits.argmax(dim=1).tolist()]

    def bind(self, image: np.ndarray) -> ColorClassifier:
        """Return a ``judge`` colour classifier for one image."""
        picture = Image.fromarray(np.asarray(image))

        def classify(object_name: str, objects: Sequence[Detection]) -> list[str]:
            return self.classify(picture, object_name, objects)

        return classify


def declared_color_weights(name: str) -> tuple[WeightsSpec, ...]:
    """Return the pinned weights of the colour model called ``name``, without building it."""
    if name == "clip":
        return CLIPColorModel.weights
    if name == "palette":
        return PaletteColorModel.weights
    raise ValueError(f"unknown colour model {name!r}; allowed: clip, palette")


def build_color_model(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | None = None,
    option: str = "--clip-weights",
) -> ColorModel:
    """Build a colour model by name: ``clip`` (GenEval's) or ``palette`` (the shapes world's)."""
    if name == "clip":
        return CLIPColorModel(checkpoint=weights, device=device, option=option)
    if name == "palette":
        if weights is not None:
            raise ValueError("the palette colour model has no weights; drop the weights path")
        return PaletteColorModel()
    raise ValueError(f"unknown colour model {name!r}; allowed: clip, palette")

"""HPS v2 and v2.1 (Human Preference Score) as a reward, and the HPD v2 benchmark.

HPS is an OpenCLIP ViT-H-14 fine-tuned on human preference pairs. The score is the
cosine similarity of the L2-normalised image and text features, with no logit scale.
The reward is that raw cosine, and the benchmark reports it multiplied by 100.

Facts taken from the official code (tgxs002/HPSv2, as packaged in hpsv2x 1.2.0):

* checkpoints ``HPS_v2_compressed.pt`` (v2.0) and ``HPS_v2.1_compressed.pt`` (v2.1) in hub
  repo ``xswu/HPSv2`` are ``torch.save`` pickles of ``{"state_dict": ...}``, loaded
  strictly into the ViT-H-14 model. Each file is 1.97 GB for 986.1 M parameters, so
  the tensors are 2-byte fp16;
* the eval transform converts to RGB, applies ``ToTensor``, resizes the tensor so the
  longer side is 224 (bicubic), zero-pads it to 224x224 centred, and normalises with the
  OpenAI CLIP mean and std;
* the text goes through the OpenCLIP BPE tokenizer with a context of 77 tokens;
* the forward pass runs under CUDA fp16 autocast.

The model is built with ``open_clip.create_model(model_name, pretrained=None)``, so the
3.9 GB LAION ViT-H-14 weights that ``hpsv2.score`` downloads first are never fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogrpo.legacy_pickle import load_torch_weights
from cogrpo.rewards.base import ImageLike, MissingWeightsError, Scorer, ScoreResult, WeightsSpec, to_rgb_array

logger = logging.getLogger(__name__)

HPS_REPO_ID = "xswu/HPSv2"
# Commit "Upload 2 files" of xswu/HPSv2, which added both compressed checkpoints.
HPS_REVISION = "697403c78157020a1ae59d23f111aa58ced35b0a"

# SHA-256 values are the git-lfs object ids shown for that commit on the hub.
HPS_WEIGHTS: dict[str, WeightsSpec] = {
    "v2.0": WeightsSpec(
        repo_id=HPS_REPO_ID,
        filename="HPS_v2_compressed.pt",
        revision=HPS_REVISION,
        sha256="07cb0d20626232204ca3a6ec53ff5984e7e53212a8a7b0e0ec2bac1bdaf125a1",
    ),
    "v2.1": WeightsSpec(
        repo_id=HPS_REPO_ID,
        filename="HPS_v2.1_compressed.pt",
        revision=HPS_REVISION,
        sha256="c57a38fb4a2f7e7c15bf00da2ea377cdf165448b4dd1052a484c215a998c9837",
    ),
}

IMAGE_SIZE = 224
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Number of keys listed per category in the error for a checkpoint that does not match the model.
MAX_KEYS_IN_MESSAGE = 10


class HPSCheckpointError(ValueError):
    """A checkpoint whose layout or keys do not match the HPS model."""


# --------------------------------------------------------------------------- preprocessing


def preprocess_image(image: ImageLike, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Convert one image to the normalised float32 (3, S, S) tensor that HPS scores.

    The steps follow hpsv2's eval transform (``ResizeMaxSize`` with
    ``light_augmentation=True``):

    1. convert to (H, W, 3) uint8 RGB with ``to_rgb_array`` (alpha is dropped), then
       scale to [0, 1] as ``ToTensor`` does;
    2. resize the tensor so its longer side is ``image_size``, bicubic with
       ``antialias=True`` (torchvision's default for tensors since 0.17), each side
       rounded with Python's ``round``;
    3. zero-pad to ``image_size`` x ``image_size``, with the extra pixel of an odd
       padding on the right or bottom;
    4. normalise with the OpenAI CLIP mean and std.

    Like the official code, an image whose longer side already equals ``image_size``
    is not resized. The official code then skips the padding too, so a non-square
    image of that size reaches the ViT at the wrong shape and its forward pass fails.
    Here such an image is padded, so it gets a score. Every image that the official
    code can score gets the same tensor here.

    The official code also fails on an RGBA image (it keeps 4 channels) and on a
    side that rounds to 0 pixels. Here alpha is dropped and each side is at least 1.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    array = to_rgb_array(image)
    tensor = torch.tensor(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    height, width = array.shape[:2]
    scale = image_size / float(max(height, width))
    if scale != 1.0:
        new_height = max(1, round(height * scale))
        new_width = max(1, round(width * scale))
        tensor = TF.resize(tensor, [new_height, new_width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        height, width = new_height, new_width

    pad_height = image_size - height
    pad_width = image_size - width
    if pad_height or pad_width:
        padding = [pad_width // 2, pad_height // 2, pad_width - pad_width // 2, pad_height - pad_height // 2]
        tensor = TF.pad(tensor, padding=padding, fill=0)

    return TF.normalize(tensor, mean=list(OPENAI_CLIP_MEAN), std=list(OPENAI_CLIP_STD))


def preprocess(images: Sequence[ImageLike], image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Preprocess images with ``preprocess_image`` and stack them into (N, 3, S, S)."""
    if not images:
        return torch.empty(0, 3, image_size, image_size)
    return torch.stack([preprocess_image(image, image_size) for image in images])


# --------------------------------------------------------------------------- checkpoints


def extract_state_dict(checkpoint: Any, source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Return the tensors of an HPS checkpoint: its ``"state_dict"`` entry, or the dict itself.

    The released files contain ``{"state_dict": ...}``. A bare dict of tensors is
    accepted too. Anything else raises ``HPSCheckpointError``.
    """
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    elif isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state_dict = checkpoint
    else:
        found = f"keys {_format_keys(sorted(map(str, checkpoint)))}" if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise HPSCheckpointError(
            f"{source} is not an HPS checkpoint: expected a dict with a 'state_dict' entry of tensors, found {found}"
        )

    if not isinstance(state_dict, Mapping) or not state_dict:
        raise HPSCheckpointError(f"{source}: 'state_dict' must be a non-empty dict of tensors, found {type(state_dict).__name__}")
    not_tensors = [str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise HPSCheckpointError(f"{source}: 'state_dict' entries that are not tensors: {_format_keys(not_tensors)}")
    return dict(state_dict)


def check_state_dict_keys(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Raise ``HPSCheckpointError`` listing missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key} (checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if not (missing or unexpected or mismatched):
        return

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} keys with the wrong shape: {_format_keys(mismatched)}")
    hint = ""
    if unexpected and all(key.startswith("module.") for key in unexpected):
        hint = " The 'module.' prefix comes from a DistributedDataParallel wrapper; strip it before saving."
    raise HPSCheckpointError(
        f"checkpoint {source} does not match open_clip model {model_name!r}: {'; '.join(problems)}.{hint} "
        "Pass an HPS v2 checkpoint for this architecture, or the model_name it was trained with."
    )


def _format_keys(keys: Sequence[str]) -> str:
    listed = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    if len(keys) > MAX_KEYS_IN_MESSAGE:
        listed += f", and {len(keys) - MAX_KEYS_IN_MESSAGE} more"
    return listed


def hub_cache_folder(repo_id: str, repo_type: str = "model") -> Path:
    """Return the folder where the Hugging Face cache keeps ``repo_id``."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------- scorer


class HPSScorer(Scorer):
    """HPS v2.1 (or v2.0) score: cosine of the image and prompt features, in [-1, 1].

    The checkpoint is loaded once. Images are preprocessed with ``preprocess_image``
    and encoded ``batch_size`` at a time. On CUDA the forward pass runs under fp16
    autocast, as in the official code. On the CPU it runs in fp32, as the official
    code does there, because its autocast is CUDA-only.
    """

    name = "hps"
    version = "v2.1"
    higher_is_better = True
    weights = (HPS_WEIGHTS["v2.1"],)
    bounds = (-1.0, 1.0)

    @classmethod
    def declared_weights(cls, version: str | None = None, *args: Any, **options: Any) -> tuple[WeightsSpec, ...]:
        """Return the pinned checkpoint of ``version`` (default: the class's version)."""
        return (HPS_WEIGHTS[version or cls.version],)

    def __init__(
        self,
        version: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        model_name: str = "ViT-H-14",
        device: str | torch.device | None = None,
        batch_size: int = 32,
        trust_pickle: bool = False,
        autocast: bool | None = None,
    ):
        """Load the HPS model.

        ``version`` is ``"v2.1"`` or ``"v2.0"`` (default: the class's version).
        ``checkpoint`` is a local file, or a folder that contains the released file name.
        Without it the file comes from the Hugging Face cache, or is downloaded unless
        ``HF_HUB_OFFLINE`` is set. ``model_name`` is an open_clip config name.
        ``trust_pickle`` allows a checkpoint that ``torch.load(weights_only=True)``
        rejects to be fully unpickled. ``autocast`` (default: on for CUDA only) runs
        the forward pass under fp16 autocast.

        Raises ``MissingWeightsError`` before building the model when the weights are
        not found, and ``HPSCheckpointError`` when the checkpoint keys do not match.
        """
        version = version or type(self).version
        if version not in HPS_WEIGHTS:
            raise ValueError(f"unknown HPS version {version!r}. Choose one of {', '.join(HPS_WEIGHTS)}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")

        self.version = version
        self.name = "hps" if version == "v2.1" else f"hps{version}"
        self.weights = (HPS_WEIGHTS[version],)
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = default_device(device)
        self.autocast = self.device.type == "cuda" if autocast is None else autocast
        if self.autocast and self.device.type != "cuda":
            raise ValueError(f"autocast=True needs a CUDA device, got {self.device}, because the official fp16 autocast is CUDA-only")

        self.checkpoint_path = resolve_hps_checkpoint(version, checkpoint)
        self.weight_paths = (self.checkpoint_path,)
        self.model, self.tokenizer = self._load_model(trust_pickle)
        self.image_size = _image_size(self.model)

    def _load_model(self, trust_pickle: bool) -> tuple[torch.nn.Module, Any]:
        import open_clip

        state_dict = extract_state_dict(load_torch_weights(self.checkpoint_path, trust_pickle=trust_pickle), self.checkpoint_path)
        model = open_clip.create_model(self.model_name, pretrained=None, precision="fp32", device="cpu")
        check_state_dict_keys(model, state_dict, str(self.checkpoint_path), self.model_name)
        # load_state_dict casts the fp16 tensors of the released files to the fp32 parameters.
        model.load_state_dict(state_dict, strict=True)
        model.to(self.device).eval().requires_grad_(False)
        logger.info("%s: loaded %s into %s on %s", self.name, self.checkpoint_path, self.model_name, self.device)
        return model, open_clip.get_tokenizer(self.model_name)

    def encode(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Return the cosine of each image's and its own prompt's normalised features."""
        # NOTE: only the CPU fp32 path is compared with the official scores (in the tests).
        # The CUDA fp16 autocast path has not been compared on a GPU yet.
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            image_features = self.model.encode_image(pixels.to(self.device), normalize=True)
            text_features = self.model.encode_text(tokens.to(self.device), normalize=True)
            # The diagonal of image_features @ text_features.T, one product per pair so a
            # score does not depend on the other images in the batch.
            scores = torch.bmm(image_features.unsqueeze(1), text_features.unsqueeze(2)).flatten()
        return scores.float().cpu()

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Score RGB uint8 arrays against their prompts, ``batch_size`` pairs at a time."""
        scores = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            pixels = preprocess(images[start:stop], self.image_size)
            tokens = self.tokenizer(list(prompts[start:stop]))
            scores[start:stop] = self.encode(pixels, tokens).numpy()
        return ScoreResult(scores=scores, errors=[None] * len(images))


class HPSv20Scorer(HPSScorer):
    """HPS v2.0; its scores are not comparable with those of v2.1."""

    name = "hpsv2.0"
    version = "v2.0"
    weights = (HPS_WEIGHTS["v2.0"],)


def resolve_hps_checkpoint(version: str, checkpoint: str | os.PathLike[str] | None) -> Path:
    """Return the path of the HPS checkpoint for ``version``, from ``checkpoint`` or the hub.

    Raises ``MissingWeightsError`` naming the hub file, the folder or file looked at
    and the ``checkpoint`` option.
    """
    spec = HPS_WEIGHTS[version]
    try:
        return spec.resolve(checkpoint)
    except MissingWeightsError as error:
        if checkpoint is not None:
            raise
        raise MissingWeightsError(
            f"{error} Looked in the Hugging Face cache at {hub_cache_folder(spec.repo_id)}. "
            f"In Python, pass HPSScorer(checkpoint=PATH)."
        ) from error


def default_device(device: str | torch.device | None) -> torch.device:
    """Return ``device`` as a ``torch.device``, or CUDA when available and no device is given."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", IMAGE_SIZE)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"HPS preprocessing needs a square model input, got image_size {tuple(size)}")
        size = size[0]
    return int(size)


# --------------------------------------------------------------------------- HPD v2 benchmark

HPDV2_REPO_ID = "zhwang/HPDv2"
# Commit "Release benchmark and HPSv2 test data" of the zhwang/HPDv2 dataset, which added
# benchmark/{anime,concept-art,paintings,photo}.json; later commits did not change them.
HPDV2_REVISION = "260dbde75ab1c68e86d32a8e7739f1b49b100578"
HPDV2_STYLES: tuple[str, ...] = ("anime", "concept-art", "paintings", "photo")
HPDV2_PROMPTS_PER_STYLE = 800
HPDV2_CHUNK_SIZE = 80
# NOTE: the SHA-256 of the four prompt files is not known yet (they are small git files,
# so the hub shows no LFS hash). Fill these in from a verified download; until then the
# files are checked only for being JSON lists of 800 strings.
HPDV2_PROMPT_SHA256: dict[str, str | None] = {style: None for style in HPDV2_STYLES}


class MissingPromptsError(FileNotFoundError):
    """Benchmark prompt files that are neither in the local cache nor in the given folder."""


def load_hpdv2_prompts(
    styles: Iterable[str] = HPDV2_STYLES,
    *,
    local_dir: str | os.PathLike[str] | None = None,
    revision: str = HPDV2_REVISION,
) -> dict[str, list[str]]:
    """Load the HPD v2 benchmark prompts, 800 per style, keyed by style in the given order.

    Each style is ``benchmark/<style>.json`` of the hub dataset ``zhwang/HPDv2``, a JSON
    list of strings. The image for prompt ``i`` of a style is ``<style>/{i:05d}.jpg`` in
    the official layout. ``local_dir`` is a folder with ``<style>.json`` files, or with
    a ``benchmark`` folder that has them. Without it the files come from the Hugging
    Face cache or are downloaded, unless ``HF_HUB_OFFLINE`` is set.

    Raises ``MissingPromptsError`` for a file that cannot be found, and ``ValueError``
    for an unknown style, a file that is not a list of 800 strings, or a SHA-256 mismatch.
    """
    styles = list(styles)
    unknown = [style for style in styles if style not in HPDV2_STYLES]
    if unknown or not styles:
        raise ValueError(f"unknown HPD v2 styles {unknown or styles}. Choose from {', '.join(HPDV2_STYLES)}.")

    prompts: dict[str, list[str]] = {}
    for style in styles:
        path = _resolve_prompt_file(style, local_dir, revision)
        data = path.read_bytes()
        expected_sha256 = HPDV2_PROMPT_SHA256[style] if revision == HPDV2_REVISION else None
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                raise ValueError(f"{path}: SHA-256 {actual} does not match the expected {expected_sha256}")
        prompts[style] = _parse_prompt_list(data, path)
    return prompts


def hpdv2_prompt_file(
    style: str, local_dir: str | os.PathLike[str] | None = None, revision: str = HPDV2_REVISION
) -> Path:
    """Return the local path of ``benchmark/<style>.json``, found as ``load_hpdv2_prompts`` finds it."""
    if style not in HPDV2_STYLES:
        raise ValueError(f"unknown HPD v2 style {style!r}. Choose from {', '.join(HPDV2_STYLES)}.")
    return _resolve_prompt_file(style, local_dir, revision)


def _resolve_prompt_file(style: str, local_dir: str | os.PathLike[str] | None, revision: str) -> Path:
    filename = f"benchmark/{style}.json"
    if local_dir is not None:
        folder = Path(local_dir)
        candidates = [folder / f"{style}.json", folder / filename]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise MissingPromptsError(
            f"HPD v2 prompt file for style {style!r} not found; looked at {' and '.join(map(str, candidates))}. "
            f"Copy {filename} from hub dataset {HPDV2_REPO_ID} (revision {revision}) there."
        )

    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(HPDV2_REPO_ID, filename, revision=revision, repo_type="dataset")
    if isinstance(cached, str):
        return Path(cached)
    if _hub_offline():
        raise MissingPromptsError(
            f"{filename} from hub dataset {HPDV2_REPO_ID} (revision {revision}) is not in the Hugging Face cache "
            f"at {hub_cache_folder(HPDV2_REPO_ID, 'dataset')} and HF_HUB_OFFLINE is set. Download it with "
            f"'hf download --repo-type dataset {HPDV2_REPO_ID} {filename} --revision {revision}' "
            "or pass a folder with the four <style>.json files: --prompts FOLDER on `cogrpo eval --bench hps`, local_dir= in Python."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HPDV2_REPO_ID, filename, revision=revision, repo_type="dataset"))
    except Exception as error:  # the hub client raises many transport error types
        raise MissingPromptsError(
            f"could not download {filename} from hub dataset {HPDV2_REPO_ID} (revision {revision}): {error}. "
            "Pass a folder with the four <style>.json files: --prompts FOLDER on `cogrpo eval --bench hps`, local_dir= in Python."
        ) from error


def _parse_prompt_list(data: bytes, path: Path) -> list[str]:
    try:
        prompts = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(prompts, list) or not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError(f"{path}: expected a JSON list of prompt strings")
    if len(prompts) != HPDV2_PROMPTS_PER_STYLE:
        raise ValueError(f"{path}: expected {HPDV2_PROMPTS_PER_STYLE} prompts, found {len(prompts)}")
    return prompts


@dataclass(frozen=True)
class StyleSummary:
    """HPD v2 result of one style, x100: mean of the chunk means and their std."""

    mean: float
    std: float
    count: int
    chunk_means: tuple[float, ...]


@dataclass(frozen=True)
class HPDv2Summary:
    """HPD v2 results per style and the ``Average`` over all scored images, x100."""

    styles: dict[str, StyleSummary]
    average: float
    count: int

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-ready values."""
        return {
            "styles": {
                style: {"mean": s.mean, "std": s.std, "count": s.count, "chunk_means": list(s.chunk_means)}
                for style, s in self.styles.items()
            },
            "average": self.average,
            "count": self.count,
        }


def summarize_hpdv2(scores_by_style: Mapping[str, Sequence[float]], chunk_size: int = HPDV2_CHUNK_SIZE) -> HPDv2Summary:
    """Aggregate raw HPS scores (cosines, in prompt order) as the official benchmark does.

    Scores are multiplied by 100. Per style, the scores are cut into chunks of
    ``chunk_size`` (80, so ten chunks for 800 prompts). The style result is the mean
    of the chunk means, with the population std of the chunk means. ``average`` is the
    mean over all images of all styles, not the mean of the style results.

    NaN scores (images that are missing or failed) are dropped first, as the official
    evaluation skips missing files, so later images move into earlier chunks.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if not scores_by_style:
        raise ValueError("no styles to summarize")

    styles: dict[str, StyleSummary] = {}
    all_scores: list[np.ndarray] = []
    for style, raw in scores_by_style.items():
        values = np.asarray(raw, dtype=np.float64) * 100.0
        values = values[~np.isnan(values)]
        if values.size == 0:
            raise ValueError(f"style {style!r} has no scored images")
        chunk_means = [float(values[start : start + chunk_size].mean()) for start in range(0, values.size, chunk_size)]
        styles[style] = StyleSummary(
            mean=float(np.mean(chunk_means)),
            std=float(np.std(chunk_means)),
            count=int(values.size),
            chunk_means=tuple(chunk_means),
        )
        all_scores.append(values)

    every_score = np.concatenate(all_scores)
    return HPDv2Summary(styles=styles, average=float(every_score.mean()), count=int(every_score.size))

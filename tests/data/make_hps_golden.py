"""Make ``hps_golden.json``: HPS scores from the official hpsv2x code on a tiny random model.

The module has two parts:

* deterministic fixtures (a tiny config with the structure of open_clip's ViT-H-14,
  a seeded random state dict, seeded synthetic images and prompts) that need only
  numpy and torch, so ``tests/test_hps.py`` imports them to rebuild the same inputs;
* ``main()``, which runs only in a scratch environment that has ``hpsv2x==1.2.0``
  installed. It builds the model with hpsv2's vendored open_clip and its own eval
  transform, then scores each image with ``hpsv2.img_score.score``.

Run it with the scratch environment's Python from the repository root::

    python3 -m venv /tmp/hpsref
    /tmp/hpsref/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/hpsref/bin/pip install --no-deps hpsv2x==1.2.0
    /tmp/hpsref/bin/pip install clint einops ftfy regex timm huggingface_hub requests
    HF_HUB_OFFLINE=1 HPS_ROOT=/tmp/hpsroot /tmp/hpsref/bin/python tests/data/make_hps_golden.py

hpsv2's ``initialize_model`` hard-codes ViT-H-14 with the LAION weights, so ``main()``
puts the tiny model into ``hpsv2.img_score.model_dict`` first and passes the checkpoint
path as ``cp``. Nothing is downloaded. ``score()`` creates its cache folder
(``$HPS_ROOT``, else ``~/.cache/hpsv2``), which is why the command sets ``HPS_ROOT``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN_PATH = Path(__file__).with_name("hps_golden.json")

TINY_MODEL_NAME = "hps-tiny-vit-h"

# The keys of open_clip's ViT-H-14 config with small widths and depths: the same
# parameter names as the real model, at 224 px with patch 14 and the 49,408-token
# vocabulary of the bundled BPE tokenizer.
TINY_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

STATE_DICT_SEED = 20240521
IMAGE_SEED = 7

# (height, width): square at the model size (no resize), landscape, portrait,
# a small odd-sized image that is upscaled, and a single pixel.
IMAGE_SHAPES: tuple[tuple[int, int], ...] = ((224, 224), (200, 320), (480, 270), (37, 53), (1, 1))

PROMPTS: tuple[str, ...] = (
    "a photo of a red fox in the snow",
    "An   Oil Painting of a lighthouse at DUSK, dramatic clouds",
    "anime girl with blue hair, cherry blossoms",
    "concept art of a ruined city; it's raining",
    # More than 77 BPE tokens, so the tokenizer truncates it and forces the end token.
    " ".join(f"word{index}" for index in range(60)),
)


def write_tiny_config(folder: Path) -> Path:
    """Write ``TINY_CONFIG`` as ``<folder>/hps-tiny-vit-h.json`` for ``add_model_config``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TINY_MODEL_NAME}.json"
    path.write_text(json.dumps(TINY_CONFIG, indent=2))
    return path


def _parameter_std(name: str, shape: tuple[int, ...]) -> float:
    """Return the standard deviation used for one random parameter."""
    if len(shape) < 2:
        return 0.02
    if name.endswith("proj") or name.endswith("text_projection"):
        # Applied as ``x @ W``, so the input dimension is the first one.
        return shape[0] ** -0.5
    return math.prod(shape[1:]) ** -0.5


def make_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Build seeded random fp16 tensors for the given parameter names and shapes.

    Each tensor depends only on its name, its shape and ``STATE_DICT_SEED``, so the
    same dict comes out whatever order the names are given in. LayerNorm weights are
    near 1 and everything else is scaled by its fan-in so the features stay finite.
    The tensors are fp16, as in the released ``HPS_v2*_compressed.pt`` files.
    """
    state_dict: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = tuple(int(size) for size in shapes[name])
        rng = np.random.default_rng([STATE_DICT_SEED, zlib.crc32(name.encode())])
        noise = rng.standard_normal(shape)
        if name == "logit_scale":
            values = np.full(shape, math.log(1 / 0.07))
        elif (".ln_" in name or name.startswith("ln_")) and name.endswith(".weight"):
            values = 1.0 + 0.1 * noise
        else:
            values = noise * _parameter_std(name, shape)
        state_dict[name] = torch.from_numpy(values.astype(np.float16))
    return state_dict


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Return a SHA-256 over the sorted names, shapes, dtypes and raw bytes of the tensors."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def make_images() -> list[np.ndarray]:
    """Return the seeded uint8 RGB test images, one per entry of ``IMAGE_SHAPES``."""
    rng = np.random.default_rng(IMAGE_SEED)
    images = []
    for height, width in IMAGE_SHAPES:
        # Smooth colour ramps plus noise, so resizing changes the pixels in a way that
        # a wrong interpolation or padding would show in the scores.
        ramp_y = np.linspace(0.0, 1.0, height)[:, None, None]
        ramp_x = np.linspace(0.0, 1.0, width)[None, :, None]
        colours = rng.uniform(0.0, 1.0, size=(2, 1, 1, 3))
        base = 255.0 * (colours[0] * ramp_y + colours[1] * ramp_x) / 2.0
        noise = rng.normal(0.0, 40.0, size=(height, width, 3))
        images.append(np.clip(base + noise, 0, 255).round().astype(np.uint8))
    return images


def images_sha256(images: list[np.ndarray]) -> str:
    """Return a SHA-256 over the shapes and bytes of the images, in order."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.shape}|{image.dtype}\n".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def main() -> None:
    """Score the fixtures with hpsv2x's own model, transform and score function."""
    import importlib.metadata
    import tempfile

    import torchvision
    from PIL import Image

    import hpsv2.img_score as img_score
    from hpsv2.src import open_clip as vendored_open_clip

    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        vendored_open_clip.add_model_config(write_tiny_config(scratch_dir))
        # The arguments hpsv2.img_score.initialize_model passes, except the model name
        # and pretrained=None (no LAION download), as hpsv2.evaluation does.
        model, _, preprocess_val = vendored_open_clip.create_model_and_transforms(
            TINY_MODEL_NAME,
            None,
            precision="amp",
            device=img_score.device,
            jit=False,
            force_quick_gelu=False,
            force_custom_text=False,
            force_patch_dropout=False,
            force_image_size=None,
            pretrained_image=False,
            image_mean=None,
            image_std=None,
            light_augmentation=True,
            aug_cfg={},
            output_dict=True,
            with_score_predictor=False,
            with_region_predictor=False,
        )
        img_score.model_dict["model"] = model
        img_score.model_dict["preprocess_val"] = preprocess_val

        shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        state_dict = make_state_dict(shapes)
        checkpoint_path = scratch_dir / "tiny_hps.pt"
        torch.save({"state_dict": state_dict}, checkpoint_path)

        # scores[i][j] is image i with prompt j. hpsv2's score() takes one prompt for a
        # list of images and reloads the checkpoint on every call.
        images = make_images()
        pil_images = [Image.fromarray(image) for image in images]
        columns = [img_score.score(pil_images, prompt, cp=str(checkpoint_path), hps_version="v2.1") for prompt in PROMPTS]
        scores = [[float(column[row]) for column in columns] for row in range(len(images))]

    golden = {
        "description": (
            "HPS v2 scores (raw cosine) of hpsv2x 1.2.0's img_score.score on a tiny random "
            "ViT-H-14-shaped model, fp32 on the CPU (its CUDA autocast is off without a GPU)."
        ),
        "model_name": TINY_MODEL_NAME,
        "config": TINY_CONFIG,
        "state_dict_seed": STATE_DICT_SEED,
        "state_dict_sha256": state_dict_sha256(state_dict),
        "image_seed": IMAGE_SEED,
        "image_shapes": [list(shape) for shape in IMAGE_SHAPES],
        "images_sha256": images_sha256(images),
        "prompts": list(PROMPTS),
        "scores_layout": "scores[i][j] is image i (image_shapes[i]) with prompts[j]",
        "scores": scores,
        "versions": {
            "python": sys.version.split()[0],
            "hpsv2x": importlib.metadata.version("hpsv2x"),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "device": str(img_score.device),
        },
        "how": Path(__file__).read_text(),
    }
    GOLDEN_PATH.write_text(json.dumps(golden, indent=2) + "\n")
    print(f"wrote {GOLDEN_PATH}")
    for shape, row in zip(IMAGE_SHAPES, scores):
        print(shape, " ".join(f"{score:+.6f}" for score in row))


if __name__ == "__main__":
    main()

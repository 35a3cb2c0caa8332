"""Benchmark the batched HPS and ImageReward adapters against the official way of calling them.

The official code scores one image per call: ImageReward's ``score(prompt, image)``
runs one image through the model, and hpsv2's ``score`` also reloads the
checkpoint (``torch.load`` and ``load_state_dict``) on every call. Variants,
timed side by side in one process on the same images and prompts:

* ``hps/batched``: ``HPSScorer.score`` on all images at once;
* ``hps/one_per_call``: ``HPSScorer.score`` once per image, model loaded once;
* ``hps/one_per_call_with_reload``: the same, with the checkpoint reloaded
  into the model before each call, as hpsv2's ``score`` does;
* ``imagereward/batched`` and ``imagereward/one_per_call``: the same for
  ``ImageRewardScorer``.

The models have the real architectures (open_clip ViT-H-14 for HPS, BLIP ViT-L
with the BERT-base cross-attention encoder for ImageReward) with random weights,
saved in the official checkpoint layouts and loaded by local path. Sizes: ``full``
(the released configurations, default on CUDA), ``reduced`` (the same
architectures with fewer and narrower layers, default on the CPU, where one
full-size image takes seconds) or ``tiny`` (the test configurations, default
with --small). ImageReward's tokenizer is a small WordPiece vocabulary written
here, because bert-base-uncased's ``vocab.txt`` is not downloaded. It only
changes which ids the prompts get, not the amount of work, since every prompt
is padded to 35 tokens.

    python benchmarks/scorers.py [--small] [--device cpu|cuda] [--scorer-size full|reduced|tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import (  # noqa: E402
    Goal,
    add_common_arguments,
    build_result,
    emit_result,
    finish_arguments,
    log,
    medians,
    quiet_stdout,
    run_alternating,
)

PROMPTS = (
    "a photo of a red fox in the snow",
    "an oil painting of a lighthouse at dusk with dramatic clouds",
    "anime girl with blue hair under cherry blossoms",
    "concept art of a ruined city in the rain",
    "a bowl of fruit on a wooden table",
    "a watercolor of a sailing boat",
)
GOALS = {
    "hps/batched_over_one_per_call": Goal(">=", 5.0),
    "hps/batched_over_one_per_call_with_reload": Goal(">=", 5.0),
    "imagereward/batched_over_one_per_call": Goal(">=", 5.0),
}

# open_clip model configurations. ``full`` is open_clip's own ViT-H-14 (the model of HPS v2).
HPS_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "reduced": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 224, "layers": 6, "width": 384, "head_width": 64, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 6},
    },
    "tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}
# ImageRewardConfig arguments. ``full`` is ImageRewardConfig() (ViT-L/16 and BERT-base).
IMAGEREWARD_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},
    "reduced": dict(
        vision_width=384, vision_layers=6, vision_heads=6,
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
    ),
    "tiny": dict(
        vision_width=32, vision_layers=2, vision_heads=4,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=123, max_position_embeddings=40,
    ),
}
WORDPIECE_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--images", type=int, default=None, help="images scored per run (default 16, 2 with --small)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square test images in pixels (default 256)")
    parser.add_argument(
        "--scorer-size",
        choices=("full", "reduced", "tiny"),
        default=None,
        help="model configuration (default: full on CUDA, reduced on the CPU, tiny with --small)",
    )
    args = finish_arguments(parser.parse_args(argv))
    args.images = args.images or (2 if args.small else 16)
    if args.scorer_size is None and args.small:
        args.scorer_size = "tiny"
    elif args.scorer_size is None:
        args.scorer_size = "full" if args.device.type == "cuda" else "reduced"
    return args


def make_images(count: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(count)]


# --------------------------------------------------------------------------- HPS


def build_hps(size: str, folder: Path, device: torch.device, seed: int):
    """Save a random HPS checkpoint of ``size`` in the official layout and load it with ``HPSScorer``."""
    import open_clip

    from cogrpo.rewards.hps import HPSScorer

    model_name = "ViT-H-14"
    if size != "full":
        model_name = f"hps-benchmark-{size}"
        config_path = folder / f"{model_name}.json"
        config_path.write_text(json.dumps(HPS_MODEL_CONFIGS[size]))
        open_clip.add_model_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu")
    # The released HPS_v2*_compressed.pt files hold {"state_dict": ...} with fp16 tensors.
    checkpoint = folder / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {key: value.half() for key, value in model.state_dict().items()}}, checkpoint)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    scorer = HPSScorer(checkpoint=checkpoint, model_name=model_name, device=device, batch_size=1024)
    return scorer, checkpoint, {"model_name": model_name, "parameters": parameters, "checkpoint_bytes": checkpoint.stat().st_size}


def hps_variants(scorer, checkpoint: Path, images: list[np.ndarray], prompts: list[str]) -> dict[str, Any]:
    def batched():
        return scorer.score(images, prompts)

    def one_per_call():
        return np.array([scorer.score([image], [prompt])[0] for image, prompt in zip(images, prompts)])

    def one_per_call_with_reload():
        scores = []
        for image, prompt in zip(images, prompts):
            state = torch.load(checkpoint, map_location=scorer.device, weights_only=True)
            scorer.model.load_state_dict(state["state_dict"])
            scores.append(scorer.score([image], [prompt])[0])
        return np.array(scores)

    return {"hps/batched": batched, "hps/one_per_call": one_per_call, "hps/one_per_call_with_reload": one_per_call_with_reload}


# --------------------------------------------------------------------------- ImageReward


def write_wordpiece_vocab(folder: Path, max_tokens: int) -> Path:
    """Write a vocab.txt with BERT's special tokens and the words of ``PROMPTS``, at most ``max_tokens`` lines."""
    words = sorted({word for prompt in PROMPTS for word in prompt.lower().split()})
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    tokens = WORDPIECE_SPECIAL_TOKENS + letters + [word for word in words if word not in letters]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(tokens[:max_tokens]) + "\n", encoding="utf-8")
    return vocab


def build_imagereward(size: str, folder: Path, device: torch.device, seed: int):
    """Save a random ImageReward.pt of ``size`` in the official flat layout and load it with ``ImageRewardScorer``."""
    from cogrpo.rewards.imagereward import ImageRewardConfig, ImageRewardModel, ImageRewardScorer

    config = ImageRewardConfig(**IMAGEREWARD_CONFIGS[size])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageRewardModel(config)
        state = dict(model.state_dict())
        # BLIP's contrastive projections are in the official file but unused by the reward.
        state["blip.vision_proj.weight"] = 0.02 * torch.randn(config.projection_dim, config.vision_width)
        state["blip.vision_proj.bias"] = torch.zeros(config.projection_dim)
        state["blip.text_proj.weight"] = 0.02 * torch.randn(config.projection_dim, config.hidden_size)
        state["blip.text_proj.bias"] = torch.zeros(config.projection_dim)
    checkpoint = folder / "ImageReward.pt"
    torch.save(state, checkpoint)
    parameters = sum(p.numel() for p in model.parameters())
    del model, state
    # The tokenizer adds [DEC] and [ENC], which must fit in the text encoder's vocabulary.
    vocab = write_wordpiece_vocab(folder, config.vocab_size - 2)
    scorer = ImageRewardScorer(checkpoint, vocab, config=config, device=device, batch_size=1024)
    return scorer, {"config": IMAGEREWARD_CONFIGS[size] or "ImageRewardConfig() defaults", "parameters": parameters}


def imagereward_variants(scorer, images: list[np.ndarray], prompts: list[str]) -> dict[str, Any]:
    def batched():
        return scorer.score(images, prompts)

    def one_per_call():
        return np.array([scorer.score([image], [prompt])[0] for image, prompt in zip(images, prompts)])

    return {"imagereward/batched": batched, "imagereward/one_per_call": one_per_call}


def max_difference(variants: dict[str, Any], reference: str) -> float:
    """Return the largest absolute score difference between ``reference`` and the other variants."""
    expected = variants[reference]()
    return max(float(np.max(np.abs(function() - expected))) for name, function in variants.items() if name != reference)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    images = make_images(args.images, args.image_size, args.seed)
    prompts = [PROMPTS[index % len(PROMPTS)] for index in range(args.images)]
    with quiet_stdout(), tempfile.TemporaryDirectory(prefix="cogrpo-scorer-bench-") as scratch:
        folder = Path(scratch)
        log(f"building HPS ({args.scorer_size}, random weights)")
        hps_scorer, hps_checkpoint, hps_info = build_hps(args.scorer_size, folder, args.device, args.seed)
        log(f"building ImageReward ({args.scorer_size}, random weights)")
        imagereward_scorer, imagereward_info = build_imagereward(args.scorer_size, folder, args.device, args.seed)
        hps = hps_variants(hps_scorer, hps_checkpoint, images, prompts)
        imagereward = imagereward_variants(imagereward_scorer, images, prompts)
        differences = {"hps": max_difference(hps, "hps/batched"), "imagereward": max_difference(imagereward, "imagereward/batched")}
        seconds = run_alternating({**hps, **imagereward}, args.device, args.repeats, args.warmup, label="scorers")
    median = medians(seconds)
    ratios = {
        "hps/batched_over_one_per_call": median["hps/one_per_call"] / median["hps/batched"],
        "hps/batched_over_one_per_call_with_reload": median["hps/one_per_call_with_reload"] / median["hps/batched"],
        "imagereward/batched_over_one_per_call": median["imagereward/one_per_call"] / median["imagereward/batched"],
    }
    note = None
    if args.scorer_size != "full":
        note = (
            f"both scorers ran at the {args.scorer_size} configuration, not the released size; "
            "pass --scorer-size full (default on CUDA) for ViT-H-14 and BLIP ViT-L"
        )
    emit_result(
        build_result(
            "scorers",
            args.device,
            ratios,
            GOALS,
            seconds,
            images_per_s={name: args.images / value for name, value in median.items()},
            max_abs_score_difference_to_batched=differences,
            images=args.images,
            image_size=args.image_size,
            scorer_size=args.scorer_size,
            hps=hps_info,
            imagereward=imagereward_info,
            hps_autocast=hps_scorer.autocast,
            repeats=args.repeats,
            warmup=args.warmup,
            small=args.small,
            note=note,
        )
    )


if __name__ == "__main__":
    main()

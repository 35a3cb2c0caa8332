"""Shared fixtures: offline settings and small random shapes models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


def build_random_shapes_model(folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised embedded model (real configuration) to ``folder``."""
    import torch

    from cogrpo.models import shapes_components as comp

    torch.manual_seed(seed)
    comp.build_vq().save_pretrained(folder / "vqvae")
    comp.build_transformer().save_pretrained(folder / "transformer")
    comp.build_text_encoder().save_pretrained(folder / "text_encoder")
    comp.build_tokenizer().save_pretrained(folder / "tokenizer")
    return folder


@pytest.fixture(scope="session")
def random_shapes_dir(tmp_path_factory) -> Path:
    """A randomly initialised embedded model on disk, shared by the session."""
    return build_random_shapes_model(tmp_path_factory.mktemp("random_shapes"))


def build_tiny_mask2former(folder: Path) -> Path:
    """Save a tiny random transformers Mask2Former with COCO's labels and its image processor to ``folder``."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    from cogrpo.benchmarks.geneval_detectors import COCO_ID2LABEL

    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    # GroupNorm in the pixel decoder needs feature sizes divisible by 32.
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=8,
        num_labels=len(COCO_ID2LABEL), id2label=dict(COCO_ID2LABEL), label2id={v: k for k, v in COCO_ID2LABEL.items()},
    )
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_mask2former(tmp_path_factory) -> Path:
    """A tiny random Mask2Former folder shared by the session; copy it before changing it."""
    return build_tiny_mask2former(tmp_path_factory.mktemp("mask2former"))

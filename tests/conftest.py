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

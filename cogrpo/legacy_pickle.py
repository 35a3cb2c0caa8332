"""Loading of model weight files, including legacy pickle-based ``torch.save`` files.

This is the only module in cogrpo that may unpickle with ``weights_only=False``, and it
does so only when the caller passes ``trust_pickle=True`` (the ``--trust-pickle`` option).
Unpickling a file can run arbitrary code, so a file from an unknown source must be
converted to safetensors instead. ``tests/test_safe_loading.py`` scans the source tree
and fails on any other unsafe load.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin"})

# torch.load(weights_only=True) could still run code in torch <= 2.5.1 (CVE-2025-32434,
# fixed in torch 2.6.0), so older versions must not load pickle files at all.
MIN_TORCH_FOR_PICKLE_FILES = "2.6.0"


class UnsafeCheckpointError(RuntimeError):
    """A weight file that cannot be loaded without unpickling arbitrary Python objects."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(
            f"cannot load {path} safely: torch.load(weights_only=True) failed ({detail}). "
            "weights_only=True accepts only tensors and plain containers, and loading anything "
            "else needs full unpickling, which can run arbitrary code. Convert the file to "
            ".safetensors, or pass --trust-pickle if the file comes from a known source."
        )
        self.path = path
        self.detail = detail


def _weights_only_detail(error: Exception) -> str:
    """Return the short reason from torch's weights_only error message.

    torch 2.14.1 puts the reason after "WeightsUnpickler error:", e.g. "Unsupported
    global: GLOBAL exec was not an allowed global by default". Without that marker the
    first line of the message is used. The rest of torch's message suggests
    weights_only=False, which this module's error replaces with the safe options.
    """
    message = str(error)
    marker = "WeightsUnpickler error:"
    if marker in message:
        reason = message.split(marker, 1)[1].strip()
        reason = reason.split("\n\n", 1)[0].strip()
        reason = reason.split(". ", 1)[0].strip()
    else:
        reason = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return " ".join(reason.split())[:300]


def load_torch_weights(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Any:
    """Load a weight file onto the CPU and return its contents.

    ``.safetensors`` files are read with safetensors and give a dict of tensors.
    ``.pt``, ``.pth`` and ``.bin`` files are read with ``torch.load(weights_only=True)``,
    which accepts only tensors and plain containers. If that fails with an
    ``UnpicklingError`` (the file needs other Python objects, or is not a valid pickle),
    ``UnsafeCheckpointError`` is raised unless ``trust_pickle`` is True. In that case
    the file is loaded again with ``weights_only=False`` and a warning is logged.

    Raises ``ValueError`` for other suffixes, and ``RuntimeError`` for pickle files when
    torch is older than 2.6.0.
    """
    path = Path(path)
    suffix = path.suffix.lower()

    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return load_file(path, device="cpu")

    if suffix not in PICKLE_SUFFIXES:
        supported = ", ".join(sorted(SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES))
        raise ValueError(f"unsupported weight file suffix {suffix!r} for {path}. Expected one of {supported}.")

    if torch.__version__ < MIN_TORCH_FOR_PICKLE_FILES:
        raise RuntimeError(
            f"cannot load {path} safely with torch {torch.__version__}: torch.load(weights_only=True) "
            f"can run code before torch {MIN_TORCH_FOR_PICKLE_FILES} (CVE-2025-32434). "
            "Upgrade torch or convert the file to .safetensors."
        )

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if trust_pickle:
            logger.warning(
                "loading %s with full unpickling because --trust-pickle was passed. This runs any "
                "code the file contains (weights_only=True failed: %s)",
                path,
                _weights_only_detail(error),
            )
            return torch.load(path, map_location="cpu", weights_only=False)
        raise UnsafeCheckpointError(path, _weights_only_detail(error)) from error

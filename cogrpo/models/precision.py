"""Compute precision of transformer forward passes: the ``--dtype`` names and the autocast context.

Weights stay in the dtype they were loaded in (float32 by default), so LoRA and
full fine-tuning keep float32 master weights. Under ``bf16`` only the
transformer's forward passes run in ``torch.autocast``, and backends return
float32 logits, so the sampler's softmax, log-softmax and Gumbel steps run in
float32.
"""

from __future__ import annotations

import contextlib

import torch

DTYPE_CHOICES = ("auto", "bf16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """Return the compute dtype for a ``--dtype`` name: ``auto`` is bfloat16 on CUDA and float32 elsewhere.

    Autocast on a CPU stays off unless ``bf16`` is requested explicitly.
    """
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"invalid dtype {name!r}; allowed: {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """Return the name recorded in result files, e.g. ``"bfloat16"`` for ``torch.bfloat16``."""
    return str(dtype).removeprefix("torch.")


def autocast(device: str | torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Return ``torch.autocast`` on the device's type for a reduced ``dtype``, or a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)

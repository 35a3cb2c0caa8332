"""Deterministic mode for ``cogrpo train --deterministic`` and ``cogrpo eval --deterministic``.

``enable_deterministic`` sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS
needs for reproducible matrix products on CUDA 10.2 and later. It also calls
``torch.use_deterministic_algorithms(True)`` and sets
``torch.backends.cudnn.benchmark = False``, so the cuDNN autotuner cannot pick
different kernels in different runs. cuBLAS reads the variable when CUDA creates
its handles, so the call raises once CUDA is initialised in the process. With
deterministic algorithms on, an operation that has no deterministic
implementation raises ``RuntimeError`` naming the operation.

What matches: two runs with the same code, configuration, seed, library versions,
hardware and number of processes. On CPU they are bit-identical
(``tests/test_deterministic.py``). Runs that differ in torch, CUDA or cuDNN
version, in CPU or GPU model, or in the number of processes are not expected to
match, because kernels, reduction orders and the split of prompts across
processes change the float rounding.

Every image and prompt draw already has its own seed, derived from the run seed
and the iteration or prompt and image index, never from the rank, so the seeds
do not depend on the number of processes.
"""

from __future__ import annotations

import os
from typing import Any

CUBLAS_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_VALUE = ":4096:8"
# The two settings that the cuBLAS documentation lists for reproducible results.
_CUBLAS_DETERMINISTIC_VALUES = (":4096:8", ":16:8")


class DeterminismError(RuntimeError):
    """Deterministic mode was requested after CUDA had been initialised."""


def enable_deterministic() -> dict[str, Any]:
    """Turn on deterministic algorithms before CUDA starts; return the settings as ``determinism_record`` does.

    A ``CUBLAS_WORKSPACE_CONFIG`` already set to ``:16:8`` (also deterministic, with a smaller workspace) is kept.
    Raises ``DeterminismError`` when CUDA is already initialised.
    """
    import torch

    if torch.cuda.is_initialized():
        raise DeterminismError(
            "deterministic mode must be enabled before CUDA is initialised, but CUDA is already initialised in this "
            f"process. Enable it first thing (cogrpo train and eval do when given --deterministic), or start the "
            f"process with {CUBLAS_VARIABLE}={CUBLAS_VALUE} set."
        )
    if os.environ.get(CUBLAS_VARIABLE) not in _CUBLAS_DETERMINISTIC_VALUES:
        os.environ[CUBLAS_VARIABLE] = CUBLAS_VALUE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    return determinism_record()


def determinism_record() -> dict[str, Any]:
    """Return the determinism settings in force, for result and summary files."""
    import torch

    enabled = torch.are_deterministic_algorithms_enabled()
    return {
        "deterministic": enabled,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        CUBLAS_VARIABLE: os.environ.get(CUBLAS_VARIABLE),
    }

"""The minimum torch version, checked when the ``cogrpo`` command starts.

``torch.load(weights_only=True)`` in torch before 2.6.0 can still run code from a
crafted file (CVE-2025-32434, fixed in 2.6.0), so cogrpo needs torch 2.6 or newer,
the same floor as ``pyproject.toml``.
"""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

TORCH_FLOOR = "2.6"


class UnsupportedTorchError(RuntimeError):
    """The installed torch is older than ``TORCH_FLOOR``."""


def torch_version_supported(version: str, floor: str = TORCH_FLOOR) -> bool:
    """Return True when the torch version string ``version`` is ``floor`` or newer, compared as PEP 440 versions.

    A local tag such as ``+cpu`` or ``+cu130`` is ignored. A pre-release or
    development build of the floor (``2.6.0a0``, ``2.6.0.dev20241112``) is older
    than the floor, as pip's ``torch>=2.6`` treats it. Raises ``ValueError`` for a
    string that is not a PEP 440 version.
    """
    try:
        return Version(version) >= Version(floor)
    except InvalidVersion as error:
        raise ValueError(f"invalid torch version {version!r}; expected a PEP 440 version such as 2.6.0+cpu") from error


def check_torch_version(version: str | None = None) -> None:
    """Raise ``UnsupportedTorchError`` when ``version`` (default: the installed ``torch.__version__``) is too old."""
    if version is None:
        import torch

        version = str(torch.__version__)
    if not torch_version_supported(version):
        raise UnsupportedTorchError(
            f"torch {version} is installed, but cogrpo requires torch {TORCH_FLOOR} or newer, because "
            f"torch.load(weights_only=True) in older versions can run code from a crafted file. "
            f"Upgrade torch: pip install --upgrade 'torch>={TORCH_FLOOR}'"
        )

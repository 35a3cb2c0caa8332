"""The torch version floor that the ``cogrpo`` command checks at startup."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from cogrpo.cli import app
from cogrpo.torch_version import TORCH_FLOOR, UnsupportedTorchError, check_torch_version, torch_version_supported


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("2.6", True),
        ("2.6.0", True),
        ("2.6.0+cpu", True),
        ("2.6.1+cu124", True),
        ("2.14.1+cpu", True),
        ("2.14.1+cu130", True),
        ("3.0.0", True),
        ("2.7.0a0+git1234abc", True),
        ("2.5.1", False),
        ("2.5.1+cu121", False),
        ("2.6.0a0", False),
        ("2.6.0a0+gitabcdef", False),
        ("2.6.0rc1", False),
        ("2.6.0.dev20241112", False),
        ("1.13.1", False),
    ],
)
def test_torch_version_floor(version, supported):
    assert torch_version_supported(version) is supported


def test_invalid_torch_version_rejected():
    with pytest.raises(ValueError, match="invalid torch version 'not-a-version'"):
        torch_version_supported("not-a-version")


def test_old_torch_error_names_fix():
    with pytest.raises(UnsupportedTorchError) as raised:
        check_torch_version("2.5.1+cpu")
    message = str(raised.value)
    assert "torch 2.5.1+cpu is installed" in message
    assert f"requires torch {TORCH_FLOOR} or newer" in message
    assert "pip install --upgrade 'torch>=2.6'" in message


def test_floor_matches_pyproject():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    torch_requirements = [r for r in project["dependencies"] if r.startswith("torch>") or r.startswith("torch=")]
    assert len(torch_requirements) == 1
    assert f">={TORCH_FLOOR}" in torch_requirements[0]


def test_cli_rejects_old_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")

    result = CliRunner().invoke(app, ["list"])

    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "torch 2.5.1+cpu is installed" in text
    assert "requires torch 2.6 or newer" in text
    assert "pip install --upgrade 'torch>=2.6'" in text


def test_cli_accepts_current_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.6.0+cpu")

    # The check runs before a command's own --help, so this passes through it.
    result = CliRunner().invoke(app, ["tables", "--help"])

    assert result.exit_code == 0, result.output

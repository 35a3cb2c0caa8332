"""Saving and loading training state as safetensors plus JSON (no pickle).

An optimiser's ``state_dict`` is split into its tensors (saved with
safetensors under keys ``state.<param index>.<name>``) and everything else
(saved as JSON), so a checkpoint can be loaded without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, prefix: str) -> None:
    """Write ``<prefix>.safetensors`` and ``<prefix>.json`` holding the optimiser state."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_file(tensors, str(folder / f"{prefix}.safetensors"))
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    (folder / f"{prefix}.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, prefix: str) -> None:
    """Restore the optimiser state written by ``save_optimizer``."""
    tensors = load_file(str(folder / f"{prefix}.safetensors"))
    meta = json.loads((folder / f"{prefix}.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return the tensors of the parameters that require gradients, by name."""
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into ``module``; every trainable name must be present."""
    params = dict(module.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))

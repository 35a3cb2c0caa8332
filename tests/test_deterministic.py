"""Deterministic mode: the PyTorch settings, bit-identical CPU runs of train and eval, and the error once CUDA runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cogrpo.determinism import CUBLAS_VARIABLE, DeterminismError, determinism_record, enable_deterministic
from cogrpo.rewards.base import Scorer, ScoreResult
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.run import train


class RednessReward(Scorer):
    """Mean red channel minus the mean of green and blue, which differs between random images."""

    name = "redness"

    def score_batch(self, images, prompts, metadata):
        scores = [float((im[..., 0].astype(float) - im[..., 1:].mean(-1)).mean() / 255) for im in images]
        return ScoreResult(scores=np.asarray(scores, dtype=np.float32))


@pytest.fixture(autouse=True)
def restore_settings():
    """Undo the process-wide settings that deterministic mode changes, so later tests run as before."""
    saved_variable = os.environ.get(CUBLAS_VARIABLE)
    os.environ.pop(CUBLAS_VARIABLE, None)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark = saved[1]
    os.environ.pop(CUBLAS_VARIABLE, None)
    if saved_variable is not None:
        os.environ[CUBLAS_VARIABLE] = saved_variable


def _final_weights(run) -> dict[str, torch.Tensor]:
    newest = sorted(run.glob("checkpoint-*"))[-1]
    return {**load_file(str(newest / "model.safetensors")),
            **{f"schedule.{k}": v for k, v in load_file(str(newest / "schedule.safetensors")).items()}}


def _rewards(run) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(row["iteration"], row["rewards/redness/mean"], row["advantages/abs_max"]) for row in rows]


def test_enable_sets_torch_and_cublas():
    torch.backends.cudnn.benchmark = True

    record = enable_deterministic()

    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is False
    assert os.environ[CUBLAS_VARIABLE] == ":4096:8"
    assert record == {"deterministic": True, "cudnn_benchmark": False, CUBLAS_VARIABLE: ":4096:8"}
    assert determinism_record() == record


def test_enable_keeps_smaller_cublas_workspace():
    os.environ[CUBLAS_VARIABLE] = ":16:8"

    assert enable_deterministic()[CUBLAS_VARIABLE] == ":16:8"


def test_enable_after_cuda_init_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    with pytest.raises(DeterminismError, match="before CUDA is initialised"):
        enable_deterministic()
    assert not torch.are_deterministic_algorithms_enabled()
    assert CUBLAS_VARIABLE not in os.environ


def test_eval_cli_after_cuda_init_fails(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from cogrpo.cli import app

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    result = CliRunner().invoke(app, ["eval", "--deterministic", "--score-only", "--out", str(tmp_path)])

    assert result.exit_code == 2, result.output
    assert "before CUDA is initialised" in " ".join(result.output.split())


def test_deterministic_training_runs_are_bit_identical(tmp_path, random_shapes_dir):
    runs = [tmp_path / "first", tmp_path / "second"]
    for run in runs:
        config = TrainConfig(model_path=str(random_shapes_dir), iterations=2, prompts_per_iteration=2, group_size=4,
                             steps=3, chunk_size=8, lr_model=1e-3, device="cpu", out=str(run), seed=7,
                             checkpoint_every=0, final_eval=False, deterministic=True)
        summary = train(config, reward=RednessReward(), progress=False)
        assert summary["determinism"]["deterministic"] is True
        assert summary["determinism"][CUBLAS_VARIABLE] == ":4096:8"
        saved = json.loads((run / "summary.json").read_text())
        assert saved["determinism"] == summary["determinism"]
        assert saved["config"]["deterministic"] is True

    first, second = (_final_weights(run) for run in runs)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert _rewards(runs[0]) == _rewards(runs[1])
    assert any(advantage > 0 for _, _, advantage in _rewards(runs[0])), "zero advantages would make the updates no-ops"


def test_deterministic_eval_runs_are_bit_identical(tmp_path, random_shapes_dir):
    from typer.testing import CliRunner

    from cogrpo.cli import app

    results = []
    for name in ("first", "second"):
        out = tmp_path / name
        invoked = CliRunner().invoke(app, ["eval", "--deterministic", "--model-path", str(random_shapes_dir), "--steps", "3",
                                           "--limit", "3", "--images-per-prompt", "2", "--device", "cpu", "--out", str(out)])
        assert invoked.exit_code == 0, invoked.output
        results.append(json.loads((out / "result.json").read_text()))

    first, second = results
    assert first["determinism"]["deterministic"] is True
    assert first["samples_sha256"] == second["samples_sha256"]
    assert first["samples"] == second["samples"]
    assert first["metrics"] == second["metrics"]

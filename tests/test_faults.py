"""Injected faults: the COGRPO_FAULT parser, and NaN, out-of-memory and hung ranks in two-process training runs.

The two-process tests launch ``accelerate launch --multi_gpu --num_processes 2 ... -m cogrpo train`` on CPU
(gloo), as ``tests/test_train_runs.py::test_two_processes_match_one`` does.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cogrpo.checkpoint_io import latest_valid_checkpoint, verify_checkpoint
from cogrpo.faults import Fault, FaultPlan
from cogrpo.models.shapes import weights_available, weights_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(config: dict, out: Path, fault: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run two training processes with ``COGRPO_FAULT=fault`` and return the launcher's result and the wall time."""
    config_path = out.parent / f"{out.name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "cogrpo", "train", "--config", str(config_path),
               "--out", str(out)]
    env = {**os.environ, "COGRPO_FAULT": fault, "OMP_NUM_THREADS": "1"}
    log_path = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(process.pid)
            pytest.fail(f"the two training processes were still running after {timeout} s:\n{log_path.read_text()[-3000:]}")
    wall = time.perf_counter() - start
    return subprocess.CompletedProcess(command, process.returncode, log_path.read_text(), ""), wall


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and its workers (torchrun starts each worker in a session of its own)."""
    import psutil

    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _small_config(**overrides) -> dict:
    config = dict(iterations=4, prompts_per_iteration=2, group_size=2, steps=3, chunk_size=4, lr_model=1e-3,
                  device="cpu", seed=4, checkpoint_every=1, keep_checkpoints=5, final_eval=False)
    config.update(overrides)
    return config


def _weights(checkpoint: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / f"{part}.safetensors"))


def _assert_same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- parser


def test_fault_plan_parses_entries():
    plan = FaultPlan.parse("nan_grad@rank1:iter0-2, oom@rank0:iter5")
    assert plan.faults == (Fault("nan_grad", 1, 0, 2), Fault("oom", 0, 5, 5))
    assert plan.fires("nan_grad", 1, 2)
    assert not plan.fires("nan_grad", 1, 3)
    assert not plan.fires("nan_grad", 0, 1)
    assert plan.fires("oom", 0, 5)
    assert not plan.fires("nan_reward", 1, 0)


def test_fault_plan_unset_never_fires():
    plan = FaultPlan.from_env({})
    assert not plan
    assert not plan.fires("nan_grad", 0, 0)
    assert not FaultPlan.from_env({"COGRPO_FAULT": ""})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nan_grad", "expected KIND@rankR:iterN"),
        ("nan_grad@rank1", "expected KIND@rankR:iterN"),
        ("nan_grad@1:iter0", "expected KIND@rankR:iterN"),
        ("nan_grad@rank1:iter0-", "expected KIND@rankR:iterN"),
        ("NaN_grad@rank1:iter0", "expected KIND@rankR:iterN"),
        ("nan_grads@rank1:iter0", "unknown fault kind 'nan_grads'"),
        ("nan_grad@rank1:iter3-1", "iteration range 3-1 is empty"),
        ("oom@rank0:iter1;hang@rank1:iter2", "expected KIND@rankR:iterN"),
    ],
)
def test_fault_plan_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        FaultPlan.parse(text)


def test_fault_plan_rejects_missing_rank():
    plan = FaultPlan.parse("nan_grad@rank2:iter0")
    plan.check_world_size(3)
    with pytest.raises(ValueError, match="names rank 2, but the run has 2 process"):
        plan.check_world_size(2)


# ---------------------------------------------------------------- two processes


@pytest.mark.skipif(not weights_available(), reason="the embedded weights are not in this checkout")
def test_nan_on_one_rank_skips_everywhere(tmp_path):
    # The embedded (pretrained) model, because a random model's rewards have no variance, so its
    # advantages are 0 and an update would not move the parameters either way.
    run = tmp_path / "run"
    # A limit of 1 keeps the update of iteration 1, whose rewards are half invalid (rank 1's), so that it
    # shows the update running with one rank's rewards missing. test_invalid_rewards_on_one_rank_skip_everywhere
    # covers the default limit.
    config = _small_config(iterations=6, group_size=4, chunk_size=8, seed=1, max_consecutive_skips=3,
                           max_invalid_reward_fraction=1.0)
    # Iterations alternate model (even) and schedule (odd) updates.
    fault = "nan_grad@rank1:iter0,nan_reward@rank1:iter1,nan_grad@rank1:iter2-9"
    out, wall = _launch(config, run, fault, timeout=300)
    text = _flat(out.stdout)
    print(f"two-process NaN run: {wall:.1f} s")

    # Iteration 4 is the third skip in a row, so both processes stop with exit code 3. The launcher
    # reports -15 (SIGTERM) for a rank that it stopped after the other one exited first.
    assert out.returncode != 0, text[-3000:]
    assert text.count("training stopped: 3 consecutive updates were skipped") == 2, text[-3000:]
    exit_codes = {int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", out.stdout)}
    assert 3 in exit_codes, text[-3000:]
    assert exit_codes <= {3, -15}, text[-3000:]

    for iteration, phase in [(0, "model"), (2, "model"), (3, "schedule"), (4, "model")]:
        for rank in (0, 1):
            assert (f"iteration {iteration} (rank {rank}): skipped the {phase} update at inner epoch 0 because the loss "
                    f"or a gradient was not finite on rank(s) [1]; this rank's prompts [{rank}]") in text, (iteration, rank)
    for image in (4, 5, 6, 7):
        assert f"iteration 1 (rank 1): reward failed for image {image} of prompt 1" in text
    assert "iteration 1 (rank 0): reward failed" not in text

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in metrics] == [1.0, 0.0, 1.0, 1.0]
    # Rank 0's advantages were non-zero, so each skipped update would have moved the parameters.
    for m in metrics:
        assert m["advantages/abs_max"] > 0, m["iteration"]

    checkpoints = sorted(run.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == [f"checkpoint-0000000{i}" for i in (1, 2, 3, 4)]
    for checkpoint in checkpoints:
        digests = json.loads((checkpoint / "trainer_state.json").read_text())["rank_parameter_sha256"]
        assert len(digests) == 2
        assert digests[0] == digests[1], checkpoint.name

    first, second, third, fourth = checkpoints
    base = load_file(str(weights_dir() / "transformer" / "diffusion_pytorch_model.safetensors"))
    _assert_same(_weights(first, "model"), {k: base[k] for k in _weights(first, "model")})
    _assert_same(_weights(first, "model"), _weights(second, "model"))
    assert any(not torch.equal(a, b) for a, b in zip(_weights(first, "schedule").values(), _weights(second, "schedule").values()))
    for part in ("model", "schedule"):
        _assert_same(_weights(second, part), _weights(third, part))
        _assert_same(_weights(third, part), _weights(fourth, part))


def test_invalid_rewards_on_one_rank_skip_everywhere(tmp_path, random_shapes_dir):
    run = tmp_path / "run"
    config = _small_config(model_path=str(random_shapes_dir), group_size=4, chunk_size=8, max_consecutive_skips=2)
    out, wall = _launch(config, run, "nan_reward@rank1:iter0-9", timeout=300)
    text = _flat(out.stdout)
    print(f"two-process invalid-reward run: {wall:.1f} s")

    # Rank 1's 4 rewards of 8 are invalid in every iteration, more than the default 5 %, so both ranks skip
    # iterations 0 and 1 and stop at the second skip in a row.
    assert text.count("training stopped: 2 consecutive updates were skipped") == 2, text[-3000:]
    exit_codes = {int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", out.stdout)}
    assert 3 in exit_codes, text[-3000:]
    assert exit_codes <= {3, -15}, text[-3000:]
    for iteration, phase in [(0, "model"), (1, "schedule")]:
        for rank in (0, 1):
            assert (f"iteration {iteration} (rank {rank}): skipped the {phase} update because 4 of 8 rewards (50.0%) "
                    f"are invalid") in text, (iteration, rank)

    # Rank 0 writes the records of both ranks.
    records = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["rank"], r["prompt_id"], r["image_index"]) for r in records] == [
        (iteration, 1, 1, image) for iteration in (0, 1) for image in (4, 5, 6, 7)]
    assert {r["error"] for r in records} == {"injected fault nan_reward"}

    checkpoint = run / "checkpoint-00000001"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["skip_counts"] == {"non_finite": 0, "invalid_rewards": 1}
    assert state["rank_parameter_sha256"][0] == state["rank_parameter_sha256"][1]
    base = load_file(str(random_shapes_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    _assert_same(_weights(checkpoint, "model"), {k: base[k] for k in _weights(checkpoint, "model")})


def test_out_of_memory_on_one_rank_ends_both(tmp_path, random_shapes_dir):
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import load_trained, train

    run = tmp_path / "run"
    config = _small_config(model_path=str(random_shapes_dir))
    out, wall = _launch(config, run, "oom@rank1:iter2", timeout=120)
    text = _flat(out.stdout)
    print(f"two-process out-of-memory run: {wall:.1f} s")
    assert wall < 60, text[-3000:]
    assert out.returncode != 0, text[-3000:]
    assert "iteration 2 (rank 1): out of memory: injected fault oom at iteration 2 on rank 1" in text
    assert "training stopped: rank 1 ran out of memory at iteration 2" in text
    assert re.search(r"exitcode\s*:\s*4", out.stdout), text[-3000:]

    newest = latest_valid_checkpoint(run)
    assert newest == run / "checkpoint-00000002"
    verify_checkpoint(newest)
    _, _, info = load_trained(run, "cpu")
    assert info["iteration"] == 2
    # One process resumes the two-process run (recorded as inexact) and picks the same checkpoint.
    resumed = train(TrainConfig(**{**config, "iterations": 3, "out": str(run)}), resume=run,
                    allow_inexact_resume=True, progress=False)
    assert resumed["resumes"][-1]["path"] == str(newest)
    assert resumed["resumes"][-1]["iteration"] == 2
    assert resumed["iterations"] == 3


def test_hung_rank_times_out(tmp_path, random_shapes_dir):
    run = tmp_path / "run"
    config = _small_config(model_path=str(random_shapes_dir), collective_timeout_s=10)
    out, wall = _launch(config, run, "hang@rank1:iter1", timeout=120)
    text = _flat(out.stdout)
    print(f"two-process hung-rank run: {wall:.1f} s")
    assert wall < 60, text[-3000:]
    assert out.returncode != 0, text[-3000:]
    assert "iteration 1 (rank 1): injected fault hang" in text
    assert "Timed out waiting 10000ms" in text, text[-3000:]
    assert latest_valid_checkpoint(run) == run / "checkpoint-00000001"

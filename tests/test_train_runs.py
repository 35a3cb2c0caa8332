"""Training runs through the real command line: resume after SIGKILL, two processes, bad options."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cogrpo.models.shapes import weights_available
from cogrpo.models.shapes_components import ASSET_DIR
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.run import train


def _options(model_dir: Path, out: Path, iterations: int) -> list[str]:
    return ["--model-path", str(model_dir), "--iterations", str(iterations), "--prompts-per-iteration", "2",
            "--group-size", "2", "--steps", "3", "--chunk-size", "4", "--lr-model", "1e-3", "--device", "cpu",
            "--out", str(out), "--seed", "4", "--checkpoint-every", "1", "--no-final-eval"]


def _config(model_dir: Path, out: Path, iterations: int) -> TrainConfig:
    return TrainConfig(model_path=str(model_dir), iterations=iterations, prompts_per_iteration=2, group_size=2, steps=3,
                       chunk_size=4, lr_model=1e-3, device="cpu", out=str(out), seed=4, checkpoint_every=1,
                       final_eval=False)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted(run.glob("checkpoint-*"))[-1]
    return {**load_file(str(newest / "model.safetensors")), **{f"schedule.{k}": v for k, v in load_file(str(newest / "schedule.safetensors")).items()}}


def _final_optimizers(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the optimizer tensors and the JSON state of the newest checkpoint."""
    newest = sorted(run.glob("checkpoint-*"))[-1]
    tensors = {}
    meta = {}
    for prefix in ("model_optimizer", "schedule_optimizer"):
        tensors.update({f"{prefix}.{k}": v for k, v in load_file(str(newest / f"{prefix}.safetensors")).items()})
        meta[prefix] = (newest / f"{prefix}.json").read_text()
    return tensors, meta


def _logged_rewards(run: Path) -> dict[int, tuple]:
    """Return each iteration's logged reward and advantage statistics (the last line of a repeated iteration)."""
    logged = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        logged[row["iteration"]] = (row["rewards/shapes/mean"], row["advantages/mean"], row["advantages/abs_max"])
    return logged


def _kill_after_checkpoint(command: list[str], run: Path, iteration: int, env: dict[str, str] | None = None) -> None:
    """Start ``command`` and SIGKILL it and all its child processes once ``run`` has checkpoint ``iteration``."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    try:
        while not (run / f"checkpoint-{iteration:08d}").exists():
            assert process.poll() is None, f"training ended before it could be killed after checkpoint {iteration}"
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        # The launcher's workers may run in sessions of their own, so every descendant is killed by pid.
        import psutil

        victims = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
    assert not (run / f"checkpoint-{iteration + 1:08d}").exists(), "killed too late: the next checkpoint was written"


@pytest.mark.skipif(not weights_available(), reason="the embedded weights are not in this checkout")
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    # The embedded (pretrained) model, because a random model's shapes rewards have no variance within a
    # group, so its advantages are 0, no parameter moves, and the comparison would hold trivially.
    reference = tmp_path / "reference"
    train(_config(ASSET_DIR, reference, 4), progress=False)
    killed = tmp_path / "killed"
    # Killed three times: after the first checkpoint, mid-run, and after checkpoint N-1, each time resumed.
    command = [sys.executable, "-m", "cogrpo", "train", *_options(ASSET_DIR, killed, 4)]
    for kill_after in (1, 2, 3):
        _kill_after_checkpoint(command, killed, kill_after)
        command = [sys.executable, "-m", "cogrpo", "train", "--resume", str(killed)]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    expected = _final_weights(reference)
    actual = _final_weights(killed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    base = load_file(str(ASSET_DIR / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(expected[key], base[key]) for key in base if key in expected), "no parameter moved"

    expected_tensors, expected_meta = _final_optimizers(reference)
    actual_tensors, actual_meta = _final_optimizers(killed)
    assert expected_tensors.keys() == actual_tensors.keys()
    for key in expected_tensors:
        assert torch.equal(expected_tensors[key], actual_tensors[key]), key
    assert expected_meta == actual_meta
    assert _logged_rewards(killed) == _logged_rewards(reference)
    assert any(abs_max > 0 for _, _, abs_max in _logged_rewards(reference).values())
    summary = json.loads((killed / "summary.json").read_text())
    assert [resume["iteration"] for resume in summary["resumes"]] == [1, 2, 3]


def test_resume_rejects_changed_config(tmp_path, random_shapes_dir):
    run = tmp_path / "run"
    train(_config(random_shapes_dir, run, 1), progress=False)
    changed = _config(random_shapes_dir, run, 2)
    changed.clip_range = 0.3
    from cogrpo.rl.run import ResumeMismatchError

    with pytest.raises(ResumeMismatchError, match="changed: clip_range"):
        train(changed, resume=run, progress=False)


def test_resume_rejects_world_size_and_revision(tmp_path, random_shapes_dir):
    from cogrpo.rl.run import ResumeMismatchError, build_backend, load_checkpoint
    from cogrpo.rl.trainer import CoGRPOTrainer

    run = tmp_path / "run"
    train(_config(random_shapes_dir, run, 1), progress=False)
    checkpoint = run / "checkpoint-00000001"
    config = _config(random_shapes_dir, run, 2)

    def fresh_trainer() -> CoGRPOTrainer:
        from cogrpo.rewards.shapes import ShapesReward

        return CoGRPOTrainer(config, build_backend(config, torch.device("cpu")), ShapesReward())

    trainer = fresh_trainer()
    trainer.backend.revision = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(ResumeMismatchError, match="base model revision was .*, now 0123456789abcdef"):
        load_checkpoint(trainer, checkpoint)

    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["world_size"] = 2
    state_path.write_text(json.dumps(state))
    with pytest.raises(ResumeMismatchError, match="world size was 2, now 1") as raised:
        load_checkpoint(fresh_trainer(), checkpoint)
    assert "--allow-inexact-resume" in str(raised.value)

    resumed = load_checkpoint(fresh_trainer(), checkpoint, allow_mismatch=True)
    assert resumed["mismatches"] == ["world size was 2, now 1"]
    assert resumed["iteration"] == 1


@pytest.mark.skipif(not weights_available(), reason="the embedded weights are not in this checkout")
def test_two_processes_killed_and_resumed_match_one(tmp_path):
    # The embedded pretrained model, not the random one: its rewards differ within a group, so
    # advantages are non-zero and the updates compared below really change the parameters.
    base = {f"{k}": v for k, v in load_file(str(ASSET_DIR / "transformer" / "diffusion_pytorch_model.safetensors")).items()}
    single = tmp_path / "single"
    config = _config(ASSET_DIR, single, 2)
    config.group_size = 4
    # Each launched process runs one thread; so does this one, so that float rounding, and hence
    # every sampled token and reward, is the same in both runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    double = tmp_path / "double"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]
    options = _options(ASSET_DIR, double, 2)
    options[options.index("--group-size") + 1] = "4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The two-process run is killed (both ranks and the launcher) after its first checkpoint and resumed,
    # so this also checks a two-rank resume against the uninterrupted single-process run.
    _kill_after_checkpoint([*launch, "29641", "-m", "cogrpo", "train", *options], double, 1, env=env)
    out = subprocess.run([*launch, "29642", "-m", "cogrpo", "train", "--resume", str(double)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((double / "summary.json").read_text())
    assert summary["resumes"][0]["iteration"] == 1
    one, two = _final_weights(single), _final_weights(double)
    state = json.loads((sorted(double.glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    changed = [key for key in base if key in one and not torch.equal(one[key], base[key])]
    assert changed, "no transformer parameter moved, so the comparison below would be vacuous"
    # Gradients are summed in a different order (per-rank partial sums, then an all-reduce), so
    # the float32 results agree to rounding, not bit for bit.
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-6, rtol=1e-5), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-size", "1"], "invalid group_size=1"),
        (["--steps", "0"], "invalid steps=0"),
        (["--reward", "hsp"], "Did you mean 'hps'"),
        (["--mode", "joint"], "invalid mode='joint'"),
    ],
)
def test_invalid_options_fail_before_rollout(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "cogrpo", "train", "--out", str(tmp_path / "run"), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert message in " ".join(out.stdout.split())
    assert not (tmp_path / "run").exists()


def test_lora_checkpoint_reloads_same_samples(tmp_path, random_shapes_dir):
    from cogrpo.rl.run import load_trained
    from cogrpo.sampling.sampler import image_generators, sample

    config = _config(random_shapes_dir, tmp_path / "lora", 1)
    config.lora_rank = 4
    config.lr_model = 1e-2
    summary = train(config, progress=False)
    trainer = summary["_trainer"]
    adapter = [name for name, p in trainer.unwrapped_transformer.named_parameters() if p.requires_grad]
    assert adapter and all("lora_" in name for name in adapter)
    prompts = ["a photo of a red circle", "a photo of two crosses"]
    expected = sample(trainer.backend, prompts, image_generators([1, 2]), steps=3)
    backend, _, info = load_trained(tmp_path / "lora", "cpu")
    actual = sample(backend, prompts, image_generators([1, 2]), steps=3)
    assert torch.equal(actual.tokens, expected.tokens)
    assert info["iteration"] == 1


def test_preset_without_weights_fails_clearly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "cogrpo", "train", "--config", "amused-512-hps", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2
    text = " ".join(out.stdout.split())
    assert "amused/amused-512" in text
    assert "--model-path" in text


def test_existing_run_folder_is_not_overwritten(tmp_path, random_shapes_dir):
    run = tmp_path / "run"
    train(_config(random_shapes_dir, run, 1), progress=False)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="already contains a training run; pass --resume"):
        train(_config(random_shapes_dir, run, 1), progress=False)
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "invalid device 'gpu'"),
        (["--model", "shape"], "Did you mean 'shapes'"),
        (["--checkpoint", "no-such-run"], "no-such-run"),
    ],
)
def test_sample_user_errors_are_clean(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "cogrpo", "sample", "--prompt", "a red circle", "--out", str(tmp_path / "s"), *args],
                         capture_output=True, text=True, timeout=600)
    output = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2
    assert message in output
    assert "Traceback" not in output


def test_sample_out_that_is_a_file_fails(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    out = subprocess.run([sys.executable, "-m", "cogrpo", "sample", "--prompt", "a red circle", "--steps", "2", "--out", str(target)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert f"{target} is a file" in " ".join((out.stdout + out.stderr).split())
    assert target.read_text() == "keep me"


def test_resume_with_other_out_fails(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cogrpo", "train", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert "drop --out" in " ".join((out.stdout + out.stderr).split())

"""The backend options of the command line: --random-weights and --dtype.

The full-size models are too big for a CPU test, so their random-weight builds
run on the meta device, which allocates nothing. The embedded shapes model runs
end to end through ``cogrpo sample``, ``cogrpo eval`` and ``cogrpo train``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cogrpo.cli import app
from cogrpo.models.precision import autocast, dtype_name, resolve_dtype
from cogrpo.rewards.base import ScoreResult, Scorer
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.run import build_backend
from cogrpo.rl.trainer import CoGRPOTrainer

# Transformer parameters of the published checkpoints. aMUSEd's are diffusers' UVit2DModel defaults plus
# each variant's sampling convolutions, and Meissonic's fp32 file on the hub is 4.03 GB.
PUBLISHED_TRANSFORMER_PARAMETERS = {
    "amused-256": 603_537_664,
    "amused-512": 608_257_792,
    "meissonic": 1_006_946_304,
}
PUBLISHED_GRIDS = {"amused-256": (16, 16), "amused-512": (32, 32), "meissonic": (64, 64)}


@pytest.fixture(autouse=True)
def one_thread():
    # These small models gain nothing from intra-op threads. On a loaded two-core machine, OpenMP workers
    # waiting for each other made one bf16 training iteration take about 20 s instead of under 1 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


class MeanRedReward(Scorer):
    """The mean red channel of an image in [0, 1], a cheap reward that differs between random images."""

    name = "mean-red"

    def score_batch(self, images, prompts, metadata):
        return ScoreResult(scores=np.asarray([im[..., 0].mean() / 255.0 for im in images], np.float32))


# ---------------------------------------------------------------------------- random weights


@pytest.mark.parametrize("model", sorted(PUBLISHED_TRANSFORMER_PARAMETERS))
def test_random_weights_builds_published_size_on_meta(model):
    backend = build_backend(TrainConfig(model=model, random_weights=True), torch.device("meta"))

    count = sum(p.numel() for p in backend.transformer.parameters())
    assert count == PUBLISHED_TRANSFORMER_PARAMETERS[model]
    assert backend.revision == "random"
    assert backend.grid == PUBLISHED_GRIDS[model]
    assert backend.codebook_size == 8192
    assert backend.mask_token_id == 8255
    assert backend.transformer.device.type == "meta"
    assert backend.vq.device.type == "meta"
    assert backend.text_encoder.device.type == "meta"
    assert len(backend.tokenizer) == 49408


def test_random_weights_rejects_model_path(tmp_path):
    with pytest.raises(ValueError, match="invalid random_weights"):
        TrainConfig(random_weights=True, model_path=str(tmp_path))

    result = CliRunner().invoke(app, ["sample", "--prompt", "a red circle", "--random-weights", "--model-path",
                                      str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "drop --model-path" in " ".join(result.output.split())


def test_random_shapes_build_is_deterministic():
    first = build_backend(TrainConfig(random_weights=True), torch.device("cpu"))
    torch.manual_seed(123)  # the global random state must not matter
    second = build_backend(TrainConfig(random_weights=True), torch.device("cpu"))

    state = first.transformer.state_dict()
    assert all(torch.equal(value, second.transformer.state_dict()[key]) for key, value in state.items())


def test_sample_cli_random_weights_marks_output(tmp_path):
    out = tmp_path / "samples"

    result = run_cli("sample", "--prompt", "a photo of a red circle", "--n", "2", "--steps", "3", "--model", "shapes",
                     "--random-weights", "--device", "cpu", "--out", str(out))

    assert "random weights" in " ".join(result.output.split())
    assert sorted(p.name for p in out.glob("*.png")) == ["000-000.png", "000-001.png", "grid.png"]
    record = json.loads((out / "prompts.json").read_text())
    assert record["model"] == {"name": "shapes", "revision": "random", "random_weights": True, "dtype": "float32",
                               "weight_sha256": {}}


def test_eval_cli_random_weights_marks_result(tmp_path):
    out = tmp_path / "eval"

    run_cli("eval", "--bench", "shapes", "--model", "shapes", "--random-weights", "--steps", "2", "--limit", "1",
            "--images-per-prompt", "1", "--device", "cpu", "--dtype", "bf16", "--out", str(out))

    result = json.loads((out / "result.json").read_text())
    assert result["model"]["random_weights"] is True
    assert result["model"]["revision"] == "random"
    assert result["model"]["weight_sha256"] == {}
    assert result["model"]["dtype"] == "bfloat16"
    assert result["dtype"] == "bfloat16"
    assert result["n_samples"] == 1


def test_train_cli_random_weights_marks_summary(tmp_path):
    run = tmp_path / "run"

    run_cli("train", "--random-weights", "--iterations", "1", "--prompts-per-iteration", "1", "--group-size", "2",
            "--steps", "2", "--device", "cpu", "--no-final-eval", "--gradient-checkpointing", "--out", str(run))

    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == {"name": "shapes", "revision": "random", "random_weights": True, "dtype": "float32",
                               "weight_sha256": {}}
    assert summary["config"]["random_weights"] is True
    assert summary["config"]["gradient_checkpointing"] is True
    state = json.loads(next(run.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["base_model_revision"] == "random"


def test_random_weights_lora_run_reloads_same_samples(tmp_path):
    from cogrpo.rl.run import load_trained, train
    from cogrpo.sampling.sampler import image_generators, sample

    run = tmp_path / "run"
    config = TrainConfig(random_weights=True, lora_rank=4, lr_model=1e-2, iterations=1, prompts_per_iteration=1,
                         group_size=2, steps=2, device="cpu", final_eval=False, out=str(run), seed=4)
    trainer = train(config, progress=False)["_trainer"]
    prompts = ["a photo of a red circle", "a photo of two crosses"]
    expected = sample(trainer.backend, prompts, image_generators([1, 2]), steps=2)

    backend, _, info = load_trained(run, "cpu")
    actual = sample(backend, prompts, image_generators([1, 2]), steps=2)
    _, _, bf16_info = load_trained(run, "cpu", dtype="bf16")

    # The random base model is rebuilt from the same seed, so the LoRA weights land on the same base.
    assert torch.equal(actual.tokens, expected.tokens)
    assert info["random_weights"] is True
    assert info["base_model_revision"] == "random"
    assert info["dtype"] == "float32"
    assert bf16_info["dtype"] == "bfloat16"


# ---------------------------------------------------------------------------- dtype


def test_dtype_defaults_per_device():
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp32", "cuda") == torch.float32
    assert dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match="invalid dtype 'fp16'"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="invalid dtype='half'"):
        TrainConfig(dtype="half")


def test_autocast_off_at_float32_on_cpu():
    with autocast("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_cpu_backend_defaults_to_fp32(random_shapes_dir):
    backend = build_backend(TrainConfig(model_path=str(random_shapes_dir)), torch.device("cpu"))

    assert backend.compute_dtype == torch.float32


def test_bf16_trainer_iteration_on_cpu(random_shapes_dir):
    config = TrainConfig(model_path=str(random_shapes_dir), dtype="bf16", mode="model", prompts_per_iteration=2,
                         group_size=2, steps=3, chunk_size=4, lr_model=1e-3, device="cpu", final_eval=False,
                         checkpoint_every=0, train_step_fraction=1.0)
    backend = build_backend(config, torch.device("cpu"))
    output_dtypes = set()
    backend.transformer.register_forward_hook(lambda module, args, output: output_dtypes.add(output.dtype))
    trainer = CoGRPOTrainer(config, backend, MeanRedReward())

    result = trainer.train_iteration()

    assert backend.compute_dtype == torch.bfloat16
    assert output_dtypes == {torch.bfloat16}  # rollout and recomputation both ran under autocast
    assert not result.skipped
    assert np.isfinite(result.metrics["loss/model"])
    # Rollout and recomputation run the same bf16 kernels, so the first ratio stays near 1.
    assert result.metrics["policy/model/max_abs_ratio_minus_one"] < 1e-2

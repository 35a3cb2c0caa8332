"""Invalid rewards in training: failures.jsonl, the skipped update above the invalid share, and the stop after skips.

The two-process case (one rank's rewards invalid, both ranks skip) is in test_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from cogrpo.rewards.base import Scorer, ScoreResult
from cogrpo.rl.config import HASHED_WHEN_CHANGED, TrainConfig
from cogrpo.rl.run import build_backend
from cogrpo.rl.trainer import SKIP_INVALID_REWARDS, SKIP_NON_FINITE, CoGRPOTrainer

GROUP = 4


class FailingPromptsReward(Scorer):
    """Mean redness, except for the images of the chosen prompt ids (positions in the batch's prompt groups).

    Prompt ids in ``nan_ids`` get NaN with an error message, those in ``inf_ids`` get +inf with no message.
    """

    name = "failing-redness"

    def __init__(self, nan_ids=(), inf_ids=()):
        self.nan_ids = set(nan_ids)
        self.inf_ids = set(inf_ids)

    def score_batch(self, images, prompts, metadata):
        scores = np.asarray([float((im[..., 0].astype(float) - im[..., 1:].mean(-1)).mean() / 255) for im in images],
                            dtype=np.float32)
        errors: list[str | None] = [None] * len(images)
        for position in range(len(images)):
            prompt_id = position // GROUP
            if prompt_id in self.nan_ids:
                scores[position] = np.nan
                errors[position] = f"simulated failure for prompt id {prompt_id}"
            elif prompt_id in self.inf_ids:
                scores[position] = np.inf
        return ScoreResult(scores=scores, errors=errors)


def _trainer(model_dir, reward, tmp_path, **overrides) -> CoGRPOTrainer:
    options = dict(model_path=str(model_dir), mode="model", prompts_per_iteration=2, group_size=GROUP, steps=3,
                   chunk_size=8, lr_model=1e-3, device="cpu", final_eval=False, checkpoint_every=0, reward_retries=0)
    options.update(overrides)
    config = TrainConfig(**options)
    return CoGRPOTrainer(config, build_backend(config, torch.device("cpu")), reward,
                         failures_path=tmp_path / "failures.jsonl")


def _parameters(trainer: CoGRPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.unwrapped_transformer.state_dict().items()}


def test_failures_file_lists_invalid_rewards(tmp_path, random_shapes_dir):
    trainer = _trainer(random_shapes_dir, FailingPromptsReward(nan_ids=[1]), tmp_path, max_invalid_reward_fraction=1.0)
    entries, _ = trainer.local_batch(0)

    result = trainer.train_iteration()

    records = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert [r["image_index"] for r in records] == [4, 5, 6, 7]
    for record in records:
        assert record["iteration"] == 0
        assert record["rank"] == 0
        assert record["prompt_id"] == 1
        assert record["prompt"] == entries[GROUP]["prompt"]
        assert record["reward"] == "failing-redness"
        assert record["error"] == "simulated failure for prompt id 1"
    assert np.isnan(result.rewards[4:]).all()
    assert (result.advantages[4:] == 0).all()
    assert not result.skipped


def test_infinite_reward_recorded_without_message(tmp_path, random_shapes_dir):
    trainer = _trainer(random_shapes_dir, FailingPromptsReward(inf_ids=[0]), tmp_path, max_invalid_reward_fraction=1.0)

    result = trainer.train_iteration()

    records = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert [r["image_index"] for r in records] == [0, 1, 2, 3]
    assert {r["error"] for r in records} == {"reward is inf"}
    assert np.isnan(result.rewards[:4]).all()
    assert (result.advantages[:4] == 0).all()


def test_no_failures_writes_no_file(tmp_path, random_shapes_dir):
    trainer = _trainer(random_shapes_dir, FailingPromptsReward(), tmp_path)

    result = trainer.train_iteration()

    assert not (tmp_path / "failures.jsonl").exists()
    assert result.metrics["rewards/invalid_fraction"] == 0.0
    assert not result.skipped


def test_invalid_share_above_limit_skips_update(tmp_path, random_shapes_dir):
    # Half of the rewards fail. At a limit of 0.5 the update runs (the share must be larger than the
    # limit), which shows that the remaining rewards would move the parameters.
    updating = _trainer(random_shapes_dir, FailingPromptsReward(nan_ids=[0]), tmp_path / "updating",
                        max_invalid_reward_fraction=0.5)
    before = _parameters(updating)
    updated = updating.train_iteration()
    assert not updated.skipped
    assert any(not torch.equal(v, before[k]) for k, v in _parameters(updating).items())

    skipping = _trainer(random_shapes_dir, FailingPromptsReward(nan_ids=[0]), tmp_path / "skipping")
    assert skipping.config.max_invalid_reward_fraction == 0.05
    before = _parameters(skipping)
    result = skipping.train_iteration()

    assert result.skipped
    assert result.skip_reason == SKIP_INVALID_REWARDS
    for key, value in _parameters(skipping).items():
        assert torch.equal(value, before[key]), key
    assert result.metrics["rewards/invalid_fraction"] == 0.5
    assert result.metrics[f"skips/{SKIP_INVALID_REWARDS}"] == 1.0
    assert result.metrics[f"skips/{SKIP_NON_FINITE}"] == 0.0
    assert skipping.skip_counts == {SKIP_NON_FINITE: 0, SKIP_INVALID_REWARDS: 1}
    assert skipping.consecutive_skips == 1
    np.testing.assert_array_equal(result.advantages, updated.advantages)


def test_invalid_skips_stop_training(tmp_path, random_shapes_dir):
    from cogrpo.rl.trainer import TrainingAborted

    trainer = _trainer(random_shapes_dir, FailingPromptsReward(nan_ids=[0, 1]), tmp_path, max_consecutive_skips=2)
    assert trainer.train_iteration().skip_reason == SKIP_INVALID_REWARDS

    with pytest.raises(TrainingAborted, match="2 consecutive updates were skipped"):
        trainer.train_iteration()
    lines = (tmp_path / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * GROUP


def test_cli_stops_with_exit_code_3(tmp_path, random_shapes_dir):
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(dict(
        model_path=str(random_shapes_dir), iterations=4, prompts_per_iteration=2, group_size=2, steps=2, chunk_size=4,
        device="cpu", seed=4, checkpoint_every=1, final_eval=False, max_consecutive_skips=2)))
    env = {**os.environ, "COGRPO_FAULT": "nan_reward@rank0:iter0-9"}

    out = subprocess.run([sys.executable, "-m", "cogrpo", "train", "--config", str(config), "--out", str(run)],
                         capture_output=True, text=True, timeout=600, env=env)

    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 3, text[-3000:]
    assert "training stopped: 2 consecutive updates were skipped" in text
    assert "skipped the model update because 4 of 4 rewards (100.0%) are invalid" in text
    records = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["image_index"]) for r in records] == [(i, k) for i in (0, 1) for k in range(4)]
    assert {r["error"] for r in records} == {"injected fault nan_reward"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in metrics] == [1.0]
    assert metrics[0][f"skips/{SKIP_INVALID_REWARDS}"] == 1.0
    state = json.loads((run / "checkpoint-00000001" / "trainer_state.json").read_text())
    assert state["skip_counts"] == {SKIP_NON_FINITE: 0, SKIP_INVALID_REWARDS: 1}


def test_invalid_limit_rejects_bad_values():
    for value in (-0.1, 1.5):
        with pytest.raises(ValueError, match="invalid max_invalid_reward_fraction"):
            TrainConfig(max_invalid_reward_fraction=value)


def test_invalid_limit_default_keeps_old_hash():
    # Checkpoints written before the field existed must still resume.
    import hashlib

    from cogrpo.rl.config import NON_TRAINING_FIELDS

    config = TrainConfig()
    old = {k: v for k, v in config.to_dict().items() if k not in NON_TRAINING_FIELDS and k not in HASHED_WHEN_CHANGED}
    assert config.training_hash() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert TrainConfig(max_invalid_reward_fraction=0.1).training_hash() != config.training_hash()

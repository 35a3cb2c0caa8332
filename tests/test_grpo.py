"""Group advantages, the clipped objective and the Co-GRPO trainer on small configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cogrpo.rewards.base import ScoreResult, Scorer
from cogrpo.models.shapes import weights_available
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.objective import clipped_objective, group_advantages, k3_kl
from cogrpo.rl.run import build_backend
from cogrpo.rl.trainer import CoGRPOTrainer, TrainingAborted


class RednessReward(Scorer):
    """Mean redness of an image: (R - (G + B) / 2) / 255, clipped to [0, 1]."""

    name = "redness"

    def score_batch(self, images, prompts, metadata):
        scores = [float(np.clip((im[..., 0].astype(float) - (im[..., 1].astype(float) + im[..., 2]) / 2) / 255, 0, 1).mean()) for im in images]
        return ScoreResult(scores=np.asarray(scores, np.float32))


def test_advantages_normalise_each_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 7.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv.sum(1), torch.zeros(2), atol=1e-5)
    assert adv[0, 2] > 0 > adv[0, 0]


def test_advantages_zero_variance_group_is_exactly_zero():
    adv = group_advantages(torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.0, 1.0]]))
    assert torch.equal(adv[0], torch.zeros(4))
    assert (adv[1] != 0).all()


def test_advantages_exclude_failed_rewards():
    adv = group_advantages(torch.tensor([[1.0, float("nan"), 3.0, float("inf")]]))
    assert adv[0, 1] == 0
    assert adv[0, 3] == 0
    expected = group_advantages(torch.tensor([[1.0, 3.0]]))
    assert torch.allclose(adv[0, [0, 2]], expected[0])


def test_advantages_single_finite_reward_is_zero():
    adv = group_advantages(torch.tensor([[float("nan"), 2.0, float("nan")]]))
    assert torch.equal(adv, torch.zeros(1, 3))


def test_advantages_reject_wrong_shape():
    with pytest.raises(ValueError, match="expected rewards of shape"):
        group_advantages(torch.zeros(4))


def test_clipped_objective_clips_positive_advantage():
    log_ratio = torch.log(torch.tensor([1.5, 0.5]))
    loss, stats = clipped_objective(log_ratio, torch.tensor([1.0, 1.0]), 0.2)
    assert torch.allclose(loss, torch.tensor([-1.2, -0.5]))
    assert stats["clip_fraction"] == 1.0


def test_k3_is_zero_at_equal_policies():
    logp = torch.tensor([-1.0, -2.0])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(2))
    assert (k3_kl(logp, logp - 0.5) > 0).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("group_size", 1, "invalid group_size=1; expected an integer >= 2"),
        ("steps", 0, "invalid steps=0"),
        ("mode", "joint", "invalid mode='joint'; expected one of co, model, schedule"),
        ("clip_range", -0.1, "invalid clip_range"),
        ("train_step_fraction", 1.5, "invalid train_step_fraction"),
        ("schedule_knobs", ("top_p",), "invalid schedule_knobs"),
    ],
)
def test_config_rejects_invalid_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_config_file_typo_suggests_field(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("group_sise: 4\n")
    with pytest.raises(ValueError, match="unknown option 'group_sise'. Did you mean 'group_size'"):
        TrainConfig.from_yaml(path)


def _trainer(model_dir, **overrides):
    options = dict(model_path=None if model_dir is None else str(model_dir), prompts_per_iteration=2, group_size=4, steps=4, chunk_size=4,
                   device="cpu", final_eval=False, checkpoint_every=0)
    options.update(overrides)
    config = TrainConfig(**options)
    backend = build_backend(config, torch.device("cpu"))
    return CoGRPOTrainer(config, backend, RednessReward())


def test_first_update_ratios_are_exactly_one(random_shapes_dir):
    trainer = _trainer(random_shapes_dir, lr_model=0.0, lr_schedule=0.0, mode="co", train_step_fraction=1.0)
    model_phase = trainer.train_iteration()
    schedule_phase = trainer.train_iteration()
    assert model_phase.phase == "model"
    assert schedule_phase.phase == "schedule"
    assert model_phase.metrics["policy/model/max_abs_ratio_minus_one"] == 0.0
    assert model_phase.metrics["policy/model/approx_kl"] == 0.0
    assert schedule_phase.metrics["policy/schedule/max_abs_ratio_minus_one"] == 0.0


def test_model_mode_trains_model_and_freezes_schedule(random_shapes_dir):
    trainer = _trainer(random_shapes_dir, mode="model", lr_model=1e-3)
    model_before = {k: v.clone() for k, v in trainer.unwrapped_transformer.state_dict().items()}
    schedule_before = {k: v.clone() for k, v in trainer.schedule_policy.state_dict().items()}
    trainer.train_iteration()
    changed = [k for k, v in trainer.unwrapped_transformer.state_dict().items() if not torch.equal(v, model_before[k])]
    assert changed
    for key, value in trainer.schedule_policy.state_dict().items():
        assert torch.equal(value, schedule_before[key])


def test_schedule_mode_freezes_model(random_shapes_dir):
    trainer = _trainer(random_shapes_dir, mode="schedule", lr_schedule=0.05)
    model_before = {k: v.clone() for k, v in trainer.unwrapped_transformer.state_dict().items()}
    mean_before = trainer.schedule_policy.mean.detach().clone()
    trainer.train_iteration()
    for key, value in trainer.unwrapped_transformer.state_dict().items():
        assert torch.equal(value, model_before[key])
    assert not torch.equal(trainer.schedule_policy.mean.detach(), mean_before)


@pytest.mark.skipif(not weights_available(), reason="the embedded weights are not in this checkout")
def test_short_run_raises_redness():
    trainer = _trainer(None, mode="model", lr_model=1e-3, iterations=12, prompts_per_iteration=4,
                       group_size=4, train_step_fraction=1.0, seed=3)
    means = [float(np.nanmean(trainer.train_iteration().rewards)) for _ in range(12)]
    first, last = np.mean(means[:3]), np.mean(means[-3:])
    assert last > first * 1.5, means


def test_nan_rewards_get_zero_advantage(random_shapes_dir):
    class FlakyReward(RednessReward):
        def score_batch(self, images, prompts, metadata):
            result = super().score_batch(images, prompts, metadata)
            result.scores[::3] = np.nan
            return result

    trainer = _trainer(random_shapes_dir, mode="model")
    trainer.reward = FlakyReward()
    result = trainer.train_iteration()
    assert np.isnan(result.rewards[::3]).all()
    assert (result.advantages[::3] == 0).all()
    assert result.metrics["rewards/failed"] == math.ceil(len(result.rewards) / 3)


def test_non_finite_loss_skips_update(random_shapes_dir, monkeypatch):
    trainer = _trainer(random_shapes_dir, mode="model", lr_model=1e-3, max_consecutive_skips=2)
    before = {k: v.clone() for k, v in trainer.unwrapped_transformer.state_dict().items()}
    import cogrpo.rl.trainer as trainer_module

    original = trainer_module.committed_log_prob

    def poisoned(*args, **kwargs):
        logp, per_token = original(*args, **kwargs)
        return logp * float("nan"), per_token

    monkeypatch.setattr(trainer_module, "committed_log_prob", poisoned)
    result = trainer.train_iteration()
    assert result.skipped
    for key, value in trainer.unwrapped_transformer.state_dict().items():
        assert torch.equal(value, before[key])
    from cogrpo.rl.trainer import TrainingAborted

    with pytest.raises(TrainingAborted, match="2 consecutive updates were skipped"):
        trainer.train_iteration()


class ConstantReward(Scorer):
    """A reward that gives every image 0.5, so every group has zero variance."""

    name = "constant"

    def score_batch(self, images, prompts, metadata):
        return ScoreResult(scores=np.full(len(images), 0.5, dtype=np.float32))


def test_zero_variance_rewards_leave_parameters_unchanged(random_shapes_dir):
    trainer = _trainer(random_shapes_dir, mode="co", lr_model=1e-2, lr_schedule=0.5, kl_weight=0.0, weight_decay=0.0)
    trainer.reward = ConstantReward()
    model_before = {k: v.clone() for k, v in trainer.unwrapped_transformer.state_dict().items()}
    schedule_before = {k: v.clone() for k, v in trainer.schedule_policy.state_dict().items()}

    phases = [trainer.train_iteration() for _ in range(2)]

    assert [result.phase for result in phases] == ["model", "schedule"]
    for result in phases:
        assert not result.skipped
        assert result.metrics["advantages/zero_variance_groups"] == 1.0
        assert (result.advantages == 0).all()
    for key, value in trainer.unwrapped_transformer.state_dict().items():
        assert torch.equal(value, model_before[key]), key
    for key, value in trainer.schedule_policy.state_dict().items():
        assert torch.equal(value, schedule_before[key]), key


def test_kl_applies_to_zero_variance_groups(random_shapes_dir):
    """The documented choice: with beta > 0 the KL term still pulls zero-variance groups toward the reference."""

    trainer = _trainer(random_shapes_dir, mode="model", lr_model=1e-2, kl_weight=1.0, weight_decay=0.0, train_step_fraction=1.0)
    trainer.reward = ConstantReward()
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in trainer.unwrapped_transformer.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    moved = {k: v.clone() for k, v in trainer.unwrapped_transformer.state_dict().items()}

    result = trainer.train_iteration()

    assert result.metrics["advantages/zero_variance_groups"] == 1.0
    assert result.metrics["policy/model/kl_ref"] > 0
    after = trainer.unwrapped_transformer.state_dict()
    # every advantage is 0, so only the KL term can have moved the parameters
    # (test_zero_variance_rewards_leave_parameters_unchanged shows they stay put with kl_weight=0)
    assert any(not torch.equal(after[k], moved[k]) for k in moved)


def test_divergent_updates_stop_training(random_shapes_dir, caplog):
    trainer = _trainer(random_shapes_dir, mode="co", lr_model=1e-3, divergence_grad_norm=1e-12, divergence_patience=2)
    first = trainer.train_iteration()
    assert first.metrics["divergence/consecutive"] == 1.0
    assert first.metrics["policy/model/max_grad_norm"] > 1e-12
    assert "divergent model update (grad_norm" in caplog.text
    with pytest.raises(TrainingAborted, match="2 divergent updates in a row .*schedule update at iteration 1"):
        trainer.train_iteration()


def test_divergence_counter_resets_after_a_normal_update(random_shapes_dir):
    trainer = _trainer(random_shapes_dir, mode="co", divergence_grad_norm=1e-12, divergence_patience=3)
    assert trainer.train_iteration().metrics["divergence/consecutive"] == 1.0
    trainer.config.divergence_grad_norm = 0.0  # rule off: the next update is not divergent
    assert trainer.train_iteration().metrics["divergence/consecutive"] == 0.0
    assert trainer.consecutive_divergent == 0


def test_off_policy_first_epoch_warns(random_shapes_dir, caplog):
    trainer = _trainer(random_shapes_dir, mode="model", ratio_tolerance=0.01, train_step_fraction=1.0)
    rollout = trainer.rollout

    def shifted_rollout(*args, **kwargs):
        trajectory = rollout(*args, **kwargs)
        trajectory.model_logp = trajectory.model_logp + 0.5  # as if the rollout had computed other probabilities
        return trajectory

    trainer.rollout = shifted_rollout
    result = trainer.train_iteration()
    assert result.metrics["policy/model/first_epoch_max_abs_ratio_minus_one"] > 0.3
    assert "above ratio_tolerance=0.01" in caplog.text


def test_on_policy_first_epoch_does_not_warn(random_shapes_dir, caplog):
    trainer = _trainer(random_shapes_dir, mode="model", ratio_tolerance=0.0, train_step_fraction=1.0)
    result = trainer.train_iteration()
    assert result.metrics["policy/model/first_epoch_max_abs_ratio_minus_one"] == 0.0
    assert "ratio_tolerance" not in caplog.text

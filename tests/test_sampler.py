"""The masked sampler, its trajectory records and the schedule policy."""

from __future__ import annotations

import pytest
import torch

from cogrpo.models.shapes import load_shapes_backend
from cogrpo.sampling.sampler import NOT_COMMITTED, committed_log_prob, image_generators, sample
from cogrpo.sampling.schedule import KNOBS, SchedulePolicy, to_constrained, to_unconstrained


@pytest.fixture(scope="module")
def backend(random_shapes_dir):
    return load_shapes_backend(random_shapes_dir)


PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a cross above a triangle"]


def test_every_position_committed_once(backend):
    steps = 6
    trajectory = sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=steps, chunk_size=2)
    assert (trajectory.commit_step != NOT_COMMITTED).all()
    assert (trajectory.commit_step < steps).all()
    assert (trajectory.tokens < backend.codebook_size).all()


def test_each_step_reveals_at_least_one_token(backend):
    steps = 8
    trajectory = sample(backend, PROMPTS, image_generators([4, 5, 6]), steps=steps)
    for step in range(steps):
        assert (trajectory.committed_at(step).sum(-1) >= 1).all()


def test_default_schedule_counts_follow_cosine(backend):
    steps = 4
    trajectory = sample(backend, PROMPTS[:1], image_generators([0]), steps=steps)
    length = backend.grid[0] * backend.grid[1]
    ratios = backend.default_schedule(steps).mask_ratio
    still_masked = [int((trajectory.commit_step >= t + 1).sum()) for t in range(steps)]
    expected = [int(torch.floor(length * ratios[t])) for t in range(steps)]
    assert still_masked == expected


def test_image_does_not_depend_on_batch(backend):
    alone = sample(backend, PROMPTS[1:2], image_generators([11]), steps=5)
    batched = sample(backend, PROMPTS, image_generators([10, 11, 12]), steps=5, chunk_size=3)
    assert torch.equal(alone.tokens[0], batched.tokens[1])
    assert torch.equal(alone.commit_step[0], batched.commit_step[1])


def test_same_seed_same_image(backend):
    first = sample(backend, PROMPTS, image_generators([7, 8, 9]), steps=5)
    second = sample(backend, PROMPTS, image_generators([7, 8, 9]), steps=5)
    assert torch.equal(first.tokens, second.tokens)


def test_input_grid_rebuilt_from_commit_steps(backend):
    trajectory = sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=5)
    first = trajectory.input_tokens(0)
    assert (first == backend.mask_token_id).all()
    third = trajectory.input_tokens(3).flatten(1)
    committed_before = trajectory.commit_step < 3
    assert torch.equal(third[committed_before], trajectory.tokens[committed_before])
    assert (third[~committed_before] == backend.mask_token_id).all()


def test_recomputed_log_probs_equal_rollout(backend):
    steps = 5
    trajectory = sample(backend, PROMPTS, image_generators([3, 4, 5]), steps=steps, chunk_size=3)
    uncond = backend.encode_prompts([""])
    cond = backend.encode_prompts(PROMPTS)
    for step in range(steps):
        logp, _ = committed_log_prob(backend, trajectory, step, slice(0, 3), cond, uncond)
        assert torch.equal(logp, trajectory.model_logp[:, step])


def test_large_remask_temperature_never_remasks_committed(backend):
    default = backend.default_schedule(6)
    schedule = type(default)(default.mask_ratio, default.sample_temperature, torch.full((6,), 1e6), default.guidance)
    trajectory = sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=6, schedule=schedule)
    assert (trajectory.commit_step != NOT_COMMITTED).all()
    for step in range(6):
        assert (trajectory.committed_at(step).sum(-1) >= 1).all()


def test_policy_mean_equals_default_schedule(backend):
    default = backend.default_schedule(12)
    policy = SchedulePolicy(default)
    mean = policy.mean_schedule().as_actions()
    expected = default.as_actions()
    # The last re-mask temperature of the default is 0, which the softplus map can only approach.
    assert torch.allclose(mean[:, [0, 1, 3]], expected[:, [0, 1, 3]], atol=1e-5)
    assert torch.allclose(mean[:, 2], expected[:, 2], atol=2e-3)


def test_policy_log_prob_ignores_last_mask_ratio(backend):
    policy = SchedulePolicy(backend.default_schedule(4))
    raw = policy.mean_raw(2).clone()
    base = policy.log_prob(raw)
    raw[:, -1, 0] += 5.0
    assert torch.equal(policy.log_prob(raw), base)


def test_policy_rejects_unknown_knob(backend):
    with pytest.raises(ValueError, match="unknown schedule knobs"):
        SchedulePolicy(backend.default_schedule(4), learn=("mask_ratio", "top_k"))


def test_sampled_actions_stay_valid(backend):
    policy = SchedulePolicy(backend.default_schedule(6), init_std=2.0)
    trajectory = sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=6, schedule=policy)
    actions = trajectory.actions
    assert ((actions[:, :-1, 0] > 0) & (actions[:, :-1, 0] < 1)).all()
    assert (actions[:, -1, 0] == 0).all()
    assert (actions[..., 1:] > 0).all()
    assert torch.equal(trajectory.schedule_logp, policy.log_prob(trajectory.raw_actions))


def test_unconstrained_map_round_trips():
    actions = torch.tensor([[0.3, 1.0, 2.0, 10.0], [0.9, 0.5, 0.01, 1.0]])
    assert torch.allclose(to_constrained(to_unconstrained(actions)), actions, atol=1e-5)
    assert len(KNOBS) == 4


def test_sampler_rejects_bad_arguments(backend):
    with pytest.raises(ValueError, match="one generator per image"):
        sample(backend, PROMPTS, image_generators([1]), steps=3)
    with pytest.raises(ValueError, match="invalid number of steps 0"):
        sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=0)


def test_bf16_autocast_gives_float32_step_logits(backend, monkeypatch):
    from cogrpo.sampling import sampler

    monkeypatch.setattr(backend, "compute_dtype", torch.bfloat16)
    transformer_dtypes, step_dtypes = set(), set()
    hook = backend.transformer.register_forward_hook(lambda module, args, output: transformer_dtypes.add(output.dtype))
    real_log_probs = sampler._scaled_token_log_probs

    def recording_log_probs(scaled_logits, tokens):
        step_dtypes.add(scaled_logits.dtype)
        return real_log_probs(scaled_logits, tokens)

    monkeypatch.setattr(sampler, "_scaled_token_log_probs", recording_log_probs)
    try:
        trajectory = sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=4)
    finally:
        hook.remove()

    assert transformer_dtypes == {torch.bfloat16}
    assert step_dtypes == {torch.float32}
    assert (trajectory.commit_step != NOT_COMMITTED).all()
    assert torch.isfinite(trajectory.model_logp).all()
    uncond = backend.encode_prompts([""])
    cond = backend.encode_prompts(PROMPTS)
    for step in range(4):
        logp, _ = committed_log_prob(backend, trajectory, step, slice(0, 3), cond, uncond)
        assert torch.allclose(logp, trajectory.model_logp[:, step], atol=1e-4), step


def test_more_steps_than_tokens_rejected(backend):
    tokens = backend.grid[0] * backend.grid[1]
    with pytest.raises(ValueError, match=f"at most {tokens} steps"):
        sample(backend, ["a red circle"], image_generators([0]), steps=tokens + 1)


def test_guidance_one_skips_unconditional_pass(backend):
    import dataclasses

    batch_sizes = []
    hook = backend.transformer.register_forward_hook(lambda module, args, output: batch_sizes.append(output.shape[0]))
    schedule = backend.default_schedule(3)
    try:
        plain = dataclasses.replace(schedule, guidance=torch.ones(3))
        sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=3, schedule=plain)
        assert batch_sizes == [3, 3, 3]
        batch_sizes.clear()
        mixed = dataclasses.replace(schedule, guidance=torch.tensor([1.0, 2.0, 1.0]))
        sample(backend, PROMPTS, image_generators([1, 2, 3]), steps=3, schedule=mixed)
        assert batch_sizes == [3, 6, 3]
    finally:
        hook.remove()

"""Bounded scorer calls: timeouts, retries, per-sample failures, and their wiring into training and evaluation."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np
import pytest

from cogrpo.rewards.base import Scorer, ScoreResult
from cogrpo.rewards.guard import GuardedScorer

IMAGES = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (10, 20, 30, 40, 50)]
PROMPTS = ["a", "b", "c", "d", "e"]


class BrightnessScorer(Scorer):
    """Mean brightness in [0, 1], counting its batch calls."""

    name = "brightness"

    def __init__(self):
        self.calls = 0

    def score_batch(self, images, prompts, metadata):
        self.calls += 1
        return ScoreResult(scores=np.asarray([im.mean() / 255 for im in images], dtype=np.float32))


class SlowScorer(BrightnessScorer):
    """Blocks every call until ``release`` is set."""

    name = "slow"

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def score_batch(self, images, prompts, metadata):
        self.release.wait(30)
        return super().score_batch(images, prompts, metadata)


class FlakyScorer(BrightnessScorer):
    """Raises on its first ``failures`` calls, then scores."""

    name = "flaky"

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def score_batch(self, images, prompts, metadata):
        if self.calls < self.failures:
            self.calls += 1
            raise ConnectionError("scoring service unavailable")
        return super().score_batch(images, prompts, metadata)


class PoisonedScorer(BrightnessScorer):
    """Raises for every batch that contains the prompt ``bad``."""

    name = "poisoned"

    def __init__(self, bad: str):
        super().__init__()
        self.bad = bad

    def score_batch(self, images, prompts, metadata):
        if self.bad in prompts:
            self.calls += 1
            raise RuntimeError(f"cannot score prompt {self.bad!r}")
        return super().score_batch(images, prompts, metadata)


def test_slow_scorer_times_out(caplog):
    inner = SlowScorer()
    guarded = GuardedScorer(inner, timeout_s=0.2, retries=2, backoff_s=0.01)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.guard"):
        result = guarded.score_detailed(IMAGES[:3], PROMPTS[:3])
    elapsed = time.perf_counter() - start
    inner.release.set()
    assert elapsed < 2.0
    assert np.isnan(result.scores).all()
    assert result.errors == ["timed out after 0.2 s"] * 3
    assert "timed out after 0.2 s" in caplog.text


def test_scorer_busy_after_timeout_fails_fast():
    inner = SlowScorer()
    guarded = GuardedScorer(inner, timeout_s=0.2, retries=0)
    guarded.score_detailed(IMAGES[:1], PROMPTS[:1])
    start = time.perf_counter()
    busy = guarded.score_detailed(IMAGES[1:2], PROMPTS[1:2])
    assert time.perf_counter() - start < 0.1
    assert "still running a call that timed out" in busy.errors[0]
    inner.release.set()
    guarded._abandoned.join(5)
    recovered = guarded.score_detailed(IMAGES[1:2], PROMPTS[1:2])
    assert recovered.scores[0] == pytest.approx(20 / 255)


def test_transient_error_is_retried(caplog):
    inner = FlakyScorer(failures=2)
    guarded = GuardedScorer(inner, timeout_s=5.0, retries=2, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.guard"):
        result = guarded.score_detailed(IMAGES, PROMPTS)
    assert inner.calls == 3
    np.testing.assert_allclose(result.scores, [v / 255 for v in (10, 20, 30, 40, 50)], rtol=1e-6)
    assert result.errors == [None] * 5
    assert caplog.text.count("ConnectionError: scoring service unavailable") == 2
    assert "retry 2 of 2" in caplog.text


def test_retries_without_timeout_run_in_caller_thread():
    inner = FlakyScorer(failures=1)
    guarded = GuardedScorer(inner, timeout_s=0, retries=1, backoff_s=0.0)
    result = guarded.score_detailed(IMAGES[:2], PROMPTS[:2])
    assert guarded.timeout_s is None
    assert inner.calls == 2
    assert np.isfinite(result.scores).all()


def test_bad_sample_is_isolated(caplog):
    inner = PoisonedScorer(bad="d")
    guarded = GuardedScorer(inner, timeout_s=5.0, retries=1, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.guard"):
        result = guarded.score_detailed(IMAGES, PROMPTS)
    assert np.isnan(result.scores[3])
    assert result.errors[3] == "RuntimeError: cannot score prompt 'd'"
    for index in (0, 1, 2, 4):
        assert result.scores[index] == pytest.approx(IMAGES[index].mean() / 255)
        assert result.errors[index] is None
    assert "failed after 2 attempts" in caplog.text
    assert "image 3 of the batch gets no score" in caplog.text


def test_failing_batch_without_split_is_all_nan():
    guarded = GuardedScorer(PoisonedScorer(bad="a"), timeout_s=5.0, retries=0, split=False)
    result = guarded.score_detailed(IMAGES[:3], PROMPTS[:3])
    assert np.isnan(result.scores).all()
    assert result.errors == ["RuntimeError: cannot score prompt 'a'"] * 3


def test_wrong_score_count_is_a_failure():
    class ShortScorer(BrightnessScorer):
        def score_detailed(self, images, prompts, metadata=None):
            return ScoreResult(scores=np.zeros(len(images) + 1, dtype=np.float32))

    result = GuardedScorer(ShortScorer(), timeout_s=5.0, retries=0, split=False).score_detailed(IMAGES[:2], PROMPTS[:2])
    assert np.isnan(result.scores).all()
    assert "returned scores of shape (3,) for 2 images" in result.errors[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"timeout_s": -1.0}, "invalid timeout_s=-1.0"), ({"retries": -1}, "invalid retries=-1"),
     ({"backoff_s": -0.5}, "invalid backoff_s=-0.5")],
)
def test_guard_rejects_invalid_settings(options, message):
    with pytest.raises(ValueError, match=message):
        GuardedScorer(BrightnessScorer(), **options)


def test_wrap_replaces_settings_of_guarded_scorer():
    inner = BrightnessScorer()
    first = GuardedScorer.wrap(inner, timeout_s=1.0, retries=0)
    second = GuardedScorer.wrap(first, timeout_s=3.0, retries=4)
    assert second.inner is inner
    assert (second.timeout_s, second.retries, second.name) == (3.0, 4, "brightness")


def test_trainer_guards_reward_calls(random_shapes_dir):
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import build_backend
    from cogrpo.rl.trainer import CoGRPOTrainer

    import torch

    config = TrainConfig(model_path=str(random_shapes_dir), prompts_per_iteration=1, group_size=2, steps=2, chunk_size=2,
                         device="cpu", final_eval=False, checkpoint_every=0, reward_timeout_s=7.5, reward_retries=1)
    inner = PoisonedScorer(bad="never used")
    trainer = CoGRPOTrainer(config, build_backend(config, torch.device("cpu")), inner)
    assert isinstance(trainer.reward, GuardedScorer)
    assert trainer.reward.inner is inner
    assert (trainer.reward.timeout_s, trainer.reward.retries) == (7.5, 1)


def test_eval_scoring_reports_failed_samples(tmp_path, random_shapes_dir, caplog):
    from cogrpo.evaluation.runner import EvalRequest, run_benchmark
    from cogrpo.evaluation.suites import shapes_suite
    from cogrpo.models.shapes import load_shapes_backend

    suite = shapes_suite()
    request = EvalRequest(steps=2, seed=5, limit=3, images_per_prompt=2, batch_size=6, score_retries=1)
    run_benchmark(suite, request, tmp_path, load_shapes_backend(random_shapes_dir))
    for path in tmp_path.glob("scores-*.jsonl"):
        path.unlink()
    bad_prompt = suite.entries[1]["prompt"]
    flaky_suite = dataclasses.replace(suite, make_scorer=lambda: PoisonedScorer(bad=bad_prompt))
    with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.guard"):
        result = run_benchmark(flaky_suite, dataclasses.replace(request, score_only=True), tmp_path)
    failed = [(r["index"], r["sample"]) for r in result["samples"] if r["score"] is None]
    assert failed == [(1, 0), (1, 1)]
    assert all(f"cannot score prompt {bad_prompt!r}" in r["error"] for r in result["samples"] if r["index"] == 1)
    assert result["n_failed"] == 2
    assert "failed after 2 attempts" in caplog.text

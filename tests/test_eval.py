"""The evaluation runner: layout, resume, failures and sharding; and the tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cogrpo.evaluation.runner import EvalCounters, EvalRequest, run_benchmark
from cogrpo.evaluation.suites import shapes_suite
from cogrpo.models.shapes import load_shapes_backend


@pytest.fixture(scope="module")
def backend(random_shapes_dir):
    return load_shapes_backend(random_shapes_dir)


def _request(**kw):
    options = dict(steps=3, seed=5, limit=3, images_per_prompt=2, batch_size=4)
    options.update(kw)
    return EvalRequest(**options)


def _without_times(result):
    result = dict(result)
    result.pop("created_at")
    return result


def test_eval_writes_geneval_layout(tmp_path, backend):
    result = run_benchmark(shapes_suite(), _request(), tmp_path, backend)
    first = tmp_path / "images" / "00000"
    assert json.loads((first / "metadata.jsonl").read_text())["prompt"] == shapes_suite().entries[0]["prompt"]
    assert sorted(p.name for p in (first / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert result["n_samples"] == 6
    assert result["partial"] is True
    assert set(result["metrics"]) >= {"overall", "single_object"}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["metrics"] == result["metrics"]


def test_killed_eval_resumes_without_rework(tmp_path, backend, monkeypatch):
    reference = run_benchmark(shapes_suite(), _request(), tmp_path / "reference", backend)
    counters = EvalCounters()
    original = backend.decode
    calls = {"n": 0}

    def dying_decode(tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(tokens)

    monkeypatch.setattr(backend, "decode", dying_decode)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(shapes_suite(), _request(), tmp_path / "run", backend, counters=counters)
    monkeypatch.setattr(backend, "decode", original)
    assert counters.generated == 4
    second = EvalCounters()
    result = run_benchmark(shapes_suite(), _request(), tmp_path / "run", backend, counters=second)
    assert second.generated == 2
    assert second.reused_images == 4
    assert counters.scored + second.scored == 6
    third = EvalCounters()
    again = run_benchmark(shapes_suite(), _request(), tmp_path / "run", backend, counters=third)
    assert third.generated == 0
    assert third.scored == 0
    assert _without_times(result) | {"git_commit": None} == _without_times(reference) | {"git_commit": None}
    assert _without_times(again) == _without_times(result)


def test_score_only_counts_missing_images(tmp_path, backend):
    run_benchmark(shapes_suite(), _request(), tmp_path, backend)
    (tmp_path / "images" / "00001" / "samples" / "00000.png").unlink()
    for path in tmp_path.glob("scores-*.jsonl"):
        path.unlink()
    result = run_benchmark(shapes_suite(), _request(score_only=True), tmp_path)
    assert result["n_failed"] == 1
    missing = [r for r in result["samples"] if r.get("error") == "missing image"]
    assert [(r["index"], r["sample"]) for r in missing] == [(1, 0)]


def test_corrupt_image_is_a_counted_failure(tmp_path, backend):
    run_benchmark(shapes_suite(), _request(), tmp_path, backend)
    (tmp_path / "images" / "00002" / "samples" / "00001.png").write_bytes(b"not a png")
    result = run_benchmark(shapes_suite(), _request(score_only=True), tmp_path)
    assert result["n_failed"] == 1


def test_failed_scores_are_retried_on_rerun(tmp_path, backend):
    import dataclasses

    import numpy as np

    from cogrpo.rewards.base import ScoreResult
    from cogrpo.rewards.shapes import StrictShapesReward

    class FailingOnce(StrictShapesReward):
        def score_batch(self, images, prompts, metadata):
            result = super().score_batch(images, prompts, metadata)
            scores = result.scores.copy()
            scores[0] = np.nan
            errors = list(result.errors)
            errors[0] = "simulated scorer failure"
            return ScoreResult(scores=scores, errors=errors, details=result.details)

    suite = shapes_suite()
    failing = dataclasses.replace(suite, make_scorer=FailingOnce)
    first = run_benchmark(failing, _request(batch_size=8, score_timeout_s=None, score_retries=0), tmp_path, backend)
    assert first["n_failed"] == 1
    counters = EvalCounters()
    second = run_benchmark(suite, _request(), tmp_path, backend, counters=counters)
    assert counters.scored == 1
    assert counters.reused_scores == 5
    assert second["n_failed"] == 0


def test_two_processes_match_one(tmp_path, random_shapes_dir):
    common = ["eval", "--model-path", str(random_shapes_dir), "--steps", "3", "--limit", "5", "--images-per-prompt", "1",
              "--seed", "2", "--device", "cpu"]
    single = tmp_path / "single"
    # Each launched process runs one thread; the single process does too, so that float rounding
    # (and hence every sampled token) is the same in both runs.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cogrpo", *common, "--out", str(single)], check=True, capture_output=True,
                   timeout=600, env=env)
    double = tmp_path / "double"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29631", "-m", "cogrpo"]
    out = subprocess.run([*launch, *common, "--out", str(double)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    one = json.loads((single / "result.json").read_text())
    two = json.loads((double / "result.json").read_text())
    assert two["world_size"] == 2
    assert two["metrics"] == one["metrics"]
    strip = lambda records: [{k: v for k, v in r.items()} for r in records]  # noqa: E731
    assert strip(two["samples"]) == strip(one["samples"])


def test_tables_check_detects_stale_tables(tmp_path, backend):
    from cogrpo.evaluation.tables import build_tables, check_tables

    results = tmp_path / "results"
    run_dir = tmp_path / "run"
    result = run_benchmark(shapes_suite(), _request(), run_dir, backend)
    result["partial"] = False
    result["model"] = {"label": "base"}
    results.mkdir()
    (results / "base.json").write_text(json.dumps(result))
    build_tables(results)
    assert check_tables(results) == []
    result["metrics"]["overall"] = 0.123456
    (results / "base.json").write_text(json.dumps(result))
    assert check_tables(results) != []


def test_partial_results_stay_out_of_tables(tmp_path, backend):
    from cogrpo.evaluation.tables import benchmark_tables

    result = run_benchmark(shapes_suite(), _request(), tmp_path / "run", backend)
    assert result["partial"]
    assert benchmark_tables([result]) == {}

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

    # The same scorer class in both runs (a rerun with another scorer is rejected), failing only in the first.
    failing_now = {"value": True}

    class FailingOnce(StrictShapesReward):
        def score_batch(self, images, prompts, metadata):
            result = super().score_batch(images, prompts, metadata)
            if not failing_now["value"]:
                return result
            scores = result.scores.copy()
            scores[0] = np.nan
            errors = list(result.errors)
            errors[0] = "simulated scorer failure"
            return ScoreResult(scores=scores, errors=errors, details=result.details)

    suite = shapes_suite()
    failing = dataclasses.replace(suite, make_scorer=FailingOnce)
    first = run_benchmark(failing, _request(batch_size=8, score_timeout_s=None, score_retries=0), tmp_path, backend)
    assert first["n_failed"] == 1
    failing_now["value"] = False
    counters = EvalCounters()
    second = run_benchmark(failing, _request(), tmp_path, backend, counters=counters)
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


def test_result_records_samples_hash_and_scorer(tmp_path, backend):
    import dataclasses

    suite = shapes_suite()
    result = run_benchmark(suite, _request(), tmp_path / "original", backend)

    assert len(result["samples_sha256"]) == 64
    assert result["batch_size"] == 4
    assert result["scorer"]["class"] == "cogrpo.rewards.shapes.StrictShapesReward"
    assert result["scorer"]["version"] == suite.make_scorer.version
    assert result["scorer"]["weights"] == []
    assert result["determinism"]["deterministic"] is False
    assert result["incomplete"] is False
    assert result["allow_partial"] is False
    saved = json.loads((tmp_path / "original" / "result.json").read_text())
    assert saved["samples_sha256"] == result["samples_sha256"]

    again = run_benchmark(suite, _request(batch_size=3), tmp_path / "again", backend)
    assert again["samples_sha256"] == result["samples_sha256"]

    entries = [dict(entry) for entry in suite.entries]
    entries[1]["prompt"] = entries[1]["prompt"] + " on grey"
    edited = run_benchmark(dataclasses.replace(suite, entries=entries), _request(), tmp_path / "edited", backend)
    assert edited["samples_sha256"] != result["samples_sha256"]


def test_null_metric_gets_reason(tmp_path, backend):
    import dataclasses

    import numpy as np

    from cogrpo.evaluation.suites import mean_aggregate
    from cogrpo.rewards.base import ScoreResult, Scorer

    class AlwaysFails(Scorer):
        name = "always-fails"

        def score_batch(self, images, prompts, metadata):
            return ScoreResult(scores=np.full(len(images), np.nan, dtype=np.float32), errors=["simulated"] * len(images))

    suite = dataclasses.replace(shapes_suite(), make_scorer=AlwaysFails, aggregate=mean_aggregate)
    run_benchmark(suite, _request(score_timeout_s=None, score_retries=0), tmp_path, backend)

    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["metrics"]["overall"] is None
    assert "none of its samples was scored" in saved["null_metrics"]["overall"]
    assert saved["n_failed"] == 6
    assert saved["incomplete"] is True


def _cli(*args):
    from typer.testing import CliRunner

    from cogrpo.cli import app

    return CliRunner().invoke(app, list(args))


def test_eval_cli_exits_nonzero_on_failed_samples(tmp_path, random_shapes_dir):
    common = ["eval", "--model-path", str(random_shapes_dir), "--steps", "2", "--limit", "2", "--images-per-prompt", "1",
              "--device", "cpu", "--out", str(tmp_path)]
    first = _cli(*common)
    assert first.exit_code == 0, first.output
    (tmp_path / "images" / "00001" / "samples" / "00000.png").write_bytes(b"not a png")

    failed = _cli(*common, "--score-only")

    assert failed.exit_code == 5, failed.output
    assert "1 of 2 samples failed" in " ".join(failed.output.split())
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["n_failed"] == 1
    assert saved["incomplete"] is True
    assert saved["allow_partial"] is False

    accepted = _cli(*common, "--score-only", "--allow-partial")

    assert accepted.exit_code == 0, accepted.output
    assert "accepted because of --allow-partial" in " ".join(accepted.output.split())
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["n_failed"] == 1
    assert saved["allow_partial"] is True


def _write_result(folder: Path, name: str, prompt_sha256: str) -> None:
    result = {"benchmark": {"name": "imagereward", "version": "1", "prompt_sha256": prompt_sha256},
              "model": {"label": "base"}, "schedule": "default", "steps": 12, "seed": 0, "partial": False,
              "n_failed": 0, "metrics": {"overall": 0.5}}
    (folder / name).write_text(json.dumps(result))


def test_tables_reject_edited_prompt_file(tmp_path):
    import hashlib

    from cogrpo.evaluation.official_suites import imagereward_suite

    original = Path(__file__).resolve().parent / "fixtures" / "imagereward" / "benchmark-prompts.json"
    prompts = json.loads(original.read_text())
    prompts[1]["prompt"] = "a lighthouse on a cliff at dawn, oil painting"
    edited = tmp_path / "benchmark-prompts.json"
    edited.write_text(json.dumps(prompts, indent=4))
    suites = [imagereward_suite(path, prompt_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
              for path in (original, edited)]
    assert suites[0].version == suites[1].version
    assert suites[0].prompt_sha256 != suites[1].prompt_sha256

    results = tmp_path / "results"
    results.mkdir()
    _write_result(results, "original.json", suites[0].prompt_sha256)
    _write_result(results, "edited.json", suites[1].prompt_sha256)

    for extra in ([], ["--check"]):
        refused = _cli("tables", "--results", str(results), *extra)
        text = " ".join(refused.output.split())
        assert refused.exit_code == 2, refused.output
        assert "imagereward v1 has results with 2 prompt files" in text
        assert "edited.json" in text
        assert "original.json" in text
    assert not (results / "tables").exists()

    forced = _cli("tables", "--results", str(results), "--force")
    assert forced.exit_code == 0, forced.output
    assert len(list((results / "tables").glob("imagereward-v1-*.md"))) == 2


def test_tables_accept_one_prompt_file_per_version(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _write_result(results, "seed0.json", "a" * 64)
    _write_result(results, "seed1.json", "a" * 64)
    partial = {"benchmark": {"name": "imagereward", "version": "1", "prompt_sha256": "b" * 64}, "partial": True,
               "metrics": {"overall": 0.1}}
    (results / "limited.json").write_text(json.dumps(partial))

    built = _cli("tables", "--results", str(results))

    assert built.exit_code == 0, built.output
    assert len(list((results / "tables").glob("imagereward-v1-*.md"))) == 1


def test_tables_name_malformed_result_file(tmp_path):
    from cogrpo.evaluation.tables import load_results

    (tmp_path / "broken.json").write_text("{\n")
    with pytest.raises(ValueError, match="broken.json"):
        load_results(tmp_path)


def test_score_only_without_images_fails_early(tmp_path):
    result = _cli("eval", "--score-only", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "found no images" in " ".join(result.output.split())
    assert not (tmp_path / "result.json").exists()


def test_score_exits_nonzero_when_all_images_fail(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    metadata = tmp_path / "meta.json"
    metadata.write_text('{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"}')
    result = _cli("score", "--reward", "shapes", "--prompt", "a red circle", "--metadata", str(metadata), str(bad))
    assert result.exit_code == 1
    assert "every image failed" in " ".join(result.output.split())

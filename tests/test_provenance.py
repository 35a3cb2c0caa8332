"""Result JSON provenance: declared weight pins of every scorer, and SHA-256 of the weight files actually loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cogrpo import weight_digests
from cogrpo.benchmarks import dpg, geneval_detectors
from cogrpo.evaluation.official_suites import dpg_suite
from cogrpo.evaluation.runner import EvalRequest, run_benchmark, scorer_description
from cogrpo.evaluation.suites import shapes_suite
from cogrpo.rewards.base import Scorer, ScoreResult
from cogrpo.rewards.clip_score import DEFAULT_WEIGHTS as CLIP_WEIGHTS
from cogrpo.rewards.geneval import GenEvalScorer
from cogrpo.rewards.hps import HPS_WEIGHTS, HPSScorer

TESTS = Path(__file__).parent
DPG_FIXTURE = TESTS / "fixtures" / "dpg" / "dpg_bench.csv"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pins(specs) -> list[dict]:
    return [{"repo_id": s.repo_id, "filename": s.filename, "revision": s.revision, "sha256": s.sha256} for s in specs]


# --------------------------------------------------------------------------- streaming file digests


def test_file_sha256_streams_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(weight_digests, "HASH_BLOCK_BYTES", 7)
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 5)

    assert weight_digests.file_sha256(path) == _sha256(path)


def test_file_sha256_hashes_once_per_process(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"first bytes")
    first = weight_digests.file_sha256(path)
    stat = path.stat()
    # Same size and modification time: the cached digest is returned without reading the file.
    path.write_bytes(b"other bytes")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weight_digests.file_sha256(path) == first

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert weight_digests.file_sha256(path) == _sha256(path)


def test_folder_digests_list_weight_files_only(tmp_path):
    for name in ("a/model.safetensors", "b/pytorch_model.bin", "c.pt", "d.pth", "e.ckpt", "config.json", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())

    digests = weight_digests.folder_weight_sha256(tmp_path)

    assert sorted(digests) == ["a/model.safetensors", "b/pytorch_model.bin", "c.pt", "d.pth", "e.ckpt"]
    for relative, digest in digests.items():
        assert digest == _sha256(tmp_path / relative)
    assert weight_digests.folder_weight_sha256(tmp_path / "missing") == {}


def test_folder_digests_follow_snapshot_links(tmp_path):
    blob = tmp_path / "blobs" / "0123"
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    snapshot = tmp_path / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blob)

    assert weight_digests.folder_weight_sha256(snapshot) == {"model.safetensors": _sha256(blob)}
    assert weight_digests.weight_sha256(snapshot / "model.safetensors") == {
        str(snapshot / "model.safetensors"): _sha256(blob)
    }


# --------------------------------------------------------------------------- base model


def test_model_info_lists_weight_files(random_shapes_dir):
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import model_info

    config = TrainConfig(model="shapes", model_path=str(random_shapes_dir))
    info = model_info(config, SimpleNamespace(name="shapes", revision="sha256:x"))

    expected = {p.relative_to(random_shapes_dir).as_posix(): _sha256(p) for p in random_shapes_dir.rglob("*.safetensors")}
    assert expected
    assert info["weight_sha256"] == expected


def test_random_weights_record_no_files():
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import model_info

    config = TrainConfig(model="shapes", random_weights=True)

    assert model_info(config, SimpleNamespace(name="shapes", revision="random"))["weight_sha256"] == {}


def test_model_info_uses_backend_weights_dir(tmp_path):
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import model_info

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"hub weights")
    (tmp_path / "transformer" / "config.json").write_text("{}")
    config = TrainConfig(model="amused-256")
    backend = SimpleNamespace(name="amused-256", revision="b" * 40, weights_dir=tmp_path)

    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    assert model_info(config, backend)["weight_sha256"] == {
        "transformer/diffusion_pytorch_model.safetensors": _sha256(weights)
    }


def test_cli_eval_records_model_weight_sha256(tmp_path, random_shapes_dir):
    out = subprocess.run(
        [sys.executable, "-m", "cogrpo", "eval", "--model-path", str(random_shapes_dir), "--steps", "2", "--limit", "1",
         "--images-per-prompt", "1", "--device", "cpu", "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr

    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    recorded = result["model"]["weight_sha256"]
    files = sorted(random_shapes_dir.rglob("*.safetensors"))
    assert sorted(recorded) == [p.relative_to(random_shapes_dir).as_posix() for p in files]
    for path in files:
        assert recorded[path.relative_to(random_shapes_dir).as_posix()] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result["scorer"]["weight_sha256"] == {}


# --------------------------------------------------------------------------- declared scorer pins


def test_geneval_result_declares_detector_and_clip_pins():
    suite = dataclasses.replace(shapes_suite(), make_scorer=partial(GenEvalScorer, strict=True, detector="mask2former"))
    assert scorer_description(suite)["weights"] == _pins([geneval_detectors.DEFAULT_MASK2FORMER_WEIGHTS, CLIP_WEIGHTS])
    assert scorer_description(suite)["weights"][0]["revision"] == geneval_detectors.DEFAULT_MASK2FORMER_REVISION

    suite.make_scorer = partial(GenEvalScorer, strict=True, detector="mmdet", detector_weights="x.pth")
    assert scorer_description(suite)["weights"] == _pins([geneval_detectors.MMDET_WEIGHTS, CLIP_WEIGHTS])

    suite.make_scorer = partial(GenEvalScorer, strict=True, detector="shapes")
    assert scorer_description(suite)["weights"] == []


def test_dpg_result_declares_vqa_pins():
    digest = _sha256(DPG_FIXTURE)

    blip = scorer_description(dpg_suite(DPG_FIXTURE, prompt_sha256=digest, vqa="blip"))
    mplug = scorer_description(dpg_suite(DPG_FIXTURE, prompt_sha256=digest, vqa="mplug"))

    assert blip["class"] == "cogrpo.benchmarks.dpg.DPGScorer"
    assert blip["weights"] == _pins([dpg.BLIP_VQA_WEIGHTS])
    assert blip["weights"][0]["revision"] == dpg.BLIP_VQA_REVISION
    assert mplug["weights"] == _pins([dpg.MPLUG_VQA_WEIGHTS])


def test_hps_declared_pins_follow_version():
    suite = dataclasses.replace(shapes_suite(), make_scorer=partial(HPSScorer, version="v2.0"))
    assert scorer_description(suite)["weights"] == _pins([HPS_WEIGHTS["v2.0"]])

    suite.make_scorer = HPSScorer
    assert scorer_description(suite)["weights"] == _pins([HPS_WEIGHTS["v2.1"]])


# --------------------------------------------------------------------------- loaded scorer weights


class FileScorer(Scorer):
    """A scorer whose only weight is one local file: the score is its first byte."""

    name = "file"
    version = "1"

    def __init__(self, path: Path):
        self.value = float(path.read_bytes()[0])
        self.weight_paths = (path,)

    def score_batch(self, images, prompts, metadata):
        return ScoreResult(scores=np.full(len(images), self.value, dtype=np.float32))


@pytest.fixture(scope="module")
def shapes_backend(random_shapes_dir):
    from cogrpo.models.shapes import load_shapes_backend

    return load_shapes_backend(random_shapes_dir)


def _request(**options) -> EvalRequest:
    return EvalRequest(**{"steps": 2, "seed": 0, "limit": 2, "images_per_prompt": 1, "batch_size": 4, **options})


def test_scorer_records_local_weight_file(tmp_path, shapes_backend):
    weights = tmp_path / "scorer.pt"
    weights.write_bytes(b"\x07 scorer weights")
    suite = dataclasses.replace(shapes_suite(), make_scorer=partial(FileScorer, weights))

    result = run_benchmark(suite, _request(), tmp_path / "run", shapes_backend)

    assert result["scorer"]["weight_sha256"] == {str(weights): _sha256(weights)}
    # A rerun that scores nothing builds no scorer and still records the digest.
    again = run_benchmark(suite, _request(), tmp_path / "run", shapes_backend)
    assert again["scorer"]["weight_sha256"] == result["scorer"]["weight_sha256"]


def test_geneval_records_detector_weight_files(tmp_path, shapes_backend, tiny_mask2former):
    folder = tiny_mask2former
    factory = partial(GenEvalScorer, strict=True, detector="mask2former", detector_weights=str(folder), colors="palette",
                      device="cpu")
    suite = dataclasses.replace(shapes_suite(), make_scorer=factory)

    result = run_benchmark(suite, _request(limit=1), tmp_path / "run", shapes_backend)

    files = sorted(folder.rglob("*.safetensors"))
    assert files
    assert result["scorer"]["weight_sha256"] == {f"{folder}/{p.relative_to(folder).as_posix()}": _sha256(p) for p in files}
    assert result["scorer"]["weights"] == _pins([geneval_detectors.DEFAULT_MASK2FORMER_WEIGHTS])

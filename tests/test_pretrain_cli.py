"""Pretraining smoke runs and the real ``cogrpo`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cogrpo.models.shapes import weights_available


def test_short_vq_run_lowers_loss(tmp_path, monkeypatch):
    from cogrpo import pretrain

    monkeypatch.setattr(pretrain, "tokenizer_fidelity", lambda vq: {"overall": 0.0})
    config = pretrain.VQTrainConfig(steps=200, finetune_steps=20, pool_scenes=100)
    vq, stats = pretrain.train_vq(config, tmp_path / "vqvae", log_every=1000)
    assert stats["final_loss"] < stats["first_loss"] * 0.7
    # every distinct patch of the pool owns a codebook entry after initialisation
    assert stats["distinct_codes"] == stats["distinct_patches"] > 50
    reloaded = pretrain.comp.load_vq(tmp_path / "vqvae")
    assert type(reloaded) is type(vq)


def test_distinct_patches_of_a_drawn_world():
    import torch

    from cogrpo.pretrain import distinct_patches

    pixels = torch.zeros(2, 3, 8, 8)
    pixels[0, :, :4, :4] = 1.0
    pixels[1, 0, 4:, 4:] = 0.5
    patches = distinct_patches(pixels)
    assert patches.shape == (3, 3, 4, 4)  # background, white, half-red


@pytest.mark.skipif(not weights_available(), reason="the embedded weights are not in this checkout")
def test_committed_tokenizer_keeps_what_the_judge_sees():
    from cogrpo.models.shapes_components import ASSET_DIR, load_vq
    from cogrpo.pretrain import load_token_map, tokenizer_fidelity

    fidelity = tokenizer_fidelity(load_vq(ASSET_DIR / "vqvae").eval(), load_token_map(ASSET_DIR), images_per_prompt=1)
    assert fidelity["overall"] >= 0.95, fidelity


def test_short_mdm_run_lowers_loss(tmp_path, random_shapes_dir):
    import shutil

    from cogrpo.pretrain import MDMTrainConfig, train_mdm

    shutil.copytree(random_shapes_dir / "vqvae", tmp_path / "vqvae")
    _, _, history = train_mdm(MDMTrainConfig(steps=40, batch_size=16, warmup_steps=5, save_every=40), tmp_path, log_every=1000)
    assert np.mean(history[-10:]) < np.mean(history[:10]) - 0.3
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "token_map.json").exists()


def _cogrpo(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cogrpo", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_help_everywhere():
    for command in ([], ["train"], ["eval"], ["sample"], ["pretrain"], ["score"], ["tables"], ["list"]):
        out = _cogrpo(*command, "--help")
        assert out.returncode == 0, out.stderr
        assert "Usage" in out.stdout


def test_cli_list_shows_entries():
    out = _cogrpo("list")
    assert out.returncode == 0, out.stderr
    for name in ("shapes", "amused-256", "meissonic", "hps", "imagereward", "dpg"):
        assert name in out.stdout


@pytest.mark.skipif(not weights_available(), reason="the embedded weights are not in this checkout")
def test_cli_sample_writes_images(tmp_path):
    out = _cogrpo("sample", "--prompt", "a photo of a red circle", "--n", "2", "--steps", "4", "--out", str(tmp_path), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000-000.png", "000-001.png", "grid.png"]
    assert json.loads((tmp_path / "prompts.json").read_text())["n"] == 2


def test_cli_sample_replaces_earlier_sample(tmp_path, random_shapes_dir):
    common = ("--steps", "2", "--out", str(tmp_path), "--device", "cpu", "--model-path", str(random_shapes_dir))
    first = _cogrpo("sample", "--prompt", "a photo of a red circle", "--prompt", "a photo of a cross", "--n", "2", *common)
    assert first.returncode == 0, first.stderr
    (tmp_path / "notes.txt").write_text("mine")
    second = _cogrpo("sample", "--prompt", "", "--n", "1", *common)
    assert second.returncode == 0, second.stderr
    assert "prompt 0 is empty" in " ".join(second.stdout.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000-000.png", "grid.png", "notes.txt", "prompts.json"]


def test_cli_sample_keeps_user_files(tmp_path, random_shapes_dir):
    (tmp_path / "grid.png").write_bytes(b"my own grid")
    (tmp_path / "000-000.png").write_bytes(b"my own image")

    out = _cogrpo("sample", "--prompt", "a photo of a red circle", "--n", "1", "--steps", "2", "--out", str(tmp_path),
                  "--device", "cpu", "--model-path", str(random_shapes_dir))

    assert out.returncode == 2
    assert "which no earlier `cogrpo sample` wrote" in " ".join(out.stdout.split())
    assert (tmp_path / "grid.png").read_bytes() == b"my own grid"
    assert (tmp_path / "000-000.png").read_bytes() == b"my own image"
    assert not (tmp_path / "prompts.json").exists()


def test_cli_sample_warns_about_truncated_prompt(tmp_path, random_shapes_dir):
    long_prompt = " ".join(["a photo of a red circle"] * 5)
    out = _cogrpo("sample", "--prompt", long_prompt, "--n", "1", "--steps", "2", "--out", str(tmp_path), "--device", "cpu",
                  "--model-path", str(random_shapes_dir))
    assert out.returncode == 0, out.stderr
    assert "the text encoder reads the first 16" in " ".join(out.stdout.split())


def test_cli_eval_then_tables(tmp_path, random_shapes_dir):
    out = _cogrpo("eval", "--model-path", str(random_shapes_dir), "--steps", "2", "--limit", "2", "--images-per-prompt", "1",
                  "--device", "cpu", "--out", str(tmp_path / "eval"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["partial"] is True
    assert result["n_samples"] == 2


def test_cli_unknown_benchmark_fails(tmp_path):
    out = _cogrpo("eval", "--bench", "shapez", "--out", str(tmp_path))
    assert out.returncode == 2
    assert "Did you mean 'shapes'" in " ".join(out.stdout.split())


def test_cli_score_reports_bad_image(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"truncated")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}))
    out = _cogrpo("score", "--reward", "shapes", "--prompt", "a photo of a circle", "--metadata", str(meta), str(good), str(bad))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "nan" in text
    assert "0.000000" in text


def test_reproduction_smoke_writes_tables(tmp_path, random_shapes_dir):
    from cogrpo.evaluation.reproduce import ReproductionPlan, reproduce

    plan = ReproductionPlan(seeds=(0,), iterations=1, train_steps=2, sweep_steps=(2,), images_per_prompt=1,
                            model_path=str(random_shapes_dir),
                            train_overrides={"prompts_per_iteration": 2, "group_size": 2, "chunk_size": 4})
    written = reproduce(plan, tmp_path / "results" / "shapes", tmp_path / "work", tmp_path / "results")
    names = {p.name for p in written}
    assert "reported.md" in names
    table = next(p for p in written if p.name.startswith("shapes-") and p.suffix == ".md").read_text()
    for label in ("base", "co-grpo", "naive-grpo", "schedule-only"):
        assert f"| {label} |" in table
    assert "learned" in table

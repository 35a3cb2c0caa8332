"""The hps, imagereward and dpg benchmark suites: prompt sources, layouts, runs, grid resume and score-only.

Prompt files are hand-written fixtures in the official schemas (``fixtures/``) or
are written by the tests. Unmodified copies of the official files are read only when
they sit in ``shared/benchmarks`` next to the repository. Images come from a tiny
random shapes model. Each suite runs once with its real scorer class on tiny random
weights, built as in test_hps.py, test_imagereward.py and test_dpg.py. DPG tests
that check exact numbers use a fake VQA model that answers "yes" to every question.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogrpo.benchmarks import dpg
from cogrpo.benchmarks.download import ChecksumMismatchError
from cogrpo.evaluation import runner
from cogrpo.evaluation.layouts import compose_grid
from cogrpo.evaluation.official_suites import (
    IMAGEREWARD_PROMPTS_FILE,
    dpg_legacy_suite,
    dpg_suite,
    hpdv2_prompt_sha256,
    hps_suite,
    imagereward_suite,
)
from cogrpo.evaluation.runner import EvalCounters, EvalRequest, run_benchmark
from cogrpo.evaluation.tables import benchmark_tables, reward_alignment_table
from cogrpo.models.shapes import load_shapes_backend
from cogrpo.rewards.hps import HPDV2_PROMPTS_PER_STYLE, HPDV2_STYLES, HPSScorer, MissingPromptsError
from cogrpo.rewards.imagereward import ImageRewardConfig, ImageRewardScorer

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
IMAGEREWARD_FIXTURE = FIXTURES / "imagereward" / "benchmark-prompts.json"
DPG_FIXTURE = FIXTURES / "dpg" / "dpg_bench.csv"
OFFICIAL_COPIES = TESTS.parent.parent / "shared" / "benchmarks"
OFFICIAL_IMAGEREWARD_PROMPTS = OFFICIAL_COPIES / "imagereward" / "benchmark-prompts.json"
DPG_ITEMS = ["cat_on_sofa", "dogs_with_sign", "bird_in_tree"]


def load_module(path: Path, name: str):
    """Import a helper module of the test suite by path, without running its tests."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hps_golden = load_module(TESTS / "data" / "make_hps_golden.py", "suite_tests_hps_golden")
imagereward_helpers = load_module(TESTS / "test_imagereward.py", "suite_tests_imagereward_helpers")
dpg_helpers = load_module(TESTS / "test_dpg.py", "suite_tests_dpg_helpers")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def request(**options) -> EvalRequest:
    settings = dict(steps=2, seed=3, batch_size=16)
    settings.update(options)
    return EvalRequest(**settings)


def copy_run(source: Path, target: Path) -> Path:
    """Copy a finished run's images (not its scores) so a test can change them."""
    shutil.copytree(source / "images", target / "images")
    return target


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Keep every download path offline, with empty caches, and fail any attempt to open a URL."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))

    def reject(*args, **kwargs):
        raise AssertionError("a test tried to open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", reject)


@pytest.fixture(scope="module")
def backend(random_shapes_dir):
    return load_shapes_backend(random_shapes_dir)


# --------------------------------------------------------------------------- tiny scorers


@pytest.fixture(scope="module")
def hps_scorer(tmp_path_factory) -> HPSScorer:
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("tiny_hps")
    open_clip.add_model_config(hps_golden.write_tiny_config(folder / "configs"))
    model = open_clip.create_model(hps_golden.TINY_MODEL_NAME, pretrained=None)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    checkpoint = folder / "tiny_hps.pt"
    torch.save({"state_dict": hps_golden.make_state_dict(shapes)}, checkpoint)
    return HPSScorer(checkpoint=checkpoint, model_name=hps_golden.TINY_MODEL_NAME, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def imagereward_scorer(tmp_path_factory) -> ImageRewardScorer:
    golden = json.loads((TESTS / "data" / "imagereward_golden.json").read_text(encoding="utf-8"))
    recipe = golden["recipe"]
    shapes = golden["official_state_dict_shapes"]
    rng = np.random.default_rng(recipe["weights_seed"])
    state_dict = {key: imagereward_helpers.make_tensor(rng, key, tuple(shapes[key])) for key in sorted(shapes)}
    folder = tmp_path_factory.mktemp("tiny_imagereward")
    torch.save(state_dict, folder / "ImageReward.pt")
    (folder / "vocab.txt").write_text("\n".join(recipe["vocab"]) + "\n", encoding="utf-8")
    config = ImageRewardConfig.from_med_config(recipe["med_config"], **recipe["vision"])
    return ImageRewardScorer(folder / "ImageReward.pt", folder, config=config, device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return dpg_helpers.save_tiny_blip(tmp_path_factory.mktemp("tiny_blip") / "model")


class YesVQA:
    """A fake VQA model that answers "yes" to every question."""

    comparable_with_published = False

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        return ["yes"] * len(images)


# --------------------------------------------------------------------------- HPD v2 (hps)


def write_hpd_prompts(folder: Path) -> Path:
    """Write the four style files in the official schema, a JSON list of 800 strings each."""
    folder.mkdir(parents=True, exist_ok=True)
    for style in HPDV2_STYLES:
        prompts = [f"{style} prompt {index}" for index in range(HPDV2_PROMPTS_PER_STYLE)]
        (folder / f"{style}.json").write_text(json.dumps(prompts), encoding="utf-8")
    return folder


def small_hps_suite(prompt_dir: Path, scorer: HPSScorer, per_style: int = 2):
    """The hps suite cut to the first ``per_style`` prompts of each style, scored by ``scorer``."""
    suite = hps_suite(prompt_dir)
    suite.entries = [entry for entry in suite.entries if entry["style_index"] < per_style]
    suite.make_scorer = lambda: scorer
    return suite


@pytest.fixture(scope="module")
def hpd_prompts(tmp_path_factory) -> Path:
    return write_hpd_prompts(tmp_path_factory.mktemp("hpd_prompts"))


@pytest.fixture(scope="module")
def hps_run(tmp_path_factory, hpd_prompts, hps_scorer, backend) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("hps_run")
    return out, run_benchmark(small_hps_suite(hpd_prompts, hps_scorer), request(), out, backend)


def test_hps_prompts_from_local_folder(hpd_prompts):
    suite = hps_suite(hpd_prompts)

    assert len(suite.entries) == 4 * HPDV2_PROMPTS_PER_STYLE
    assert suite.entries[HPDV2_PROMPTS_PER_STYLE] == {
        "prompt": "concept-art prompt 0", "style": "concept-art", "style_index": 0, "tag": "concept-art",
    }
    files = {style: sha256_of(hpd_prompts / f"{style}.json") for style in HPDV2_STYLES}
    assert suite.info["prompt_files_sha256"] == files
    manifest = "".join(f"{files[style]}  benchmark/{style}.json\n" for style in HPDV2_STYLES)
    assert suite.prompt_sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    assert hpdv2_prompt_sha256(files) == suite.prompt_sha256
    assert suite.images_per_prompt == 1


def test_hps_prompt_pin_accepted_and_mismatch_explained(hpd_prompts):
    digest = hps_suite(hpd_prompts).prompt_sha256
    assert hps_suite(hpd_prompts, prompt_sha256=digest).prompt_sha256 == digest

    with pytest.raises(ChecksumMismatchError) as raised:
        hps_suite(hpd_prompts, prompt_sha256="0" * 64)
    message = str(raised.value)
    assert str(hpd_prompts / "anime.json") in message
    assert "expected " + "0" * 64 in message
    assert f"SHA-256 {digest}" in message
    assert "Pass the prompt files that the pin was taken from" in message


def test_hps_prompts_offline_without_cache():
    with pytest.raises(MissingPromptsError, match="HF_HUB_OFFLINE is set"):
        hps_suite()


def test_hps_file_names_sort_in_prompt_order(hpd_prompts, tmp_path):
    suite = hps_suite(hpd_prompts)
    photo = [index for index, entry in enumerate(suite.entries) if entry["style"] == "photo"]
    names = [suite.image_path(tmp_path, index, 0).name for index in photo]

    assert names[0] == "00000.jpg"
    assert names[-1] == "00799.jpg"
    assert sorted(names) == names
    assert suite.image_path(tmp_path, photo[12], 0) == tmp_path / "photo" / "00012.jpg"
    with pytest.raises(ValueError, match="--images-per-prompt 1"):
        suite.image_path(tmp_path, 0, 1)


def test_hps_run_official_layout_and_metrics(hps_run, hps_scorer):
    out, result = hps_run
    images = out / "images"

    assert sorted(path.name for path in images.iterdir()) == sorted(HPDV2_STYLES)
    for style in HPDV2_STYLES:
        assert sorted(path.name for path in (images / style).iterdir()) == ["00000.jpg", "00001.jpg"]
    with Image.open(images / "paintings" / "00001.jpg") as image:
        assert image.format == "JPEG"

    samples = result["samples"]
    assert [sample["image"] for sample in samples[:2]] == ["anime/00000.jpg", "anime/00001.jpg"]
    assert samples[2]["prompt"] == "concept-art prompt 0"
    rescored = hps_scorer.score([images / sample["image"] for sample in samples], [sample["prompt"] for sample in samples])
    np.testing.assert_allclose([sample["score"] for sample in samples], rescored, rtol=0, atol=1e-6)

    metrics = result["metrics"]
    for style in HPDV2_STYLES:
        style_scores = [sample["score"] for sample in samples if sample["tag"] == style]
        assert metrics[style] == pytest.approx(100 * np.mean(style_scores), abs=1e-9)
    assert metrics["overall"] == pytest.approx(np.mean([metrics[style] for style in HPDV2_STYLES]), abs=1e-9)
    assert result["n_failed"] == 0
    assert result["extra_files"] == []
    assert result["partial"] is False
    assert result["benchmark"]["scorer"].startswith("HPS v2.1")


def test_hps_score_only_missing_and_extra_files(tmp_path, hps_run, hpd_prompts, hps_scorer):
    out = copy_run(hps_run[0], tmp_path)
    images = out / "images"
    (images / "photo" / "00001.jpg").rename(images / "photo" / "00001.png")
    (images / "sketch").mkdir()
    shutil.copy(images / "anime" / "00000.jpg", images / "sketch" / "00000.jpg")
    suite = small_hps_suite(hpd_prompts, hps_scorer)

    result = run_benchmark(suite, request(score_only=True), out)

    photo_1 = next(i for i, entry in enumerate(suite.entries) if entry["style"] == "photo" and entry["style_index"] == 1)
    assert result["n_failed"] == 1
    assert [sample["image"] for sample in result["samples"] if sample.get("error") == "missing image"] == ["photo/00001.jpg"]
    assert result["extra_files"] == [
        {"path": "photo/00001.png", "prompt_index": photo_1},
        {"path": "sketch/00000.jpg", "prompt_index": None},
    ]
    photo_0 = next(sample for sample in result["samples"] if sample["image"] == "photo/00000.jpg")
    assert result["metrics"]["photo"] == pytest.approx(100 * photo_0["score"], abs=1e-9)


def test_hps_score_only_missing_style_fails(tmp_path, hps_run, hpd_prompts, hps_scorer):
    out = copy_run(hps_run[0], tmp_path)
    shutil.rmtree(out / "images" / "anime")

    result = run_benchmark(small_hps_suite(hpd_prompts, hps_scorer), request(score_only=True), out)

    assert result["n_failed"] == 2
    assert math.isnan(result["metrics"]["anime"])
    assert math.isnan(result["metrics"]["overall"])
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"]["anime"] is None


# --------------------------------------------------------------------------- ImageReward benchmark


def fixture_imagereward_suite(scorer: ImageRewardScorer | None = None):
    suite = imagereward_suite(IMAGEREWARD_FIXTURE, prompt_sha256=sha256_of(IMAGEREWARD_FIXTURE))
    if scorer is not None:
        suite.make_scorer = lambda: scorer
    return suite


@pytest.fixture(scope="module")
def imagereward_run(tmp_path_factory, imagereward_scorer, backend) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("imagereward_run")
    return out, run_benchmark(fixture_imagereward_suite(imagereward_scorer), request(), out, backend)


def test_imagereward_prompts_from_local_file():
    suite = fixture_imagereward_suite()

    assert [entry["prompt_id"] for entry in suite.entries] == ["000001-0001", "000002-0017", "000003-0042"]
    assert suite.entries[1]["prompt"] == "a lighthouse on a cliff at dusk, oil painting"
    assert suite.prompt_sha256 == sha256_of(IMAGEREWARD_FIXTURE)
    assert suite.images_per_prompt == 10


def test_imagereward_checksum_mismatch_explained():
    with pytest.raises(ChecksumMismatchError) as raised:
        imagereward_suite(IMAGEREWARD_FIXTURE)
    message = str(raised.value)

    assert str(IMAGEREWARD_FIXTURE) in message
    assert f"SHA-256 {sha256_of(IMAGEREWARD_FIXTURE)}" in message
    assert f"expected {IMAGEREWARD_PROMPTS_FILE.sha256}" in message
    assert "Pass an unmodified copy of that file, or pin a different file on purpose with --prompts-sha256" in message


@pytest.mark.skipif(not OFFICIAL_IMAGEREWARD_PROMPTS.is_file(), reason="no copy of the official ImageReward prompts here")
def test_imagereward_official_copy_matches_pin():
    suite = imagereward_suite(OFFICIAL_IMAGEREWARD_PROMPTS)

    assert len(suite.entries) == 100
    assert len({entry["prompt_id"] for entry in suite.entries}) == 100
    assert suite.prompt_sha256 == IMAGEREWARD_PROMPTS_FILE.sha256


@pytest.mark.skipif(not OFFICIAL_IMAGEREWARD_PROMPTS.is_file(), reason="no copy of the official ImageReward prompts here")
def test_imagereward_cached_download_used_offline(tmp_path):
    cached = tmp_path / "empty-cache" / "cogrpo" / "imagereward" / "benchmark-prompts-c1392c6dd0fd.json"
    cached.parent.mkdir(parents=True)
    shutil.copy(OFFICIAL_IMAGEREWARD_PROMPTS, cached)

    assert imagereward_suite().info["prompt_source"] == IMAGEREWARD_PROMPTS_FILE.url

    cached.write_bytes(cached.read_bytes() + b"\n")
    with pytest.raises(ChecksumMismatchError, match="Delete the file and fetch it again"):
        imagereward_suite()


def test_imagereward_prompts_offline_without_cache():
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set.*--prompts PATH"):
        imagereward_suite()


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"id": "a", "prompt": "b"}', "non-empty JSON list"),
        ('[{"id": "a"}]', "item 0"),
        ('[{"id": "a", "prompt": "b"}, {"id": "a", "prompt": "c"}]', "appears twice"),
        ('[{"id": "../a", "prompt": "b"}]', "cannot name an image file"),
        ("[", "invalid JSON"),
    ],
)
def test_imagereward_invalid_prompt_file(tmp_path, content, words):
    path = tmp_path / "prompts.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ValueError, match=words):
        imagereward_suite(path, prompt_sha256=sha256_of(path))


def test_imagereward_run_official_layout_and_metrics(imagereward_run, imagereward_scorer):
    out, result = imagereward_run
    suite = fixture_imagereward_suite()
    expected_names = sorted(f"{entry['prompt_id']}_{k}.png" for entry in suite.entries for k in range(10))

    assert sorted(path.name for path in (out / "images").iterdir()) == expected_names
    samples = result["samples"]
    rescored = imagereward_scorer.score([out / "images" / s["image"] for s in samples], [s["prompt"] for s in samples])
    np.testing.assert_allclose([sample["score"] for sample in samples], rescored, rtol=0, atol=1e-5)

    prompt_means = [np.mean([s["score"] for s in samples if s["index"] == index]) for index in range(3)]
    assert result["metrics"]["overall"] == pytest.approx(np.mean(prompt_means), abs=1e-9)
    assert result["metrics"]["prompt_std"] == pytest.approx(np.std(prompt_means), abs=1e-9)
    assert result["n_samples"] == 30
    assert result["n_failed"] == 0
    assert result["extra_files"] == []


def test_imagereward_score_only_missing_and_extra_files(tmp_path, imagereward_run, imagereward_scorer):
    out = copy_run(imagereward_run[0], tmp_path)
    images = out / "images"
    (images / "000002-0017_3.png").unlink()
    shutil.copy(images / "000002-0017_4.png", images / "000002-0017_10.png")

    result = run_benchmark(fixture_imagereward_suite(imagereward_scorer), request(score_only=True), out)

    assert result["n_failed"] == 1
    assert [(s["index"], s["sample"]) for s in result["samples"] if s.get("error") == "missing image"] == [(1, 3)]
    assert result["extra_files"] == [{"path": "000002-0017_10.png", "prompt_index": 1}]
    second_prompt = [s["score"] for s in result["samples"] if s["index"] == 1 and s["score"] is not None]
    assert len(second_prompt) == 9


# --------------------------------------------------------------------------- DPG-Bench


def fixture_dpg_suite(scorer_backend=None, *, legacy: bool = False, **options):
    """The dpg suite on the fixture CSV; ``scorer_backend`` replaces the VQA model of its DPGScorer."""
    factory = dpg_legacy_suite if legacy else dpg_suite
    suite = factory(DPG_FIXTURE, prompt_sha256=sha256_of(DPG_FIXTURE), **options)
    if scorer_backend is not None:
        questions = dpg.load_questions(DPG_FIXTURE, legacy=legacy)
        suite.make_scorer = lambda: dpg.DPGScorer(questions, backend=scorer_backend(), legacy=legacy)
    return suite


@pytest.fixture(scope="module")
def dpg_run(tmp_path_factory, backend) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dpg_run")
    return out, run_benchmark(fixture_dpg_suite(YesVQA), request(), out, backend)


def test_dpg_prompts_from_local_csv():
    suite = fixture_dpg_suite()

    assert [entry["item_id"] for entry in suite.entries] == DPG_ITEMS
    assert suite.entries[1]["prompt"] == 'Two sleeping dogs lie under a sign that reads "OPEN".'
    assert suite.prompt_sha256 == sha256_of(DPG_FIXTURE)
    assert (suite.tiles, suite.images_per_prompt) == (4, 1)
    assert suite.info["vqa_backend"] == "blip"
    assert suite.info["comparable_with_published"] is False


def test_dpg_checksum_mismatch_explained():
    fixture_blob = dpg.download.file_checksums(DPG_FIXTURE)[1]
    with pytest.raises(ChecksumMismatchError) as raised:
        dpg_suite(DPG_FIXTURE)
    message = str(raised.value)

    assert str(DPG_FIXTURE) in message
    assert f"git blob id {fixture_blob}, expected {dpg.QUESTIONS_FILE.git_blob_sha1}" in message
    assert "--prompts-sha256" in message

    with pytest.raises(ChecksumMismatchError) as raised:
        dpg_suite(DPG_FIXTURE, prompt_sha256="f" * 64)
    message = str(raised.value)
    assert f"SHA-256 {sha256_of(DPG_FIXTURE)}, expected {'f' * 64}" in message
    assert "change --prompts-sha256" in message


def test_dpg_prompts_offline_without_cache():
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        dpg_suite()


def test_dpg_variants_label_vqa_and_mode():
    legacy_mplug = fixture_dpg_suite(legacy=True, vqa="mplug")
    fixed_mplug = fixture_dpg_suite(vqa="mplug")

    assert legacy_mplug.name == "dpg-legacy"
    assert legacy_mplug.info["comparable_with_published"] is True
    assert fixed_mplug.info["comparable_with_published"] is False
    assert fixed_mplug.info["vqa_comparable_with_published"] is True
    assert legacy_mplug.info["scorer"] != fixed_mplug.info["scorer"] != fixture_dpg_suite().info["scorer"]
    with pytest.raises(ValueError, match="invalid VQA backend 'vilt'"):
        fixture_dpg_suite(vqa="vilt")


def test_dpg_layout_paths(tmp_path):
    suite = fixture_dpg_suite()

    assert suite.image_path(tmp_path, 1, 0) == tmp_path / "dogs_with_sign.png"
    with pytest.raises(ValueError, match="--images-per-prompt 1"):
        suite.image_path(tmp_path, 1, 1)
    assert suite.find_image(tmp_path, 1, 0) is None
    (tmp_path / "dogs_with_sign.webp").write_bytes(b"")
    assert suite.find_image(tmp_path, 1, 0) == tmp_path / "dogs_with_sign.webp"


def test_compose_grid_inverts_split_grid():
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8) for _ in range(4)]

    grid = compose_grid(tiles)

    assert grid.shape == (12, 10, 3)
    np.testing.assert_array_equal(grid[6:, :5], tiles[2])
    for tile, expected in zip(dpg.split_grid(grid), tiles):
        np.testing.assert_array_equal(tile, expected)
    with pytest.raises(ValueError, match="1 or 4"):
        compose_grid(tiles[:3])


def test_dpg_run_with_blip_scores_seeded_grids(tmp_path, backend, tiny_blip):
    from cogrpo.rl.trainer import derive_seed
    from cogrpo.sampling.sampler import image_generators, sample

    suite = fixture_dpg_suite(lambda: dpg.TransformersVQA(tiny_blip, device="cpu", max_new_tokens=2))

    result = run_benchmark(suite, request(seed=4), tmp_path, backend)

    images = tmp_path / "images"
    assert sorted(path.name for path in images.iterdir()) == sorted(f"{item}.png" for item in DPG_ITEMS)
    # The run decodes all 12 tiles in one batch; the same batch here must give the same tiles.
    jobs = [(index, tile) for index in range(3) for tile in range(4)]
    trajectory = sample(backend, [suite.entries[index]["prompt"] for index, _ in jobs],
                        image_generators([derive_seed(4, index, tile) for index, tile in jobs]), steps=2,
                        schedule=None, schedule_mode="mean", chunk_size=16)
    tiles = backend.decode(trajectory.tokens.view(-1, *trajectory.grid))
    for index, item in enumerate(DPG_ITEMS):
        with Image.open(images / f"{item}.png") as grid:
            parts = dpg.split_grid(np.asarray(grid.convert("RGB")))
        for tile in range(4):
            np.testing.assert_array_equal(parts[tile], tiles[index * 4 + tile])

    assert result["tiles_per_image"] == 4
    assert "tile_index" in result["seed_rule"]
    assert result["n_failed"] == 0
    assert set(result["metrics"]) >= {"overall", "l1/entity", "l1/attribute", "l1/relation", "l1/other"}
    assert all(0.0 <= value <= 100.0 for value in result["metrics"].values())
    for record in result["samples"]:
        assert record["score"] == pytest.approx(np.mean(record["details"]["tile_scores"]), abs=1e-6)
    assert result["benchmark"]["vqa_backend"] == "blip"
    assert result["benchmark"]["comparable_with_published"] is False


def test_dpg_killed_run_writes_each_grid_once(tmp_path, backend, monkeypatch):
    small_batches = request(batch_size=3)
    reference = run_benchmark(fixture_dpg_suite(YesVQA), small_batches, tmp_path / "reference", backend)
    writes: Counter[str] = Counter()
    write = runner.atomic_write_bytes

    def counting_write(path, data):
        writes[Path(path).name] += 1
        write(path, data)

    monkeypatch.setattr(runner, "atomic_write_bytes", counting_write)
    decode = backend.decode
    calls = {"n": 0}

    def dying_decode(tokens):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return decode(tokens)

    monkeypatch.setattr(backend, "decode", dying_decode)
    run_dir = tmp_path / "run"
    first = EvalCounters()
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(fixture_dpg_suite(YesVQA), small_batches, run_dir, backend, counters=first)

    # Batches hold 3 tiles: the first grid completes in batch 2, and batch 3 died with
    # two tiles of the second grid decoded, so only the first grid file exists.
    assert first.generated == 1
    assert [path.name for path in (run_dir / "images").iterdir()] == ["cat_on_sofa.png"]

    monkeypatch.setattr(backend, "decode", decode)
    second = EvalCounters()
    result = run_benchmark(fixture_dpg_suite(YesVQA), small_batches, run_dir, backend, counters=second)

    assert (second.generated, second.reused_images) == (2, 1)
    assert writes == {f"{item}.png": 1 for item in DPG_ITEMS}
    for item in DPG_ITEMS:
        assert (run_dir / "images" / f"{item}.png").read_bytes() == (tmp_path / "reference" / "images" / f"{item}.png").read_bytes()
    assert result["metrics"] == reference["metrics"]

    third = EvalCounters()
    run_benchmark(fixture_dpg_suite(YesVQA), small_batches, run_dir, backend, counters=third)
    assert (third.generated, third.scored) == (0, 0)


def test_dpg_all_yes_scores_100(dpg_run):
    metrics = dpg_run[1]["metrics"]

    assert metrics["overall"] == pytest.approx(100.0)
    assert metrics["l2/other - text"] == pytest.approx(100.0)
    assert "n_failed" not in metrics


def test_dpg_score_only_missing_and_extra_files(tmp_path, dpg_run):
    out = copy_run(dpg_run[0], tmp_path)
    images = out / "images"
    shutil.copy(images / "dogs_with_sign.png", images / "unknown_item.png")
    shutil.copy(images / "cat_on_sofa.png", images / "cat_on_sofa.jpg")
    (images / "dogs_with_sign.png").unlink()

    result = run_benchmark(fixture_dpg_suite(YesVQA), request(score_only=True), out)

    assert result["n_failed"] == 1
    assert [s["image"] for s in result["samples"] if s.get("error") == "missing image"] == ["dogs_with_sign.png"]
    assert result["extra_files"] == [
        {"path": "cat_on_sofa.jpg", "prompt_index": 0},
        {"path": "unknown_item.png", "prompt_index": None},
    ]
    # The missing grid scores 0 for each of its questions: 2 of 3 prompts score 100.
    assert result["metrics"]["overall"] == pytest.approx(200.0 / 3.0)
    # Its "other - count" question (the only one of that category) scores 0 on each tile.
    assert result["metrics"]["l2/other - count"] == pytest.approx(0.0)


def test_dpg_score_only_reads_other_image_types(tmp_path, dpg_run):
    out = copy_run(dpg_run[0], tmp_path)
    images = out / "images"
    with Image.open(images / "bird_in_tree.png") as grid:
        grid.save(images / "bird_in_tree.webp", lossless=True)
    (images / "bird_in_tree.png").unlink()

    result = run_benchmark(fixture_dpg_suite(YesVQA), request(score_only=True), out)

    assert result["n_failed"] == 0
    assert result["samples"][2]["image"] == "bird_in_tree.webp"
    assert result["extra_files"] == []


def test_dpg_legacy_drops_failures_from_averages(tmp_path, dpg_run):
    out = copy_run(dpg_run[0], tmp_path)
    (out / "images" / "dogs_with_sign.png").unlink()

    result = run_benchmark(fixture_dpg_suite(YesVQA, legacy=True), request(score_only=True), out)

    # Legacy mode skips the first CSV row, so cat_on_sofa fails with a KeyError. Both it
    # and the missing grid leave the average, as in the official script.
    assert result["benchmark"]["name"] == "dpg-legacy"
    assert result["n_failed"] == 2
    assert result["samples"][0]["error"].startswith("KeyError")
    assert result["metrics"]["overall"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- tables and command line


def make_result(name: str, overall: float, *, seed: int = 0, sha: str = "a" * 64, scorer: str = "", partial: bool = False,
                extra_metrics: dict | None = None) -> dict:
    return {
        "benchmark": {"name": name, "version": "1", "prompt_sha256": sha, "scorer": scorer},
        "model": {"label": "base"},
        "schedule": "default",
        "steps": 12,
        "seed": seed,
        "partial": partial,
        "n_failed": 0,
        "metrics": {"overall": overall, **(extra_metrics or {})},
    }


def test_reward_alignment_table_joins_benchmarks():
    results = [make_result("imagereward", 0.5, seed=0), make_result("imagereward", 0.7, seed=1),
               make_result("hps", 28.0, sha="b" * 64)]

    markdown, latex = reward_alignment_table(results)

    assert "| model | schedule | steps | ImageReward | HPS v2 |" in markdown
    assert "| base | default | 12 | 0.600 ± 0.141 | 28.000 |" in markdown
    assert "\\toprule" in latex


def test_reward_alignment_table_never_mixes_prompt_files():
    results = [make_result("imagereward", 0.5), make_result("hps", 28.0, sha="b" * 64), make_result("hps", 29.0, sha="c" * 64)]

    markdown, _ = reward_alignment_table(results)

    assert "| model | schedule | steps | ImageReward |" in markdown
    assert "HPS v2 is left out" in markdown
    assert reward_alignment_table([make_result("hps", 28.0, partial=True)]) is None


def test_dpg_tables_split_by_vqa_and_mode(dpg_run):
    blip = dpg_run[1]
    mplug = make_result("dpg", 80.0, sha=blip["benchmark"]["prompt_sha256"], scorer="DPG-Bench rules, VQA mplug",
                        extra_metrics={"l1/entity": 90.0})
    legacy = make_result("dpg-legacy", 81.0, sha=blip["benchmark"]["prompt_sha256"], scorer="legacy")

    tables = benchmark_tables([blip, mplug, legacy])

    assert len(tables) == 3
    blip_table = next(markdown for markdown, _ in tables.values() if "VQA blip" in markdown)
    assert "| overall | l1/attribute | l1/entity |" in blip_table
    assert "score 0 in the overall and category averages" in blip_table


def test_cli_lists_new_benchmarks():
    from typer.testing import CliRunner

    from cogrpo.cli import app

    output = CliRunner().invoke(app, ["list"]).output

    for name in ("hps", "imagereward", "dpg", "dpg-legacy"):
        assert f"│ benchmark │ {name} " in output


@pytest.mark.parametrize(
    "args, words",
    [
        (["--bench", "shapes", "--prompts", str(IMAGEREWARD_FIXTURE)], "--prompts only applies to --bench hps"),
        (["--bench", "hps", "--prompts-sha256", "abc"], "expected 64 hexadecimal digits"),
        (["--bench", "imagereward", "--vqa", "mplug"], "--vqa only applies to --bench dpg"),
        (["--bench", "imagereward", "--prompts", str(IMAGEREWARD_FIXTURE)], "expected 34682e82"),
    ],
)
def test_cli_rejects_bad_prompt_options(tmp_path, args, words):
    from typer.testing import CliRunner

    from cogrpo.cli import app

    result = CliRunner().invoke(app, ["eval", "--score-only", "--out", str(tmp_path), *args])

    assert result.exit_code == 2
    assert words in " ".join(result.output.split())

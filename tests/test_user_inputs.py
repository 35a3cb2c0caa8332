"""Bad user inputs found by trying the command line: each gives a clear error and loses no data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cogrpo.cli import app
from cogrpo.evaluation.runner import EvalRequest, EvalSettingsMismatch, run_benchmark
from cogrpo.evaluation.suites import shapes_suite
from cogrpo.models.shapes import load_shapes_backend
from cogrpo.rewards.requirements import MetadataNeeds, metadata_needs
from cogrpo.rewards.shapes import ShapesReward
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.trainer import PromptSource


@pytest.fixture(scope="module")
def backend(random_shapes_dir):
    return load_shapes_backend(random_shapes_dir)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------- evaluation reruns


def _request(**options):
    settings = dict(steps=3, seed=5, limit=2, images_per_prompt=1, batch_size=4)
    settings.update(options)
    return EvalRequest(**settings)


@pytest.mark.parametrize(("field", "value", "shown"), [("steps", 4, "steps: 3 there, 4 now"), ("seed", 6, "seed: 5 there, 6 now")])
def test_eval_rerun_with_other_settings_rejected(tmp_path, backend, field, value, shown):
    first = run_benchmark(shapes_suite(), _request(), tmp_path, backend)
    saved = (tmp_path / "result.json").read_bytes()

    with pytest.raises(EvalSettingsMismatch) as error:
        run_benchmark(shapes_suite(), _request(**{field: value}), tmp_path, backend)

    assert shown in str(error.value)
    assert "new --out folder" in str(error.value)
    assert (tmp_path / "result.json").read_bytes() == saved
    assert first["steps"] == 3


def test_eval_rerun_same_settings_resumes(tmp_path, backend):
    run_benchmark(shapes_suite(), _request(model_info={"name": "shapes", "label": "first"}), tmp_path, backend)
    again = run_benchmark(shapes_suite(), _request(batch_size=1, model_info={"name": "shapes", "label": "second"}),
                          tmp_path, backend)

    assert again["n_failed"] == 0
    assert again["model"]["label"] == "second"
    recorded = json.loads((tmp_path / "eval_settings.json").read_text())
    assert recorded["generation"]["steps"] == 3
    assert recorded["scoring"]["class"] == "cogrpo.rewards.shapes.StrictShapesReward"


def test_score_only_rerun_keeps_generation_record(tmp_path, backend):
    run_benchmark(shapes_suite(), _request(), tmp_path, backend)
    run_benchmark(shapes_suite(), _request(score_only=True), tmp_path)

    recorded = json.loads((tmp_path / "eval_settings.json").read_text())
    assert recorded["generation"]["seed"] == 5


def test_scorer_change_allowed_without_scores(tmp_path, backend):
    import dataclasses

    from cogrpo.rewards.shapes import ShapesReward

    run_benchmark(shapes_suite(), _request(), tmp_path, backend)
    partial = dataclasses.replace(shapes_suite(), make_scorer=ShapesReward)
    with pytest.raises(EvalSettingsMismatch, match="scorer.class"):
        run_benchmark(partial, _request(), tmp_path, backend)

    for path in tmp_path.glob("scores-*.jsonl"):
        path.unlink()
    result = run_benchmark(partial, _request(), tmp_path, backend)

    assert result["n_failed"] == 0
    recorded = json.loads((tmp_path / "eval_settings.json").read_text())
    assert recorded["scoring"]["class"] == "cogrpo.rewards.shapes.ShapesReward"


def test_generation_after_score_only_rejected(tmp_path, backend):
    import shutil

    run_benchmark(shapes_suite(), _request(), tmp_path / "made", backend)
    shutil.copytree(tmp_path / "made" / "images", tmp_path / "scored" / "images")
    run_benchmark(shapes_suite(), _request(score_only=True), tmp_path / "scored")

    with pytest.raises(EvalSettingsMismatch, match="made elsewhere"):
        run_benchmark(shapes_suite(), _request(), tmp_path / "scored", backend)


def test_eval_cli_names_changed_steps(tmp_path, random_shapes_dir):
    common = ["eval", "--model-path", random_shapes_dir, "--limit", 1, "--images-per-prompt", 1, "--out", tmp_path]
    assert invoke(*common, "--steps", 2).exit_code == 0

    result = invoke(*common, "--steps", 3)

    assert result.exit_code == 2
    assert "steps: 2 there, 3 now" in one_line(result.output)
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 2


@pytest.mark.parametrize(("option", "value"), [("--limit", "0"), ("--limit", "-3"), ("--images-per-prompt", "0")])
def test_eval_rejects_counts_below_one(tmp_path, option, value):
    result = invoke("eval", option, value, "--out", tmp_path)

    assert result.exit_code == 2
    assert f"invalid {option} {value}" in one_line(result.output)


# ---------------------------------------------------------------------------- training prompts


def test_plain_prompts_rejected_for_metadata_reward(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\n")

    with pytest.raises(ValueError, match="judges GenEval metadata") as error:
        PromptSource(str(prompts), metadata_needs(ShapesReward()), "shapes")

    assert str(prompts) in str(error.value)


def test_unknown_class_rejected_with_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
        {"tag": "single_object", "include": [{"class": "hexagon", "count": 1}], "prompt": "a photo of a hexagon"},
    ]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))

    with pytest.raises(ValueError) as error:
        PromptSource(str(prompts), metadata_needs(ShapesReward()), "shapes")

    message = str(error.value)
    assert f"{prompts}:2" in message
    assert "'hexagon'" in message
    assert "circle, cross, square, triangle" in message


def test_unknown_excluded_class_rejected(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    entry = {"tag": "counting", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
             "prompt": "a photo of two circles"}
    prompts.write_text(json.dumps(entry) + "\n")

    with pytest.raises(ValueError, match="'dog'"):
        PromptSource(str(prompts), metadata_needs(ShapesReward()), "shapes")


def test_plain_prompts_accepted_without_needs(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\n\na cat\n")

    source = PromptSource(str(prompts), MetadataNeeds(), "hps")

    assert len(source._pool) == 2


def test_non_utf8_prompt_file_names_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a red circle\na blue \xff square\n")

    with pytest.raises(ValueError, match=r"prompts.txt:2: invalid UTF-8 byte 0xff"):
        PromptSource(str(prompts))


def test_missing_prompt_file_is_not_found(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        PromptSource(str(tmp_path / "absent.jsonl"))


def test_mix_needs_metadata_when_one_part_does():
    from cogrpo.rewards.base import Scorer
    from cogrpo.rewards.mix import WeightedMix

    class Plain(Scorer):
        name = "plain"

        def score_batch(self, images, prompts, metadata):
            raise AssertionError("not called")

    needs = metadata_needs(WeightedMix([(Plain(), 1.0), (ShapesReward(), 0.5)]))

    assert needs.needs_metadata is True
    assert needs.classes == ("circle", "cross", "square", "triangle")


def test_geneval_reward_classes_follow_detector():
    from cogrpo.rewards.geneval import GenEvalScorer

    needs = metadata_needs(GenEvalScorer(detector="shapes"))

    assert needs.needs_metadata is True
    assert set(needs.classes) == {"circle", "square", "triangle", "cross"}


def test_train_rejects_text_prompts_for_shapes(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\n")

    result = invoke("train", "--random-weights", "--prompts", prompts, "--iterations", 1, "--out", tmp_path / "run")

    assert result.exit_code == 2
    assert "judges GenEval metadata" in one_line(result.output)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------- configuration files


@pytest.mark.parametrize(("text", "shown"), [
    ("iterations: 1.7\n", "invalid iterations=1.7 (float); expected an integer"),
    ("final_eval: \"no\"\n", "invalid final_eval='no' (str); expected true or false"),
    ("lr_model: 1e-3\n", "write it with a decimal point"),
    ("group_size: [8]\n", "invalid group_size=[8] (list); expected an integer"),
])
def test_config_value_types_checked(tmp_path, text, shown):
    path = tmp_path / "run.yaml"
    path.write_text(text)

    with pytest.raises(ValueError) as error:
        TrainConfig.from_yaml(path)

    assert str(path) in str(error.value)
    assert shown in str(error.value)


def test_config_integer_for_float_kept():
    config = TrainConfig.from_dict({"weight_decay": 0, "kl_weight": 1})

    assert config.weight_decay == 0
    assert config.training_hash() == TrainConfig.from_dict({"weight_decay": 0, "kl_weight": 1}).training_hash()


def test_broken_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("iterations: [1, 2\n")

    result = invoke("train", "--config", path, "--out", tmp_path / "run")

    assert result.exit_code == 2
    assert "invalid YAML" in one_line(result.output)
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- messages and output folders


def test_brackets_in_messages_are_printed(tmp_path):
    result = invoke("train", "--prompts", "[bold]x/[/]y.jsonl", "--out", tmp_path / "run")

    assert result.exit_code == 2
    assert "[bold]x/[/]y.jsonl" in one_line(result.output)


def test_sample_out_under_a_file_rejected(tmp_path, random_shapes_dir):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")

    result = invoke("sample", "--prompt", "a red circle", "--n", 1, "--steps", 2, "--model-path", random_shapes_dir,
                    "--out", blocker / "sub")

    assert result.exit_code == 2
    assert f"{blocker} is a file" in one_line(result.output)
    assert blocker.read_text() == "keep me"


def test_pretrain_needs_out():
    result = invoke("pretrain", "--stage", "vq", "--vq-steps", 1)

    assert result.exit_code == 2
    assert "--out" in result.output


def test_pretrain_out_file_rejected(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")

    result = invoke("pretrain", "--stage", "vq", "--vq-steps", 1, "--vq-finetune-steps", 0, "--out", blocker)

    assert result.exit_code == 2
    assert "is a file" in one_line(result.output)
    assert blocker.read_text() == "keep me"


def test_pretrain_mdm_stage_needs_tokenizer(tmp_path):
    result = invoke("pretrain", "--stage", "mdm", "--mdm-steps", 1, "--out", tmp_path / "new")

    assert result.exit_code == 2
    assert "needs a trained tokenizer" in one_line(result.output)


# ---------------------------------------------------------------------------- cogrpo score metadata


def _image(tmp_path):
    from PIL import Image

    path = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    return path


@pytest.mark.parametrize(("content", "shown"), [
    ('{"tag": "single_object", "include": [{"class": "hexagon", "count": 1}], "prompt": "p"}', "unknown class 'hexagon'"),
    ('{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "p"', "malformed JSON"),
    ('{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "teal"}], "prompt": "p"}', "unknown color 'teal'"),
])
def test_score_metadata_checked(tmp_path, content, shown):
    metadata = tmp_path / "meta.json"
    metadata.write_text(content)

    result = invoke("score", "--reward", "shapes", "--prompt", "p", "--metadata", metadata, _image(tmp_path))

    assert result.exit_code == 2
    assert shown in one_line(result.output)
    assert str(metadata) in one_line(result.output)


def test_score_without_metadata_for_shapes_rejected(tmp_path):
    result = invoke("score", "--reward", "shapes", "--prompt", "p", _image(tmp_path))

    assert result.exit_code == 2
    assert "pass --metadata FILE" in one_line(result.output)


def test_score_missing_metadata_file(tmp_path):
    result = invoke("score", "--reward", "shapes", "--prompt", "p", "--metadata", tmp_path / "absent.json", _image(tmp_path))

    assert result.exit_code == 2
    assert "not found" in one_line(result.output)


def test_score_accepts_one_line_jsonl(tmp_path):
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text('{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "p"}\n')

    result = invoke("score", "--reward", "shapes", "--prompt", "p", "--metadata", metadata, _image(tmp_path))

    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------- cogrpo list


@pytest.mark.parametrize("name", ["hps", "hpsv2.0"])
def test_list_reports_missing_hps_weights(tmp_path, monkeypatch, name):
    import huggingface_hub

    from cogrpo.catalog import REWARDS
    from cogrpo.cli import _availability

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))

    assert _availability(REWARDS.entry(name)) == "no (downloads on first use)"


# ---------------------------------------------------------------------------- tables


def _result(label=None, seed=0, steps=12, samples="a" * 64, checkpoint=None, **extra):
    model = {"name": "shapes", "revision": "sha256:" + "e" * 64}
    if label:
        model["label"] = label
    if checkpoint:
        model["checkpoint_sha256"] = checkpoint
    result = {"benchmark": {"name": "shapes", "version": "1", "prompt_sha256": "p" * 64}, "model": model,
              "schedule": "default", "steps": steps, "seed": seed, "partial": False, "n_failed": 0,
              "metrics": {"overall": 0.5}, "samples_sha256": samples}
    result.update(extra)
    return result


def _write_results(folder, results):
    folder.mkdir(parents=True, exist_ok=True)
    for index, result in enumerate(results):
        (folder / f"r{index}.json").write_text(json.dumps(result))
    return folder


def test_tables_keep_unlabelled_checkpoints_apart(tmp_path):
    from cogrpo.evaluation.tables import benchmark_tables, load_results

    folder = _write_results(tmp_path / "results", [
        _result(samples="a" * 64), _result(samples="b" * 64, checkpoint="c" * 64), _result(samples="d" * 64, checkpoint="f" * 64),
    ])

    (markdown, _), = benchmark_tables(load_results(folder)).values()

    assert "shapes (eeeeeeeeee)" in markdown
    assert "shapes (cccccccccc)" in markdown
    assert "shapes (ffffffffff)" in markdown
    assert "0.500 ±" not in markdown


def test_tables_average_labelled_seeds(tmp_path):
    from cogrpo.evaluation.tables import benchmark_tables, load_results

    folder = _write_results(tmp_path / "results", [
        _result("ours", seed=0, samples="a" * 64, metrics={"overall": 0.4}),
        _result("ours", seed=1, samples="b" * 64, metrics={"overall": 0.6}),
    ])

    (markdown, _), = benchmark_tables(load_results(folder)).values()

    assert "0.500 ± 0.141" in markdown


def test_tables_reject_copied_result(tmp_path):
    from cogrpo.evaluation.tables import load_results

    folder = _write_results(tmp_path / "results", [_result("ours"), _result("ours")])

    with pytest.raises(ValueError, match="r0.json and r1.json .* are the same evaluation"):
        load_results(folder)


def test_tables_accept_equal_samples_of_other_models(tmp_path):
    from cogrpo.evaluation.tables import load_results

    folder = _write_results(tmp_path / "results", [_result("base"), _result("schedule-only", seed=1)])

    assert len(load_results(folder)) == 2


@pytest.mark.parametrize(("field", "shown"), [("steps", "'steps'"), ("n_failed", "'n_failed'"), ("model", "'model'")])
def test_tables_name_missing_field(tmp_path, field, shown):
    broken = _result("ours")
    del broken[field]
    folder = _write_results(tmp_path / "results", [broken])

    result = invoke("tables", "--results", folder)

    assert result.exit_code == 2
    assert shown in one_line(result.output)
    assert "r0.json" in one_line(result.output)
    assert not (folder / "tables").exists()


def test_tables_missing_folder_fails(tmp_path):
    result = invoke("tables", "--results", tmp_path / "typo")

    assert result.exit_code == 2
    assert "not found" in one_line(result.output)
    assert not (tmp_path / "typo").exists()


def test_tables_check_names_extra_file(tmp_path):
    folder = _write_results(tmp_path / "results", [_result("ours")])
    assert invoke("tables", "--results", folder).exit_code == 0
    (folder / "tables" / "old.md").write_text("stale")

    result = invoke("tables", "--results", folder, "--check")

    assert result.exit_code == 2
    assert "old.md (no longer built from these results; delete it)" in one_line(result.output)


# ---------------------------------------------------------------------------- reproduce


@pytest.mark.parametrize(("options", "shown"), [
    (["--iterations", "0"], "invalid --iterations 0"),
    (["--seeds", "0,0"], "list each value once"),
    (["--sweep-steps", "0"], "from 1 to 64"),
    (["--images-per-prompt", "0"], "invalid --iterations 25 or --images-per-prompt 0"),
    (["--model-path", "/nonexistent/model"], "--model-path /nonexistent/model not found"),
])
def test_reproduce_options_checked(tmp_path, options, shown):
    result = invoke("reproduce", "--out", tmp_path / "results", "--work", tmp_path / "work", *options)

    assert result.exit_code == 2
    assert shown in one_line(result.output)
    assert not (tmp_path / "work").exists()


def test_reproduce_rejects_other_plan(tmp_path):
    from cogrpo.evaluation.reproduce import ReproductionPlan, _plan_record, check_plan

    results = tmp_path / "results"
    results.mkdir()
    (results / "PLAN.json").write_text(json.dumps({"plan": _plan_record(ReproductionPlan(seeds=(0,), iterations=1))}))

    with pytest.raises(ValueError, match="iterations: 1 there, 2 now"):
        check_plan(ReproductionPlan(seeds=(1,), iterations=2), results)
    assert check_plan(ReproductionPlan(seeds=(1,), iterations=1), results).seeds == (0, 1)


# ---------------------------------------------------------------------------- resumed runs and checkpoints


def test_resume_drops_records_that_run_again(tmp_path):
    from cogrpo.rl.run import drop_records_from

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "loss": 0.1 * i}) + "\n" for i in range(6)) + '{"iteration": 6, "lo')

    dropped = drop_records_from(path, 4)

    assert dropped == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_eval_corrupt_checkpoint_is_clear(tmp_path, monkeypatch):
    from cogrpo.checkpoint_io import CorruptCheckpointError
    from cogrpo.rl import run

    def corrupt(path, *args, **kwargs):
        raise CorruptCheckpointError(path, "model.safetensors", "SHA-256 mismatch")

    monkeypatch.setattr(run, "load_trained", corrupt)

    result = invoke("eval", "--checkpoint", tmp_path / "checkpoint-00000002", "--out", tmp_path / "out")

    assert result.exit_code == 2
    assert "SHA-256 mismatch" in one_line(result.output)


def test_rejected_eval_leaves_no_folder(tmp_path):
    result = invoke("eval", "--schedule", "learned", "--out", tmp_path / "new")

    assert result.exit_code == 2
    assert "needs --checkpoint" in one_line(result.output)
    assert not (tmp_path / "new").exists()


def _train_tiny(run_dir, *extra):
    result = invoke("train", "--random-weights", "--iterations", 1, "--prompts-per-iteration", 1, "--group-size", 2,
                    "--steps", 2, "--no-final-eval", "--device", "cpu", "--out", run_dir, *extra)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_learned_schedule_of_model_only_run_rejected(tmp_path):
    _train_tiny(tmp_path / "run", "--mode", "model")

    result = invoke("eval", "--checkpoint", tmp_path / "run", "--schedule", "learned", "--steps", 2,
                    "--out", tmp_path / "out")

    assert result.exit_code == 2
    assert "trained the model only" in one_line(result.output)


def test_inexact_resume_records_latest_config(tmp_path):
    run_dir = tmp_path / "run"
    _train_tiny(run_dir)

    _train_tiny(run_dir, "--resume", run_dir, "--allow-inexact-resume", "--lr-model", "0.001", "--iterations", 2)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["lr_model"] == 0.001
    assert summary["config"]["iterations"] == 2
    assert len(summary["resumes"]) == 1
    assert [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_score_rejects_zero_timeout(tmp_path):
    result = invoke("score", "--reward", "shapes", "--prompt", "p", "--timeout", 0, _image(tmp_path))

    assert result.exit_code == 2
    assert "invalid --timeout 0" in one_line(result.output)

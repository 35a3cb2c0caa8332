"""Tests for the reward spec parser and the weighted mix of scorers."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from cogrpo.rewards.base import Scorer, ScoreResult
from cogrpo.rewards.mix import RewardSpecError, WeightedMix, parse_reward_spec

KNOWN = ["hps", "hpsv2.0", "imagereward", "clip", "geneval"]


class MeanBrightness(Scorer):
    """Score = scale * mean pixel value / 255, NaN for images whose first pixel is 0."""

    version = "test"
    bounds = (0.0, 1.0)

    def __init__(self, name: str, scale: float = 1.0, nan_on_black: bool = False, higher_is_better: bool = True):
        self.name = name
        self.scale = scale
        self.nan_on_black = nan_on_black
        self.higher_is_better = higher_is_better
        self.bounds = (0.0, scale)

    def score_batch(self, images, prompts, metadata):
        scores = np.array([self.scale * image.mean() / 255.0 for image in images], dtype=np.float32)
        errors = [None] * len(images)
        if self.nan_on_black:
            for index, image in enumerate(images):
                if image[0, 0, 0] == 0:
                    scores[index] = np.nan
                    errors[index] = "black corner"
        return ScoreResult(scores=scores, errors=errors)


def uniform_image(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, dtype=np.uint8)


# --------------------------------------------------------------------------- parse_reward_spec


def test_spec_parses_names_and_weights():
    assert parse_reward_spec("hps=1,imagereward=0.5") == [("hps", 1.0), ("imagereward", 0.5)]


def test_spec_ignores_whitespace():
    assert parse_reward_spec("  hps = 2 ,  clip=1e-2 ") == [("hps", 2.0), ("clip", 0.01)]


def test_spec_bare_name_has_weight_one():
    assert parse_reward_spec("hps") == [("hps", 1.0)]


def test_spec_accepts_negative_weight():
    assert parse_reward_spec("hps=1,clip=-0.25", KNOWN) == [("hps", 1.0), ("clip", -0.25)]


def test_spec_accepts_dotted_name():
    assert parse_reward_spec("hpsv2.0=1", KNOWN) == [("hpsv2.0", 1.0)]


@pytest.mark.parametrize("spec", ["", "   "])
def test_spec_empty_rejected(spec):
    with pytest.raises(RewardSpecError, match="empty reward spec"):
        parse_reward_spec(spec)


@pytest.mark.parametrize("spec", ["hps=1,", ",hps=1", "hps=1,,clip=1"])
def test_spec_empty_entry_rejected(spec):
    with pytest.raises(RewardSpecError, match="empty entry"):
        parse_reward_spec(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hps=abc", "invalid weight 'abc'"),
        ("hps=", "invalid weight ''"),
        ("hps=1=2", "invalid weight '1=2'"),
        ("hps=nan", "must be a finite number"),
        ("hps=inf", "must be a finite number"),
        ("hps=0", "weight 0"),
        ("hps=-0.0", "weight 0"),
    ],
)
def test_spec_bad_weight_rejected(spec, message):
    with pytest.raises(RewardSpecError, match=message):
        parse_reward_spec(spec)


def test_spec_missing_name_rejected():
    with pytest.raises(RewardSpecError, match="missing scorer name in entry '=1'"):
        parse_reward_spec("=1")


def test_spec_duplicate_name_rejected():
    with pytest.raises(RewardSpecError, match="'hps' appears twice"):
        parse_reward_spec("hps=1,clip=1,hps=2")


def test_spec_unknown_name_suggests_match():
    with pytest.raises(RewardSpecError) as error:
        parse_reward_spec("hsp=1", KNOWN)

    message = str(error.value)
    assert "unknown scorer 'hsp'" in message
    assert "Did you mean 'hps'" in message
    assert "Available: hps, hpsv2.0, imagereward, clip, geneval" in message


def test_spec_unknown_name_without_match_lists_all():
    with pytest.raises(RewardSpecError) as error:
        parse_reward_spec("aesthetic=1", KNOWN)

    assert "Did you mean" not in str(error.value)
    assert "Available: hps" in str(error.value)


def test_spec_without_known_names_accepts_any():
    assert parse_reward_spec("anything=3") == [("anything", 3.0)]


def test_spec_error_is_value_error():
    assert issubclass(RewardSpecError, ValueError)


# --------------------------------------------------------------------------- WeightedMix


def test_mix_is_weighted_sum():
    bright = MeanBrightness("bright")
    double = MeanBrightness("double", scale=2.0)
    mix = WeightedMix([(bright, 1.0), (double, 0.5)])
    images = [uniform_image(51), uniform_image(255)]

    result = mix.score_detailed(images, ["a", "b"])

    np.testing.assert_allclose(result.scores, [0.2 + 0.5 * 0.4, 1.0 + 0.5 * 2.0], rtol=1e-6)
    assert result.scores.dtype == np.float32
    assert result.errors == [None, None]
    assert result.details[0] == pytest.approx({"bright": 0.2, "double": 0.4})
    assert result.details[1] == pytest.approx({"bright": 1.0, "double": 2.0})


def test_mix_nan_part_gives_nan_total():
    mix = WeightedMix([(MeanBrightness("bright"), 1.0), (MeanBrightness("fussy", nan_on_black=True), 2.0)])
    images = [uniform_image(0), uniform_image(102)]

    result = mix.score_detailed(images, ["a", "b"])

    assert math.isnan(result.scores[0])
    assert result.errors[0] == "fussy: black corner"
    assert result.details[0]["bright"] == 0.0
    assert math.isnan(result.details[0]["fussy"])
    assert result.scores[1] == pytest.approx(0.4 + 2.0 * 0.4)
    assert result.errors[1] is None


def test_mix_unreadable_image_is_nan():
    mix = WeightedMix([(MeanBrightness("bright"), 1.0)])

    result = mix.score_detailed([np.zeros((0, 3, 3), dtype=np.uint8), uniform_image(255)], ["a", "b"])

    assert math.isnan(result.scores[0])
    assert "empty image" in result.errors[0]
    assert result.scores[1] == pytest.approx(1.0)


def test_mix_negative_weight_and_bounds():
    mix = WeightedMix([(MeanBrightness("bright"), 1.0), (MeanBrightness("double", scale=2.0), -0.5)])

    assert mix.bounds == (-1.0, 1.0)
    assert mix.score([uniform_image(255)], ["a"])[0] == pytest.approx(0.0)


def test_mix_unbounded_part_has_no_bounds():
    unbounded = MeanBrightness("free")
    unbounded.bounds = None

    assert WeightedMix([(unbounded, 1.0), (MeanBrightness("bright"), 1.0)]).bounds is None


def test_mix_version_lists_parts():
    mix = WeightedMix([(MeanBrightness("bright"), 1.0), (MeanBrightness("double", scale=2.0), 0.5)])

    assert mix.name == "mix"
    assert mix.version == "bright@test=1,double@test=0.5"


def test_mix_duplicate_scorer_rejected():
    with pytest.raises(ValueError, match=r"\['bright'\] appear more than once"):
        WeightedMix([(MeanBrightness("bright"), 1.0), (MeanBrightness("bright"), 2.0)])


def test_mix_empty_or_bad_weight_rejected():
    with pytest.raises(ValueError, match="at least one"):
        WeightedMix([])
    with pytest.raises(ValueError, match="must be finite"):
        WeightedMix([(MeanBrightness("bright"), float("nan"))])


def test_mix_warns_lower_is_better_part(caplog):
    with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.mix"):
        WeightedMix([(MeanBrightness("loss", higher_is_better=False), 1.0)])

    assert "loss is lower-is-better" in caplog.text


def test_mix_warns_negative_weight_on_higher_is_better(caplog):
    with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.mix"):
        WeightedMix([(MeanBrightness("bright"), -1.0)])

    assert "bright is higher-is-better but has a negative weight" in caplog.text


def test_mix_from_spec_builds_named_scorers():
    created = []

    def create(name):
        created.append(name)
        return MeanBrightness(name, scale=3.0 if name == "clip" else 1.0)

    mix = WeightedMix.from_spec("hps=1,clip=0.5", create, KNOWN)

    assert created == ["hps", "clip"]
    assert [(scorer.name, weight) for scorer, weight in mix.parts] == [("hps", 1.0), ("clip", 0.5)]
    assert mix.score([uniform_image(255)], ["a"])[0] == pytest.approx(1.0 + 0.5 * 3.0)


def test_mix_from_spec_rejects_unknown_before_building():
    def create(name):
        raise AssertionError("no scorer may be built for an invalid spec")

    with pytest.raises(RewardSpecError, match="Did you mean 'clip'"):
        WeightedMix.from_spec("hps=1,clp=1", create, KNOWN)


def test_build_reward_builds_registered_mix():
    from cogrpo.rl.run import build_reward

    mix = build_reward("shapes=1,shapes-strict=0.5")

    assert isinstance(mix, WeightedMix)
    assert [(scorer.name, weight) for scorer, weight in mix.parts] == [("shapes", 1.0), ("shapes-strict", 0.5)]
    with pytest.raises(RewardSpecError, match="Did you mean 'shapes'"):
        build_reward("shapes=1,shapez=1")

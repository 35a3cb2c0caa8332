"""Weighted sums of scorers, and the ``name=weight,...`` reward spec that selects them."""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from cogrpo.rewards.base import Scorer, ScoreResult

logger = logging.getLogger(__name__)

SPEC_EXAMPLE = "hps=1,imagereward=0.5"


class RewardSpecError(ValueError):
    """A reward spec string that cannot be parsed or names an unknown scorer."""


def parse_reward_spec(spec: str, known_names: Iterable[str] | None = None) -> list[tuple[str, float]]:
    """Parse ``"hps=1,imagereward=0.5"`` into ``[("hps", 1.0), ("imagereward", 0.5)]``.

    Entries are separated by commas. A bare name (``"hps"``) has weight 1. Weights
    must be finite and non-zero, and may be negative (to penalise a score). When
    ``known_names`` is given, every name must be one of them. Raises
    ``RewardSpecError`` naming the bad entry, with close matches for an unknown name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"empty reward spec {spec!r}; expected name=weight entries such as {SPEC_EXAMPLE!r}")
    known = list(known_names) if known_names is not None else None

    parsed: list[tuple[str, float]] = []
    seen: set[str] = set()
    for position, entry in enumerate(spec.split(","), start=1):
        entry = entry.strip()
        if not entry:
            raise RewardSpecError(f"empty entry {position} in reward spec {spec!r}; remove the extra comma")
        name, has_weight, weight_text = (part.strip() for part in entry.partition("="))
        if not name:
            raise RewardSpecError(f"missing scorer name in entry {entry!r} of reward spec {spec!r}")
        weight = _parse_weight(weight_text, entry, spec) if has_weight else 1.0
        if name in seen:
            raise RewardSpecError(f"scorer {name!r} appears twice in reward spec {spec!r}; give each scorer one weight")
        if known is not None and name not in known:
            raise RewardSpecError(_unknown_name_message(name, known))
        seen.add(name)
        parsed.append((name, weight))
    return parsed


def _parse_weight(text: str, entry: str, spec: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise RewardSpecError(f"invalid weight {text!r} in entry {entry!r} of reward spec {spec!r}; use a number such as 0.5") from None
    if not math.isfinite(weight):
        raise RewardSpecError(f"weight {text!r} in entry {entry!r} must be a finite number")
    if weight == 0.0:
        raise RewardSpecError(f"weight 0 in entry {entry!r} has no effect; remove the entry instead")
    return weight


def _unknown_name_message(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(match) for match in close)}?" if close else ""
    return f"unknown scorer {name!r} in reward spec.{hint} Available: {', '.join(known) or 'none'}"


class WeightedMix(Scorer):
    """Weighted sum of scorers: ``total = sum(weight_i * score_i)``.

    Each part scores the whole batch. An image whose score from any part is NaN gets
    a NaN total, and its error names the parts that failed. ``details`` contains
    each part's raw score under the part's name. Weights apply to raw scores, so a part
    where lower is better needs a negative weight.
    """

    name = "mix"
    higher_is_better = True

    def __init__(self, parts: Sequence[tuple[Scorer, float]]):
        """Combine ``(scorer, weight)`` pairs; scorer names must be distinct."""
        if not parts:
            raise ValueError("WeightedMix needs at least one (scorer, weight) pair")
        names = [scorer.name for scorer, _ in parts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"scorers {duplicates} appear more than once in the mix; give each scorer one weight")
        for scorer, weight in parts:
            if not math.isfinite(weight):
                raise ValueError(f"weight of {scorer.name!r} must be finite, got {weight}")
            if not scorer.higher_is_better and weight > 0:
                logger.warning("mix: %s is lower-is-better but has a positive weight %s", scorer.name, weight)
            if scorer.higher_is_better and weight < 0:
                logger.warning("mix: %s is higher-is-better but has a negative weight %s, so training lowers it",
                               scorer.name, weight)

        self.parts: list[tuple[Scorer, float]] = [(scorer, float(weight)) for scorer, weight in parts]
        self.version = ",".join(f"{scorer.name}@{scorer.version}={weight:g}" for scorer, weight in self.parts)
        self.weights = tuple(spec for scorer, _ in self.parts for spec in scorer.weights)
        self.bounds = _mixed_bounds(self.parts)

    @classmethod
    def from_spec(cls, spec: str, create: Callable[[str], Scorer], known_names: Iterable[str] | None = None) -> WeightedMix:
        """Parse ``spec`` and build each named scorer with ``create(name)``."""
        return cls([(create(name), weight) for name, weight in parse_reward_spec(spec, known_names)])

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """Score the batch with every part and return the weighted sums."""
        count = len(images)
        total = np.zeros(count, dtype=np.float64)
        errors: list[list[str]] = [[] for _ in range(count)]
        details: list[dict[str, Any]] = [{} for _ in range(count)]

        for scorer, weight in self.parts:
            result = scorer.score_detailed(images, prompts, metadata)
            scores = np.asarray(result.scores, dtype=np.float64)
            if scores.shape != (count,):
                raise ValueError(f"scorer {scorer.name!r} returned {scores.shape} scores for {count} images")
            total += weight * scores
            for index in range(count):
                details[index][scorer.name] = float(scores[index])
                if np.isnan(scores[index]):
                    reason = result.errors[index] if result.errors and result.errors[index] else "score is NaN"
                    errors[index].append(f"{scorer.name}: {reason}")

        return ScoreResult(
            scores=total.astype(np.float32),
            errors=["; ".join(messages) if messages else None for messages in errors],
            details=details,
        )


def _mixed_bounds(parts: Sequence[tuple[Scorer, float]]) -> tuple[float, float] | None:
    """Return the range of the weighted sum when every part is bounded, else None."""
    low = high = 0.0
    for scorer, weight in parts:
        if scorer.bounds is None:
            return None
        ends = (weight * scorer.bounds[0], weight * scorer.bounds[1])
        low += min(ends)
        high += max(ends)
    return (low, high)

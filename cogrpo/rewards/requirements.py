"""Prompt requirements of rewards: GenEval metadata, and the object classes a reward can detect.

Training and ``cogrpo score`` check prompts against these needs before any image
is generated. A prompt list without metadata, or metadata naming an object the
detector cannot find, then fails at once. Without the check, every image would get
an invalid or zero reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogrpo.rewards.base import Scorer


@dataclass(frozen=True)
class MetadataNeeds:
    """Whether a reward judges GenEval metadata and, when known, the object classes it can detect."""

    needs_metadata: bool = False
    classes: tuple[str, ...] | None = None


def _detector_classes(detector_name: str) -> tuple[str, ...] | None:
    from cogrpo.benchmarks.geneval_detectors import GENEVAL_OBJECT_NAMES
    from cogrpo.world.render import SHAPES

    return {"shapes": SHAPES, "mask2former": GENEVAL_OBJECT_NAMES, "mmdet": GENEVAL_OBJECT_NAMES}.get(detector_name)


def metadata_needs(scorer: Scorer) -> MetadataNeeds:
    """Return the metadata needs of ``scorer``, looking through retry guards and weighted mixes.

    A mix needs metadata when any part does, and accepts only the classes that
    every part with a known class list accepts.
    """
    from cogrpo.rewards.geneval import GenEvalScorer
    from cogrpo.rewards.guard import GuardedScorer
    from cogrpo.rewards.mix import WeightedMix
    from cogrpo.rewards.shapes import ShapesReward
    from cogrpo.world.render import SHAPES

    if isinstance(scorer, GuardedScorer):
        return metadata_needs(scorer.inner)
    if isinstance(scorer, WeightedMix):
        parts = [metadata_needs(part) for part, _ in scorer.parts]
        known = [set(part.classes) for part in parts if part.classes is not None]
        classes = tuple(sorted(set.intersection(*known))) if known else None
        return MetadataNeeds(any(part.needs_metadata for part in parts), classes)
    if isinstance(scorer, ShapesReward):
        return MetadataNeeds(True, SHAPES)
    if isinstance(scorer, GenEvalScorer):
        return MetadataNeeds(True, _detector_classes(scorer.detector.name))
    return MetadataNeeds(scorer.needs_metadata, scorer.metadata_classes)


def check_prompts(entries: list[dict[str, Any]], needs: MetadataNeeds, reward: str, source: str | Path) -> None:
    """Raise ``ValueError`` when ``entries`` cannot serve a reward with ``needs``.

    The message names the reward, the prompt source, and the first prompt
    without metadata or the first unknown class with the allowed classes.
    """
    if needs.needs_metadata:
        missing = next((index for index, entry in enumerate(entries) if "include" not in entry), None)
        if missing is not None:
            raise ValueError(
                f"reward {reward!r} judges GenEval metadata, but prompt {missing + 1} of {source} "
                f"({entries[missing].get('prompt', '')!r}) has none; pass a .jsonl file with one GenEval metadata "
                f"object per line (tag, include, exclude, prompt), or 'shapes' for the built-in prompts"
            )
    if needs.classes is None:
        return
    allowed = set(needs.classes)
    for index, entry in enumerate(entries):
        for part in ("include", "exclude"):
            for clause in entry.get(part, ()):
                name = clause.get("class")
                if name not in allowed:
                    raise ValueError(
                        f"prompt {index + 1} of {source} ({entry.get('prompt', '')!r}) names class {name!r} in "
                        f"'{part}', which reward {reward!r} cannot detect; allowed: {', '.join(sorted(allowed))}"
                    )


def read_utf8(path: Path) -> str:
    """Return the text of ``path``, raising ``ValueError`` with the line and byte when it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: invalid UTF-8 byte 0x{data[error.start]:02x} at byte {error.start}; save the file as UTF-8"
        ) from None

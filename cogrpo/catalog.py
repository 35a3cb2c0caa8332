"""The project's registries: model backends, rewards (scorers) and benchmarks.

Rewards and benchmarks share the scorer entries: ``--reward NAME`` builds the
scorer, ``--bench NAME`` runs the benchmark that names it.
"""

from __future__ import annotations

from cogrpo.registry import Registry

MODELS = Registry("model")
MODELS.register(
    "shapes",
    "cogrpo.models.shapes:load_shapes_backend",
    description="embedded shapes-world MDM (UVit2DModel + VQModel, 32 px, 8x8 tokens), weights in the package",
    weights="cogrpo/assets/shapes",
)

REWARDS = Registry("reward")
REWARDS.register(
    "shapes",
    "cogrpo.rewards.shapes:ShapesReward",
    description="shapes world: GenEval judging with the shapes detector, partial credit in [0, 1]",
    weights="none (rule-based)",
)
REWARDS.register(
    "shapes-strict",
    "cogrpo.rewards.shapes:StrictShapesReward",
    description="shapes world: GenEval judging with the shapes detector, 1 if correct else 0",
    weights="none (rule-based)",
)

BENCHMARKS = Registry("benchmark")
BENCHMARKS.register(
    "shapes",
    "cogrpo.evaluation.suites:shapes_suite",
    description="held-out shapes prompts (GenEval format), 4 images each, GenEval judging with the shapes detector",
)

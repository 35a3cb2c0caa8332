"""The training configuration: one dataclass, validated before the first rollout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Mode = Literal["co", "model", "schedule"]
MODES: tuple[str, ...] = ("co", "model", "schedule")

# Fields that do not change what a run computes, so a resumed run may change them.
NON_TRAINING_FIELDS = frozenset(
    {"iterations", "out", "eval_every", "eval_limit", "checkpoint_every", "keep_checkpoints", "log_every", "device", "final_eval",
     "reward_timeout_s", "reward_retries", "collective_timeout_s", "deterministic", "divergence_grad_norm",
     "divergence_approx_kl", "divergence_patience", "ratio_tolerance"}
)

# Fields added after checkpoints were first written, with their defaults. Such a field enters the
# training hash only when it differs from its default, so checkpoints written before it existed still resume.
HASHED_WHEN_CHANGED: dict[str, Any] = {"max_invalid_reward_fraction": 0.05}


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class TrainConfig:
    """Settings of a Co-GRPO run. Defaults are the embedded preset (shapes model and reward)."""

    model: str = "shapes"
    model_path: str | None = None
    reward: str = "shapes"
    prompts: str = "shapes"
    mode: Mode = "co"
    iterations: int = 40
    prompts_per_iteration: int = 8
    group_size: int = 8
    steps: int = 12
    chunk_size: int = 16
    train_step_fraction: float = 0.5
    inner_epochs: int = 1
    schedule_inner_epochs: int = 4
    lora_rank: int = 0
    lora_alpha: float | None = None
    lr_model: float = 3e-4
    lr_schedule: float = 5e-2
    weight_decay: float = 0.0
    clip_range: float = 0.2
    kl_weight: float = 0.0
    max_grad_norm: float = 1.0
    model_phase_iterations: int = 1
    schedule_phase_iterations: int = 1
    schedule_knobs: tuple[str, ...] = ("mask_ratio", "sample_temperature", "remask_temperature", "guidance")
    schedule_init_std: float = 0.2
    schedule_learn_std: bool = True
    schedule_min_std: float = 0.02
    seed: int = 0
    eval_every: int = 0
    eval_limit: int = 64
    final_eval: bool = True
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    max_consecutive_skips: int = 5
    # The update is skipped on every process when more than this share of the iteration's rewards, counted
    # over all processes, is invalid (None, NaN, infinite or raised). Such skips count towards max_consecutive_skips.
    max_invalid_reward_fraction: float = 0.05
    # Divergence rule. An update is divergent when its gradient norm before clipping exceeds divergence_grad_norm
    # or its approximate KL to the rollout policy exceeds divergence_approx_kl (largest over inner epochs and
    # processes). After divergence_patience divergent updates in a row, training stops with exit code 3 and the
    # last checkpoint is kept. A threshold of 0 turns its rule off.
    divergence_grad_norm: float = 1000.0
    divergence_approx_kl: float = 1.0
    divergence_patience: int = 3
    # The first inner epoch of an update is on-policy, so its probability ratios should be 1. The trainer warns
    # when max |ratio - 1| exceeds this, because then rollout and update disagree (dtype, kernels or a bug).
    ratio_tolerance: float = 0.05
    # Seconds one reward batch call may take (0 disables the timeout), and retries after a call raises.
    reward_timeout_s: float = 600.0
    reward_retries: int = 2
    # Seconds a process waits in a collective (all-reduce, barrier) before it fails. It must exceed the
    # longest work that rank 0 does alone while the others wait: held-out evaluation and checkpoint writes.
    collective_timeout_s: float = 1800.0
    gradient_checkpointing: bool = False
    # Deterministic PyTorch algorithms (cogrpo.determinism). It only changes which GPU kernels run, and
    # hence float rounding, so it is not part of the training hash.
    deterministic: bool = False
    # Build the model from its configuration with random weights, for smoke tests. Result files mark such runs.
    random_weights: bool = False
    # Autocast dtype of transformer forward passes: auto (bf16 on CUDA, fp32 elsewhere), bf16 or fp32.
    dtype: str = "auto"
    device: str = "auto"
    out: str = "runs/shapes-co"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        self.schedule_knobs = tuple(self.schedule_knobs)
        self.validate()

    def _check_types(self) -> None:
        """Raise ``ValueError`` for a field whose value has the wrong type, such as ``iterations: 1.7`` in YAML.

        Integers are accepted for float fields and kept as they are, so the training hash of
        earlier runs does not change.
        """
        expected = {
            "int": ((int,), "an integer"),
            "float": ((int, float), "a number"),
            "float | None": ((int, float, type(None)), "a number or null"),
            "bool": ((bool,), "true or false (unquoted)"),
            "str": ((str,), "a string"),
            "str | None": ((str, type(None)), "a string or null"),
            "Mode": ((str,), "a string"),
            "tuple[str, ...]": ((list, tuple), "a list of strings"),
            "dict[str, Any]": ((dict,), "a mapping"),
        }
        for spec in dataclasses.fields(self):
            types, description = expected[str(spec.type)]
            value = getattr(self, spec.name)
            # bool is a subclass of int, but `iterations: true` is a mistake, not 1.
            wrong_bool = isinstance(value, bool) and bool not in types
            if wrong_bool or not isinstance(value, types):
                hint = ""
                if isinstance(value, str) and float in types and _parses_as_float(value):
                    hint = f" (YAML reads {value} as a string; write it with a decimal point, e.g. 1.0e-3)"
                raise ValueError(f"invalid {spec.name}={value!r} ({type(value).__name__}); expected {description}{hint}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field, its value and the allowed range."""

        def check(condition: bool, name: str, allowed: str) -> None:
            if not condition:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}; expected {allowed}")

        check(self.mode in MODES, "mode", f"one of {', '.join(MODES)}")
        check(self.iterations >= 0, "iterations", "an integer >= 0")
        check(self.prompts_per_iteration >= 1, "prompts_per_iteration", "an integer >= 1")
        check(self.group_size >= 2, "group_size", "an integer >= 2 (group-relative advantages need two images per prompt)")
        check(self.steps >= 1, "steps", "an integer >= 1")
        check(self.chunk_size >= 1, "chunk_size", "an integer >= 1")
        check(0.0 < self.train_step_fraction <= 1.0, "train_step_fraction", "a fraction in (0, 1]")
        check(self.inner_epochs >= 1, "inner_epochs", "an integer >= 1")
        check(self.schedule_inner_epochs >= 1, "schedule_inner_epochs", "an integer >= 1")
        check(self.lora_rank >= 0, "lora_rank", "an integer >= 0 (0 means full fine-tuning)")
        check(self.lr_model >= 0, "lr_model", "a learning rate >= 0")
        check(self.lr_schedule >= 0, "lr_schedule", "a learning rate >= 0")
        check(self.clip_range > 0, "clip_range", "a positive number")
        check(self.kl_weight >= 0, "kl_weight", "a number >= 0")
        check(self.max_grad_norm > 0, "max_grad_norm", "a positive number")
        check(self.model_phase_iterations >= 1, "model_phase_iterations", "an integer >= 1")
        check(self.schedule_phase_iterations >= 1, "schedule_phase_iterations", "an integer >= 1")
        check(self.schedule_init_std > 0, "schedule_init_std", "a positive standard deviation")
        check(0 < self.schedule_min_std <= self.schedule_init_std, "schedule_min_std", "a number in (0, schedule_init_std]")
        check(self.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0 (0 disables periodic checkpoints)")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "an integer >= 1")
        check(self.max_consecutive_skips >= 1, "max_consecutive_skips", "an integer >= 1")
        check(self.divergence_grad_norm >= 0, "divergence_grad_norm", "a number >= 0 (0 disables the rule)")
        check(self.divergence_approx_kl >= 0, "divergence_approx_kl", "a number >= 0 (0 disables the rule)")
        check(self.divergence_patience >= 1, "divergence_patience", "an integer >= 1")
        check(self.ratio_tolerance >= 0, "ratio_tolerance", "a number >= 0")
        check(0.0 <= self.max_invalid_reward_fraction <= 1.0, "max_invalid_reward_fraction",
              "a fraction in [0, 1] (1 never skips an update for invalid rewards)")
        from cogrpo.models.precision import DTYPE_CHOICES

        check(self.dtype in DTYPE_CHOICES, "dtype", f"one of {', '.join(DTYPE_CHOICES)}")
        check(not (self.random_weights and self.model_path), "random_weights",
              "False when model_path is set (random weights are built from the model's configuration, not loaded)")
        check(self.reward_timeout_s >= 0, "reward_timeout_s", "seconds >= 0 (0 disables the timeout)")
        check(self.reward_retries >= 0, "reward_retries", "an integer >= 0")
        check(self.collective_timeout_s > 0, "collective_timeout_s", "a positive number of seconds")
        from cogrpo.sampling.schedule import KNOBS

        unknown = set(self.schedule_knobs) - set(KNOBS)
        if unknown or not self.schedule_knobs:
            raise ValueError(f"invalid schedule_knobs={list(self.schedule_knobs)!r}; expected a non-empty subset of {', '.join(KNOBS)}")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-compatible data."""
        data = dataclasses.asdict(self)
        data["schedule_knobs"] = list(self.schedule_knobs)
        return data

    def training_hash(self) -> str:
        """Return the SHA-256 of the fields that change what the run computes."""
        data = {k: v for k, v in self.to_dict().items()
                if k not in NON_TRAINING_FIELDS and not (k in HASHED_WHEN_CHANGED and v == HASHED_WHEN_CHANGED[k])}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML file or a packaged preset name; keys must be field names (typos fail with the allowed names)."""
        path = Path(path)
        if not path.exists():
            packaged = Path(__file__).resolve().parent.parent / "presets" / f"{path.stem}.yaml"
            if not packaged.exists():
                presets = sorted(p.stem for p in packaged.parent.glob("*.yaml"))
                raise ValueError(f"config {str(path)!r} not found; pass a YAML file or one of the presets: {', '.join(presets)}")
            path = packaged
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: invalid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of option names to values")
        data.pop("sources", None)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build a configuration from a mapping, rejecting unknown keys."""
        import difflib

        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{source}: unknown option {key!r}.{hint} Allowed: {', '.join(names)}")
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

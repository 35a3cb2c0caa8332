"""Running a training job: building its parts, checkpoints, resume, logs and the final table."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cogrpo.checkpoint_io import (
    atomic_write_json,
    atomic_write_text,
    checkpoint_name,
    clean_staging,
    commit_checkpoint,
    latest_valid_checkpoint,
    prune_checkpoints,
)
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.state import load_optimizer, load_trainable_state, save_optimizer, trainable_state
from cogrpo.rl.trainer import CoGRPOTrainer

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# Invalid rewards, one JSON object per line, appended by rank 0 (see CoGRPOTrainer.score_with_failures).
FAILURES_FILE = "failures.jsonl"
METRICS_FILE = "metrics.jsonl"


def drop_records_from(path: Path, iteration: int) -> int:
    """Rewrite the JSON Lines file ``path`` without records of ``iteration`` or later; return how many were dropped.

    A resumed run repeats the iterations after its checkpoint, so their records
    from before the kill would otherwise appear twice. A truncated last line (a
    kill during a write) is dropped too.
    """
    if not path.exists():
        return 0
    remaining, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int) and record["iteration"] >= iteration:
            dropped += 1
            continue
        remaining.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in remaining))
    return dropped


class ResumeMismatchError(RuntimeError):
    """A checkpoint whose configuration, world size or base model differs from the current run."""


class RankOutOfMemory(RuntimeError):
    """An out-of-memory error in this process, which then stopped without entering another collective."""


def resolve_device(name: str) -> torch.device:
    """Return the device for ``"auto"`` (CUDA when available), or the named one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in {"cpu", "cuda"}:
        raise ValueError(f"invalid device {name!r}; allowed: cpu, cuda, cuda:N, auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"invalid device {name!r}: no CUDA device is available here; pass --device cpu or auto")
    return torch.device(name)


def build_backend(config: TrainConfig, device: torch.device):
    """Build the model backend named by the configuration, with its compute dtype set from ``config.dtype``."""
    from cogrpo.catalog import MODELS
    from cogrpo.models.precision import resolve_dtype

    loader = MODELS.get(config.model)
    kwargs: dict[str, Any] = {"device": device}
    if config.random_weights:
        kwargs["random_weights"] = True
    if config.model_path is not None:
        kwargs["path"] = config.model_path
    backend = loader(**kwargs)
    backend.compute_dtype = resolve_dtype(config.dtype, device)
    return backend


def model_info(config: TrainConfig, backend) -> dict[str, Any]:
    """Return the base model's description for result files.

    It contains the name, revision, random weights flag, compute dtype and ``weight_sha256``,
    the SHA-256 of each weight file the model was loaded from (see ``base_model_weight_sha256``).
    """
    from cogrpo.models.precision import dtype_name

    return {
        "name": getattr(backend, "name", config.model),
        "revision": getattr(backend, "revision", None),
        "random_weights": config.random_weights,
        "dtype": dtype_name(getattr(backend, "compute_dtype", torch.float32)),
        "weight_sha256": base_model_weight_sha256(config, backend),
    }


def base_model_folder(config: TrainConfig, backend) -> Path | None:
    """Return the local folder that the base model's weights were loaded from, or None for random weights.

    That is the backend's ``weights_dir`` (a resolved hub snapshot or a local folder),
    else ``--model-path``, else the embedded shapes model's asset folder.
    """
    if config.random_weights:
        return None
    folder = getattr(backend, "weights_dir", None)
    if folder is not None:
        return Path(folder)
    if config.model_path is not None:
        return Path(config.model_path)
    if config.model == "shapes":
        from cogrpo.models.shapes import weights_dir

        return weights_dir(None)
    return None


def base_model_weight_sha256(config: TrainConfig, backend) -> dict[str, str]:
    """Return the SHA-256 of each weight file of the base model's folder, keyed by path relative to it.

    Weight files are those with a suffix of ``cogrpo.weight_digests.WEIGHT_SUFFIXES``.
    Each file is hashed once per process. Random-weight models give an empty dictionary.
    Components loaded from another folder (the backend's ``extra_weight_dirs``,
    such as Meissonic's ``text_encoder_source``) add keys ``<label>/<relative path>``.
    """
    from cogrpo.weight_digests import folder_weight_sha256

    folder = base_model_folder(config, backend)
    if folder is None:
        return {}
    digests = folder_weight_sha256(folder)
    for label, extra in getattr(backend, "extra_weight_dirs", {}).items():
        digests.update({f"{label}/{relative}": digest for relative, digest in folder_weight_sha256(extra).items()})
    return digests


def build_reward(spec: str, device: torch.device | None = None, timeout_s: float | None = 300.0):
    """Build one scorer, a weighted mix from ``name=w,name=w``, or a remote scorer from an http(s) URL.

    ``timeout_s`` is the remote scorer's timeout per socket operation (None: no timeout); others ignore it.
    """
    from cogrpo.catalog import REWARDS
    from cogrpo.rewards.remote import RemoteScorer, is_remote_spec

    if is_remote_spec(spec):
        return RemoteScorer(spec, timeout_s=timeout_s)
    if "=" not in spec and "," not in spec:
        return REWARDS.create(spec)
    from cogrpo.rewards.mix import WeightedMix

    return WeightedMix.from_spec(spec, REWARDS.create, REWARDS.names())


def save_checkpoint(trainer: CoGRPOTrainer, run_dir: Path) -> Path | None:
    """Write an atomic checkpoint of the trainer (rank 0 writes; every rank waits)."""
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    digests = [parameter_digest(trainer)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        digests = gather_object(digests)
    path = None
    if accelerator.is_main_process:
        config = trainer.config
        if len(set(digests)) > 1:
            logger.error("iteration %d: the trained parameters differ between ranks (SHA-256 per rank: %s). "
                         "The checkpoint contains rank 0's copy", trainer.iteration, digests)

        def write(folder: Path) -> None:
            save_file(trainable_state(trainer.unwrapped_transformer), str(folder / "model.safetensors"))
            save_file({k: v.detach().cpu().contiguous() for k, v in trainer.schedule_policy.state_dict().items()},
                      str(folder / "schedule.safetensors"))
            if trainer.model_optimizer is not None:
                save_optimizer(trainer.model_optimizer, folder, "model_optimizer")
            if trainer.schedule_optimizer is not None:
                save_optimizer(trainer.schedule_optimizer, folder, "schedule_optimizer")
            state = {
                "rank_parameter_sha256": digests,
                "iteration": trainer.iteration,
                "consecutive_skips": trainer.consecutive_skips,
                "consecutive_divergent": trainer.consecutive_divergent,
                "skip_counts": trainer.skip_counts,
                "config": config.to_dict(),
                "config_hash": config.training_hash(),
                "world_size": accelerator.num_processes,
                "base_model": getattr(trainer.backend, "name", config.model),
                "base_model_revision": getattr(trainer.backend, "revision", None),
                "lora": {"rank": config.lora_rank, "alpha": config.lora_alpha or config.lora_rank} if config.lora_rank else None,
            }
            (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")

        path = commit_checkpoint(run_dir, checkpoint_name(trainer.iteration), write,
                                 {"iteration": trainer.iteration, "config_hash": config.training_hash()})
        prune_checkpoints(run_dir, config.keep_checkpoints)
    accelerator.wait_for_everyone()
    return path


def parameter_digest(trainer: CoGRPOTrainer) -> str:
    """Return the SHA-256 of this process's trainable model parameters and schedule policy state."""
    digest = hashlib.sha256()
    tensors = {**trainable_state(trainer.unwrapped_transformer),
               **{f"schedule.{k}": v for k, v in trainer.schedule_policy.state_dict().items()}}
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(trainer: CoGRPOTrainer, path: Path, allow_mismatch: bool = False) -> dict[str, Any]:
    """Restore a checkpoint into ``trainer``; refuse a different config, world size or base model unless allowed."""
    state = json.loads((path / TRAINER_STATE).read_text())
    config = trainer.config
    problems = []
    if state["config_hash"] != config.training_hash():
        saved = state["config"]
        current = config.to_dict()
        changed = sorted(k for k in current if k in saved and saved[k] != current[k] and k not in {"iterations", "out"})
        problems.append(f"training configuration differs (changed: {', '.join(changed) or 'unknown fields'})")
    if state["world_size"] != trainer.accelerator.num_processes:
        problems.append(f"world size was {state['world_size']}, now {trainer.accelerator.num_processes}")
    revision = getattr(trainer.backend, "revision", None)
    if state.get("base_model_revision") != revision:
        problems.append(f"base model revision was {state.get('base_model_revision')}, now {revision}")
    if problems and not allow_mismatch:
        raise ResumeMismatchError(
            f"cannot resume from {path}: " + "; ".join(problems) + ". Pass --allow-inexact-resume to resume anyway."
        )
    load_trainable_state(trainer.unwrapped_transformer, load_file(str(path / "model.safetensors")))
    trainer.schedule_policy.load_state_dict(load_file(str(path / "schedule.safetensors")))
    if trainer.model_optimizer is not None:
        load_optimizer(trainer.model_optimizer, path, "model_optimizer")
    if trainer.schedule_optimizer is not None:
        load_optimizer(trainer.schedule_optimizer, path, "schedule_optimizer")
    trainer.iteration = int(state["iteration"])
    trainer.consecutive_skips = int(state.get("consecutive_skips", 0))
    trainer.consecutive_divergent = int(state.get("consecutive_divergent", 0))
    trainer.skip_counts.update({k: int(v) for k, v in state.get("skip_counts", {}).items()})
    return {"path": str(path), "iteration": trainer.iteration, "mismatches": problems}


class MetricsLogger:
    """TensorBoard scalars plus a ``metrics.jsonl`` file, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = (run_dir / METRICS_FILE).open("a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training without it
                logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"iteration": step, **clean}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


def make_accelerator(device: torch.device, collective_timeout_s: float | None = None):
    """Return an accelerate ``Accelerator`` for ``device`` (gloo on CPU when launched with several processes).

    ``collective_timeout_s`` sets the process-group timeout, so a process waiting in a collective for a
    peer that died or hangs raises instead of waiting forever (None keeps PyTorch's default).
    """
    from accelerate import Accelerator

    handlers = []
    if collective_timeout_s is not None:
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s)))
    return Accelerator(cpu=device.type == "cpu", kwargs_handlers=handlers)


def load_trained(run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
                 dtype: str | None = None):
    """Load a trained run for sampling or evaluation: returns (backend, schedule policy, info).

    ``run_dir`` may be a run folder (its newest valid checkpoint is used) or a
    checkpoint folder. ``dtype`` replaces the run's compute dtype setting.
    """
    from cogrpo.checkpoint_io import verify_checkpoint
    from cogrpo.sampling.schedule import SchedulePolicy

    run_dir = Path(run_dir)
    if checkpoint:
        path = Path(checkpoint)
    elif (run_dir / TRAINER_STATE).exists():
        path = run_dir
    else:
        path = latest_valid_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no valid checkpoint found in {run_dir}; expected checkpoint-<iteration> folders written by `cogrpo train`")
    manifest = verify_checkpoint(path)
    state = json.loads((path / TRAINER_STATE).read_text())
    overrides = {"device": str(device)} if dtype is None else {"device": str(device), "dtype": dtype}
    config = TrainConfig.from_dict({**state["config"], **overrides}, source=str(path / TRAINER_STATE))
    backend = build_backend(config, torch.device(device))
    if state.get("lora"):
        from peft import LoraConfig

        backend.transformer.add_adapter(
            LoraConfig(r=state["lora"]["rank"], lora_alpha=state["lora"]["alpha"], init_lora_weights="gaussian",
                       target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
        backend.transformer.requires_grad_(False)
        for name, p in backend.transformer.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    else:
        backend.transformer.requires_grad_(config.mode != "schedule")
    # A schedule-only run trains no model parameter, so its model file is empty and the base stays as is.
    load_trainable_state(backend.transformer, load_file(str(path / "model.safetensors")))
    backend.transformer.requires_grad_(False).eval()
    policy = SchedulePolicy(backend.default_schedule(config.steps), learn=config.schedule_knobs,
                            init_std=config.schedule_init_std, learn_std=config.schedule_learn_std,
                            min_std=config.schedule_min_std)
    policy.load_state_dict(load_file(str(path / "schedule.safetensors")))
    checkpoint_hash = __import__("hashlib").sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()
    info = {"checkpoint": str(path), "checkpoint_sha256": checkpoint_hash, "iteration": state["iteration"],
            "mode": config.mode, "steps": config.steps, "base_model": state.get("base_model"),
            "base_model_revision": state.get("base_model_revision"), "random_weights": config.random_weights,
            "dtype": model_info(config, backend)["dtype"],
            "base_model_weight_sha256": base_model_weight_sha256(config, backend)}
    return backend, policy, info


def train(config: TrainConfig, resume: str | Path | None = None, allow_inexact_resume: bool = False,
          reward=None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a training job; returns the summary written to ``summary.json``."""
    from cogrpo.determinism import determinism_record, enable_deterministic
    from cogrpo.evaluation.runner import evaluate_in_memory
    from cogrpo.evaluation.suites import shapes_suite

    if config.deterministic:
        enable_deterministic()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    accelerator = make_accelerator(device, config.collective_timeout_s)
    run_dir = Path(resume) if resume else Path(config.out)
    if not resume and any(any(run_dir.glob(pattern)) for pattern in ("summary.json", "metrics.jsonl", "checkpoint-*")):
        raise FileExistsError(f"{run_dir} already contains a training run; pass --resume {run_dir} to continue it, "
                              "or choose another --out")
    backend = build_backend(config, device)
    scorer = reward if reward is not None else build_reward(config.reward, device, timeout_s=config.reward_timeout_s or None)
    trainer = CoGRPOTrainer(config, backend, scorer, accelerator=accelerator, failures_path=run_dir / FAILURES_FILE)
    is_main = accelerator.is_main_process
    resumed = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_staging(run_dir)
    accelerator.wait_for_everyone()
    if resume:
        path = latest_valid_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume {run_dir}: no valid checkpoint found there")
        resumed = load_checkpoint(trainer, path, allow_inexact_resume)
        logger.info("resumed from %s at iteration %d", path, trainer.iteration)
        if is_main:
            for name in (METRICS_FILE, FAILURES_FILE):
                dropped = drop_records_from(run_dir / name, trainer.iteration)
                if dropped:
                    logger.info("%s: dropped %d records of iterations from %d on, which run again", name, dropped,
                                trainer.iteration)
        if trainer.iteration >= config.iterations:
            logger.warning("%s already has %d iterations and --iterations is %d, so nothing is trained; pass a "
                           "larger --iterations to continue", run_dir, trainer.iteration, config.iterations)
    metrics_log = MetricsLogger(run_dir, is_main)
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    # The configuration of the latest start; an inexact resume records what changed under "resumes".
    summary["config"] = config.to_dict()
    # Written on every start, so a resumed run records the dtype it ran in last.
    summary["model"] = model_info(config, backend)
    summary["determinism"] = determinism_record()
    summary.setdefault("resumes", [])
    if resumed:
        summary["resumes"].append(resumed)
        if is_main:
            # Written now, so that a run killed again before its end still records this resume.
            atomic_write_json(summary_path, summary)
    suite = shapes_suite() if config.model == "shapes" else None
    evaluate = suite is not None and (config.final_eval or config.eval_every)

    def held_out(schedule) -> dict[str, float]:
        return evaluate_in_memory(suite, backend, schedule, steps=config.steps, seed=config.seed + 1000,
                                  limit=config.eval_limit, images_per_prompt=2)

    if evaluate and is_main and "before" not in summary and config.final_eval:
        summary["before"] = {"default": held_out(None)}
    accelerator.wait_for_everyone()

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    start = time.time()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, disable=not (progress and is_main)) as bar:
        task = bar.add_task(f"train ({config.mode})", total=config.iterations, completed=trainer.iteration, status="")
        while trainer.iteration < config.iterations:
            # A process that fails mid-iteration must not enter another collective, such as a checkpoint's
            # barrier, because its peers may be blocked in a different one and mismatched collectives hang.
            # So it logs, raises and exits. Its peers are then stopped by the launcher (torchrun and
            # `accelerate launch` stop every worker when one exits with an error), by gloo's error on the
            # closed connection, or at the latest by the process-group timeout ``collective_timeout_s``.
            try:
                result = trainer.train_iteration()
            except torch.OutOfMemoryError as error:
                logger.error("iteration %d (rank %d): out of memory: %s; stopping this process, the last checkpoint is kept",
                             trainer.iteration, accelerator.process_index, error)
                raise RankOutOfMemory(
                    f"rank {accelerator.process_index} ran out of memory at iteration {trainer.iteration}; resume "
                    f"from the last checkpoint with a smaller chunk_size or prompts_per_iteration"
                ) from error
            metrics = dict(result.metrics)
            metrics["phase/model"] = 1.0 if result.phase == "model" else 0.0
            metrics["skipped"] = float(result.skipped)
            if evaluate and config.eval_every and trainer.iteration % config.eval_every == 0 and is_main:
                for key, value in held_out(trainer.schedule_policy if config.mode != "model" else None).items():
                    metrics[f"eval/{key}"] = value
            metrics_log.log(result.iteration, metrics)
            reward_key = f"rewards/{scorer.name}/mean"
            bar.update(task, completed=trainer.iteration,
                       status=f"{result.phase} reward {metrics.get(reward_key, float('nan')):.3f}")
            if config.checkpoint_every and trainer.iteration % config.checkpoint_every == 0:
                save_checkpoint(trainer, run_dir)
    if trainer.iteration and (not config.checkpoint_every or trainer.iteration % config.checkpoint_every):
        save_checkpoint(trainer, run_dir)
    metrics_log.close()
    summary["iterations"] = trainer.iteration
    summary["skipped_updates"] = dict(trainer.skip_counts)
    summary["wall_time_s"] = summary.get("wall_time_s", 0.0) + (time.time() - start)
    if evaluate and is_main and config.final_eval:
        after = {"default": held_out(None)}
        if config.mode != "model":
            after["learned"] = held_out(trainer.schedule_policy)
        summary["after"] = after
    summary["rewards"] = [
        {"iteration": r.iteration, "phase": r.phase, "mean": float(np.nanmean(r.rewards)) if np.isfinite(r.rewards).any() else None}
        for r in trainer.history
    ]
    if is_main:
        atomic_write_json(summary_path, summary)
    accelerator.wait_for_everyone()
    summary["_trainer"] = trainer
    return summary

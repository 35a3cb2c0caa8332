"""The ``cogrpo`` command line: a thin Typer layer over the library's configuration objects."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Co-GRPO for masked image generators: pretrain the embedded model, sample, train, evaluate, build tables.",
)
console = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "huggingface_hub", "diffusers", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Exit code of `cogrpo eval` when samples failed and --allow-partial was not given (result.json is still written).
EXIT_FAILED_SAMPLES = 5


def _fail(message: str) -> None:
    # Messages carry file names, prompts and values, whose square brackets rich would read as markup.
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=2)


@app.callback()
def _check_environment() -> None:
    # Runs before every command. An old torch exits with code 2 before any model or weights file is loaded.
    from cogrpo.torch_version import UnsupportedTorchError, check_torch_version

    try:
        check_torch_version()
    except UnsupportedTorchError as error:
        _fail(str(error))


def _enable_deterministic() -> None:
    from cogrpo.determinism import DeterminismError, enable_deterministic

    try:
        enable_deterministic()
    except DeterminismError as error:
        _fail(str(error))


@app.command("list")
def list_entries() -> None:
    """List the registered models, rewards and benchmarks, and whether their weights are here."""
    from cogrpo.catalog import BENCHMARKS, MODELS, REWARDS

    table = Table(title="cogrpo registry")
    for column in ("kind", "name", "weights", "available", "description"):
        table.add_column(column)
    for registry in (MODELS, REWARDS, BENCHMARKS):
        for entry in registry:
            available = _availability(entry)
            table.add_row(registry.kind, entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else ""),
                          str(entry.info.get("weights", "-")), available, entry.description)
    console.print(table)


def _availability(entry) -> str:
    import importlib

    check = entry.info.get("check")
    if check:
        module, _, attr = check.partition(":")
        return "yes" if getattr(importlib.import_module(module), attr)() else "no"
    spec = entry.info.get("spec")
    if spec:
        module, _, attr = spec.partition(":")
        try:
            spec_obj = getattr(importlib.import_module(module), attr)
            key = entry.info.get("spec_key")
            if key is not None:
                spec_obj = spec_obj[key]
            specs = spec_obj if isinstance(spec_obj, (list, tuple)) else [spec_obj]
            specs = [s for s in specs if hasattr(s, "local_file")]
            if not specs:
                return "unknown"
            return "yes" if all(s.local_file() is not None for s in specs) else "no (downloads on first use)"
        except Exception:  # noqa: BLE001 - availability is informational only
            return "unknown"
    weights = str(entry.info.get("weights", ""))
    if weights.startswith("none"):
        return "yes"
    return "no (downloads on first use)" if weights else "-"


@app.command()
def pretrain(
    stage: str = typer.Option("all", help="Which stage to run: vq, mdm or all."),
    vq_steps: int = typer.Option(1500, help="Optimiser steps of the VQ tokenizer's first phase (a plain autoencoder over the world's distinct patches)."),
    vq_finetune_steps: int = typer.Option(1500, help="Optimiser steps of the VQ tokenizer's second phase, through the quantiser after the codebook is set from the latents (0 skips it)."),
    mdm_steps: int = typer.Option(8000, help="Optimiser steps of the masked transformer stage."),
    batch_size: int = typer.Option(64, help="Images per optimiser step of the transformer stage."),
    out: Path = typer.Option(..., help="Output folder (created if missing). --stage mdm reads the tokenizer from "
                             "OUT/vqvae. To replace the embedded model of a source checkout, pass cogrpo/assets/shapes."),
    seed: int = typer.Option(0, help="Seed of the scene generator and the initialisation."),
    verbose: bool = typer.Option(True, help="Log progress."),
) -> None:
    """Pretrain the embedded shapes model: the VQ tokenizer, then the masked transformer."""
    _setup_logging(verbose)
    from cogrpo.pretrain import MDMTrainConfig, VQTrainConfig, train_mdm, train_vq

    if stage not in {"vq", "mdm", "all"}:
        _fail(f"invalid --stage {stage!r}; allowed: vq, mdm, all")
    if vq_finetune_steps < 0:
        _fail(f"invalid --vq-finetune-steps {vq_finetune_steps}; expected 0 or more")
    if vq_steps < 1 or mdm_steps < 1 or batch_size < 1:
        _fail("--vq-steps, --mdm-steps and --batch-size must be at least 1")
    if stage == "mdm" and not (out / "vqvae" / "config.json").is_file():
        _fail(f"--stage mdm needs a trained tokenizer in {out / 'vqvae'}, which is missing; run --stage vq (or all) "
              "with this --out first, or copy a vqvae/ folder there")
    target = _safe_out(out)
    if stage in {"vq", "all"}:
        train_vq(VQTrainConfig(steps=vq_steps, finetune_steps=vq_finetune_steps, seed=seed), target / "vqvae")
    if stage in {"mdm", "all"}:
        train_mdm(MDMTrainConfig(steps=mdm_steps, batch_size=batch_size, seed=seed, save_every=max(1, min(500, mdm_steps))), target)
    console.print(f"pretrained weights written to {escape(str(target))}")


def _load_model_or_raise(model: str, model_path: Optional[str], checkpoint: Optional[Path], schedule: str, steps: int, device,
                random_weights: bool = False, dtype: str = "auto"):
    """Load a registered backend, or a trained run with its schedule policy, and return (backend, policy, info).

    ``info`` describes the base model, including ``random_weights`` and the compute ``dtype``.
    """
    from cogrpo.models.precision import DTYPE_CHOICES
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import build_backend, load_trained, model_info

    if dtype not in DTYPE_CHOICES:
        _fail(f"invalid --dtype {dtype!r}; allowed: {', '.join(DTYPE_CHOICES)}")
    if random_weights and model_path:
        _fail("--random-weights builds the model from its configuration; drop --model-path")
    if checkpoint is not None:
        if random_weights:
            _fail("--random-weights does not apply to --checkpoint: the run's configuration decides its base model")
        backend, policy, info = load_trained(checkpoint, device, dtype=dtype)
        if schedule == "learned" and info.get("mode") == "model":
            _fail(f"--schedule learned: the run at {checkpoint} trained the model only (--mode model), so its schedule "
                  "is the untrained default; pass --schedule default")
        if schedule == "learned" and policy.steps != steps:
            _fail(f"the learned schedule has {policy.steps} steps; pass --steps {policy.steps}")
        return backend, policy, info
    if schedule == "learned":
        _fail("--schedule learned needs --checkpoint RUN_DIR")
    config = TrainConfig(model=model, model_path=model_path, random_weights=random_weights, dtype=dtype)
    backend = build_backend(config, device)
    return backend, None, model_info(config, backend)


def _load_model(model: str, model_path: Optional[str], checkpoint: Optional[Path], schedule: str, steps: int, device,
                random_weights: bool = False, dtype: str = "auto"):
    """Load the model like ``_load_model_or_raise``, turning a missing or unknown model into a CLI error."""
    from cogrpo.checkpoint_io import CorruptCheckpointError
    from cogrpo.rl.run import ResumeMismatchError

    try:
        return _load_model_or_raise(model, model_path, checkpoint, schedule, steps, device, random_weights, dtype)
    except (KeyError, ValueError, FileNotFoundError, ResumeMismatchError, CorruptCheckpointError) as error:
        _fail(str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error))


def _device(name: str):
    from cogrpo.rl.run import resolve_device

    try:
        return resolve_device(name)
    except ValueError as error:
        _fail(str(error))


def _check_steps(backend, steps: int) -> None:
    tokens_per_image = backend.grid[0] * backend.grid[1]
    if steps > tokens_per_image:
        _fail(f"invalid --steps {steps}: {backend.name} images have {tokens_per_image} tokens, so at most "
              f"{tokens_per_image} steps can each commit a token; pass --steps {tokens_per_image} or fewer")


def _warn_random_weights(info: dict) -> None:
    if info.get("random_weights"):
        console.print("[yellow]warning:[/yellow] the model has random weights; its outputs are not real model results "
                      "(marked random_weights: true in the written JSON)")


def _warn_prompts(backend, prompts: list[str]) -> None:
    """Warn about empty prompts and prompts longer than the text encoder reads (they are truncated)."""
    tokenizer = getattr(backend, "tokenizer", None)
    limit = getattr(backend, "text_max_length", None)
    for index, text in enumerate(prompts):
        if not text.strip():
            console.print(f"[yellow]warning:[/yellow] prompt {index} is empty, so its images are unconditional samples")
            continue
        if tokenizer is None or limit is None:
            continue
        length = len(tokenizer(text, truncation=False)["input_ids"])
        if length > limit:
            console.print(f"[yellow]warning:[/yellow] prompt {index} has {length} tokens; the text encoder reads the "
                          f"first {limit}, so the rest is ignored: {escape(repr(text))}")


def _sample_names(prompts: int, n: int) -> list[str]:
    return [f"{i:03d}-{k:03d}.png" for i in range(prompts) for k in range(n)] + ["grid.png", "prompts.json"]


def _replace_earlier_sample(out: Path, prompts: int, n: int) -> None:
    """Delete the files that an earlier `cogrpo sample` wrote to ``out`` (as listed in its prompts.json).

    Fails, deleting nothing, when a file this sample would write exists and no
    earlier sample wrote it, so a user's own files are never overwritten.
    """
    earlier: set[str] = set()
    record_file = out / "prompts.json"
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
            earlier = set(_sample_names(len(record["prompts"]), int(record["n"])))
        except (ValueError, KeyError, TypeError):
            earlier = set()
    clashes = [name for name in _sample_names(prompts, n) if (out / name).exists() and name not in earlier]
    if clashes:
        _fail(f"--out {out} already contains {', '.join(clashes[:3])}{' and more' if len(clashes) > 3 else ''}, "
              "which no earlier `cogrpo sample` wrote; pass another --out, or move those files")
    for name in sorted(earlier):
        (out / name).unlink(missing_ok=True)


def _safe_out(out: Path) -> Path:
    """Create the output folder ``out`` and return it resolved, failing clearly when a file is in the way."""
    out = out.resolve()
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                _fail(f"invalid --out {out}: {folder} is a file; pass a folder path")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail(f"cannot create --out {out}: {error.strerror}; pass a writable folder")
    return out


@app.command()
def sample(
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text; repeat the option for several prompts."),
    n: int = typer.Option(4, help="Images per prompt."),
    steps: int = typer.Option(12, help="Decoding steps T."),
    seed: int = typer.Option(0, help="Seed; image k of prompt i uses a generator seeded from (seed, i, k)."),
    out: Path = typer.Option(Path("outputs/samples"), help="Folder for the PNGs and grid.png (created if missing). "
                             "The images of an earlier sample into this folder are replaced; other files of the same names "
                             "stop the command."),
    model: str = typer.Option("shapes", help="Registered model backend."),
    model_path: Optional[Path] = typer.Option(None, help="Local weights folder for the backend."),
    checkpoint: Optional[Path] = typer.Option(None, help="Run folder (or checkpoint folder) of `cogrpo train` to sample from."),
    schedule: str = typer.Option("default", help="default (the backend's hand-set schedule) or learned (the trained policy's mean)."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Build the model at full size with random weights, without downloads (smoke tests only)."),
    dtype: str = typer.Option("auto", help="Compute dtype of the transformer: bf16 (autocast), fp32, or auto (bf16 on CUDA, fp32 otherwise)."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Sample images for prompts and write PNGs (and a grid) under --out."""
    _setup_logging(False)
    import numpy as np
    from PIL import Image

    from cogrpo.rl.run import resolve_device
    from cogrpo.rl.trainer import derive_seed
    from cogrpo.sampling.sampler import image_generators
    from cogrpo.sampling.sampler import sample as run_sampler

    if n < 1 or steps < 1:
        _fail(f"invalid --n {n} or --steps {steps}; both must be at least 1")
    if schedule not in {"default", "learned"}:
        _fail(f"invalid --schedule {schedule!r}; allowed: default, learned")
    dev = _device(device)
    backend, policy, info = _load_model(model, str(model_path) if model_path else None, checkpoint, schedule, steps, dev,
                                        random_weights, dtype)
    _warn_random_weights(info)
    _check_steps(backend, steps)
    _warn_prompts(backend, prompt)
    out = _safe_out(out)
    _replace_earlier_sample(out, len(prompt), n)
    jobs = [(i, k) for i in range(len(prompt)) for k in range(n)]
    seeds = [derive_seed(seed, i, k) for i, k in jobs]
    trajectory = run_sampler(backend, [prompt[i] for i, _ in jobs], image_generators(seeds), steps=steps,
                             schedule=policy if schedule == "learned" else None, schedule_mode="mean")
    images = backend.decode(trajectory.tokens.view(-1, *trajectory.grid))
    for (i, k), image in zip(jobs, images):
        Image.fromarray(image).save(out / f"{i:03d}-{k:03d}.png")
    rows = [np.concatenate(list(images[i * n : (i + 1) * n]), axis=1) for i in range(len(prompt))]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "grid.png")
    record = {"prompts": prompt, "n": n, "steps": steps, "seed": seed, "schedule": schedule, "model": info}
    (out / "prompts.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {len(images)} images and grid.png to {escape(str(out))}")


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, help="YAML preset; command-line options override its values."),
    model: Optional[str] = typer.Option(None, help="Registered model backend (default: shapes)."),
    model_path: Optional[str] = typer.Option(None, help="Local weights folder for the backend."),
    reward: Optional[str] = typer.Option(None, help="Reward name, weighted mix such as 'hps=1,imagereward=0.5', or the URL of a "
                                         "scoring server, e.g. http://127.0.0.1:8000/score (default: shapes)."),
    prompts: Optional[str] = typer.Option(None, help="'shapes' or a .txt / GenEval .jsonl prompt file (default: shapes)."),
    mode: Optional[str] = typer.Option(None, help="co (Co-GRPO), model (naive GRPO, default schedule) or schedule (frozen model) (default: co)."),
    iterations: Optional[int] = typer.Option(None, help="Training iterations (each: one rollout and one update) (default: 40)."),
    prompts_per_iteration: Optional[int] = typer.Option(None, help="Prompts per iteration over all processes (default: 8)."),
    group_size: Optional[int] = typer.Option(None, help="Images per prompt (G >= 2) (default: 8)."),
    steps: Optional[int] = typer.Option(None, help="Decoding steps T of the rollouts (default: 12)."),
    train_step_fraction: Optional[float] = typer.Option(None, help="Share of the T steps trained per iteration, in (0, 1] (default: 0.5)."),
    lora_rank: Optional[int] = typer.Option(None, help="LoRA rank on the attention projections; 0 = full fine-tuning (default: 0)."),
    lr_model: Optional[float] = typer.Option(None, help="Learning rate of the model parameters (default: 0.0003)."),
    lr_schedule: Optional[float] = typer.Option(None, help="Learning rate of the schedule policy (default: 0.05)."),
    clip_range: Optional[float] = typer.Option(None, help="PPO clip range epsilon of the ratio (default: 0.2)."),
    kl_weight: Optional[float] = typer.Option(None, help="Weight of the k3 KL to the reference model (0 = off) (default: 0.0)."),
    seed: Optional[int] = typer.Option(None, help="Seed of prompts, rollouts and step selection (default: 0)."),
    chunk_size: Optional[int] = typer.Option(None, help="Images per forward pass (micro-batch) in rollouts and updates (default: 16)."),
    eval_every: Optional[int] = typer.Option(None, help="Held-out evaluation every N iterations (0 = only before and after) (default: 0)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N iterations (0 = only at the end) (default: 10)."),
    final_eval: Optional[bool] = typer.Option(None, "--final-eval/--no-final-eval", help="Evaluate on held-out prompts before and after training."),
    out: Optional[str] = typer.Option(None, help="Run folder for checkpoints, logs and summary.json (default: runs/shapes-co)."),
    resume: Optional[Path] = typer.Option(None, help="Resume the run in this folder from its newest valid checkpoint."),
    allow_inexact_resume: bool = typer.Option(False, "--allow-inexact-resume", help="Resume even if the config, world size or base model differ (recorded)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, or auto (default: auto)."),
    reward_timeout: Optional[float] = typer.Option(None, help="Seconds one reward batch call may take before its images count as failed (0 = no limit; default 600)."),
    reward_retries: Optional[int] = typer.Option(None, help="Retries, with doubling backoff, of a reward call that raised (default 2)."),
    max_invalid_reward_fraction: Optional[float] = typer.Option(
        None, help="Skip an iteration's update on every process when more than this share of its rewards is invalid "
        "(default 0.05); failures go to RUN_DIR/failures.jsonl, and skips count towards the consecutive-skip limit."),
    deterministic: Optional[bool] = typer.Option(
        None, "--deterministic", help="Use deterministic PyTorch algorithms (set before CUDA starts; recorded in "
        "summary.json). Runs match only on the same versions, hardware and number of processes."),
    random_weights: Optional[bool] = typer.Option(None, "--random-weights", help="Build the model at full size with random weights, without downloads (smoke tests only)."),
    dtype: Optional[str] = typer.Option(None, help="Compute dtype of the transformer: bf16 (autocast), fp32, or auto (default: bf16 on CUDA, fp32 otherwise)."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing", help="Recompute transformer block activations in the backward pass to save memory."),
    verbose: bool = typer.Option(False, "--verbose", help="Log every iteration."),
) -> None:
    """Train with Co-GRPO (or a baseline mode). With no options: the embedded shapes preset."""
    _setup_logging(verbose)
    from cogrpo.rl.config import TrainConfig
    from cogrpo.rl.run import train as run_training
    from cogrpo.rl.run import RankOutOfMemory, ResumeMismatchError
    from cogrpo.rl.trainer import TrainingAborted

    overrides = {k: v for k, v in dict(
        model=model, model_path=model_path, reward=reward, prompts=prompts, mode=mode, iterations=iterations,
        prompts_per_iteration=prompts_per_iteration, group_size=group_size, steps=steps,
        train_step_fraction=train_step_fraction, lora_rank=lora_rank, lr_model=lr_model, lr_schedule=lr_schedule,
        clip_range=clip_range, kl_weight=kl_weight, seed=seed, chunk_size=chunk_size, eval_every=eval_every,
        checkpoint_every=checkpoint_every, final_eval=final_eval, out=out, device=device,
        reward_timeout_s=reward_timeout, reward_retries=reward_retries,
        max_invalid_reward_fraction=max_invalid_reward_fraction, deterministic=deterministic,
        random_weights=random_weights, dtype=dtype, gradient_checkpointing=gradient_checkpointing).items() if v is not None}
    from cogrpo.determinism import DeterminismError
    from cogrpo.rewards.remote import RemoteScorerError

    if resume is not None and out is not None and Path(out).resolve() != resume.resolve():
        _fail(f"--resume {resume} continues the run in that folder; drop --out {out}, or start a new run there without --resume")
    try:
        if resume is not None and config is None:
            cfg = _config_of_run(resume, overrides)
        elif config is not None:
            cfg = TrainConfig.from_yaml(config, **overrides)
        else:
            cfg = TrainConfig(**overrides)
        _check_reward_name(cfg.reward)
        _warn_random_weights({"random_weights": cfg.random_weights})
        summary = run_training(cfg, resume=resume, allow_inexact_resume=allow_inexact_resume)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, RemoteScorerError, DeterminismError,
            ResumeMismatchError) as error:
        _fail(str(error))
    except TrainingAborted as error:
        console.print(f"[red]training stopped:[/red] {escape(str(error))}")
        raise typer.Exit(code=3) from None
    except RankOutOfMemory as error:
        console.print(f"[red]training stopped:[/red] {escape(str(error))}")
        raise typer.Exit(code=4) from None
    from accelerate import PartialState

    if PartialState().is_main_process:
        _print_summary(summary)


def _config_of_run(run_dir: Path, overrides: dict):
    from cogrpo.checkpoint_io import latest_valid_checkpoint
    from cogrpo.rl.config import TrainConfig

    path = latest_valid_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"--resume {run_dir}: no valid checkpoint found there")
    saved = json.loads((path / "trainer_state.json").read_text())["config"]
    saved.update(overrides)
    saved["out"] = str(run_dir)
    return TrainConfig.from_dict(saved, source=str(path))


def _check_reward_name(spec: str) -> None:
    from cogrpo.catalog import REWARDS
    from cogrpo.rewards.remote import is_remote_spec

    if is_remote_spec(spec):
        return
    names = [part.split("=")[0].strip() for part in spec.split(",")]
    for name in names:
        REWARDS.entry(name)


def _print_summary(summary: dict) -> None:
    before, after = summary.get("before"), summary.get("after")
    if not (before and after):
        console.print(f"trained {summary.get('iterations')} iterations")
        return
    table = Table(title="held-out shapes benchmark (GenEval rules), before and after training")
    keys = [k for k in before["default"] if k not in {"n_samples"}]
    table.add_column("model / schedule")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_row("base / default", *[f"{before['default'][k]:.3f}" for k in keys])
    for name, metrics in after.items():
        table.add_row(f"trained / {name}", *[f"{metrics.get(k, float('nan')):.3f}" for k in keys])
    console.print(table)


@app.command("eval")
def evaluate(
    bench: str = typer.Option("shapes", help="Registered benchmark."),
    model: str = typer.Option("shapes", help="Registered model backend."),
    model_path: Optional[str] = typer.Option(None, help="Local weights folder for the backend."),
    checkpoint: Optional[Path] = typer.Option(None, help="Run folder (or checkpoint folder) of `cogrpo train`."),
    schedule: str = typer.Option("default", help="default or learned (the trained policy's mean; needs --checkpoint)."),
    steps: int = typer.Option(12, help="Decoding steps T."),
    images_per_prompt: Optional[int] = typer.Option(None, help="Images per prompt (default: the benchmark's)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N prompts (the result is marked partial)."),
    seed: int = typer.Option(0, help="Seed; image k of prompt i uses a generator seeded from (seed, i, k)."),
    batch_size: int = typer.Option(32, help="Images per forward pass and per scorer call."),
    out: Path = typer.Option(Path("outputs/eval"), help="Output folder: images/, per-rank score files and result.json."),
    score_only: bool = typer.Option(False, "--score-only", help="Score the images already in OUT/images (e.g. from the official scripts); generate nothing."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Build the model at full size with random weights, without downloads (smoke tests only)."),
    dtype: str = typer.Option("auto", help="Compute dtype of the transformer: bf16 (autocast), fp32, or auto (bf16 on CUDA, fp32 otherwise)."),
    score_timeout: float = typer.Option(600.0, help="Seconds one scorer batch call may take before its images count as failed (0 = no limit)."),
    score_retries: int = typer.Option(2, help="Retries, with doubling backoff, of a scorer call that raised."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help=f"Exit with code 0 even when samples failed (default: exit code {EXIT_FAILED_SAMPLES}). "
        "result.json is written either way, with n_failed."),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="Use deterministic PyTorch algorithms (set before CUDA starts; recorded in "
        "result.json). Runs match only on the same versions, hardware and number of processes."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    detector: Optional[str] = typer.Option(
        None, help="GenEval only: mask2former (default; transformers checkpoint, not the official mmdet one, so "
        "numbers are close but not identical), mmdet (the official model; extra geneval-mmdet) or shapes."),
    detector_weights: Optional[str] = typer.Option(
        None, help="GenEval only: local Mask2Former folder (save_pretrained) or mmdet .pth checkpoint."),
    clip_weights: Optional[str] = typer.Option(None, help="GenEval only: local open_clip ViT-L-14 (openai) weights file."),
    prompts: Optional[Path] = typer.Option(
        None, help="hps, imagereward and dpg only: local prompt file to use instead of the pinned download: a folder "
        "with HPD v2's anime.json, concept-art.json, paintings.json and photo.json, ImageReward's "
        "benchmark-prompts.json, or DPG-Bench's dpg_bench.csv. Without it the file is downloaded once and cached "
        "(no download when HF_HUB_OFFLINE=1)."),
    prompts_sha256: Optional[str] = typer.Option(
        None, help="hps, imagereward and dpg only: expected SHA-256 of the prompt file, replacing the recorded "
        "checksum (for hps: the manifest digest that result.json records as benchmark.prompt_sha256)."),
    vqa: Optional[str] = typer.Option(
        None, help="dpg only: VQA model, blip (default; not comparable with published numbers) or mplug (the "
        "official mPLUG-large; needs modelscope)."),
    label: Optional[str] = typer.Option(
        None, help="Row label in `cogrpo tables` (recorded as model.label). Results with the same label, schedule "
        "and steps are averaged as seeds; without a label, rows are the model name with its checkpoint or revision."),
) -> None:
    """Evaluate a model on a benchmark; rerunning the same command resumes.

    Exits with code 5 when samples failed (missing or unreadable images, scorer errors), unless --allow-partial.
    """
    _setup_logging(False)
    if deterministic:
        _enable_deterministic()
    from cogrpo.catalog import BENCHMARKS
    from cogrpo.evaluation.runner import EvalRequest, EvalSettingsMismatch, run_benchmark
    from cogrpo.rl.run import make_accelerator, resolve_device

    if schedule not in {"default", "learned"}:
        _fail(f"invalid --schedule {schedule!r}; allowed: default, learned")
    if steps < 1 or batch_size < 1:
        _fail("--steps and --batch-size must be at least 1")
    if limit is not None and limit < 1:
        _fail(f"invalid --limit {limit}; pass at least 1 prompt, or leave it out to evaluate every prompt")
    if images_per_prompt is not None and images_per_prompt < 1:
        _fail(f"invalid --images-per-prompt {images_per_prompt}; pass at least 1, or leave it out for the "
              "benchmark's own count")
    if score_timeout < 0 or score_retries < 0:
        _fail(f"invalid --score-timeout {score_timeout} or --score-retries {score_retries}; both must be >= 0")
    suite_options = _geneval_options(bench, detector, detector_weights, clip_weights)
    suite_options.update(_prompt_options(bench, prompts, prompts_sha256, vqa))
    try:
        suite = BENCHMARKS.create(bench, **suite_options)
    except (KeyError, ValueError, OSError, ImportError) as error:
        _fail(str(error))
    if images_per_prompt is not None and images_per_prompt > 1:
        try:
            # Layouts with one file per prompt (hps, dpg) have no name for a second image.
            suite.image_path(out.resolve() / "images", 0, images_per_prompt - 1)
        except ValueError as error:
            _fail(str(error))
    images_dir = out.resolve() / "images"
    if score_only and not (images_dir.is_dir() and any(images_dir.iterdir())):
        _fail(f"--score-only found no images in {images_dir}; put the images there in the benchmark's layout "
              "(see docs/benchmarks.md), or drop --score-only to generate them")
    dev = _device(device)
    accelerator = make_accelerator(dev)
    backend, policy, info = None, None, {"name": model}
    if not score_only:
        backend, policy, loaded = _load_model(model, model_path, checkpoint, schedule, steps, dev, random_weights, dtype)
        info = {**info, **loaded, "name": getattr(backend, "name", model), "revision": getattr(backend, "revision", None)}
        _warn_random_weights(info)
        _check_steps(backend, steps)
    if label is not None:
        info = {**info, "label": label}
    if not score_only:
        # Created only now, so that an invalid option or model leaves no empty folder behind.
        _safe_out(out)
    request = EvalRequest(steps=steps, seed=seed, images_per_prompt=images_per_prompt, limit=limit,
                          batch_size=batch_size, schedule_name=schedule, score_only=score_only, model_info=info,
                          score_timeout_s=score_timeout, score_retries=score_retries, allow_partial=allow_partial)
    try:
        result = run_benchmark(suite, request, out.resolve(), backend, policy if schedule == "learned" else None, accelerator)
    except EvalSettingsMismatch as error:
        _fail(str(error))
    if result is not None:
        table = Table(title=f"{result['benchmark']['name']} v{result['benchmark']['version']}"
                            + (" (partial)" if result["partial"] else ""))
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in result["metrics"].items():
            table.add_row(key, "n/a" if value is None else f"{value:.4f}")
        table.add_row("n_samples", str(result["n_samples"]))
        table.add_row("n_failed", str(result["n_failed"]))
        console.print(table)
        if result.get("extra_files"):
            console.print(f"[yellow]{len(result['extra_files'])} files in {escape(str(out / 'images'))} are not images of this "
                          f"benchmark and were not scored; they are listed under extra_files in result.json[/yellow]")
        console.print(f"result written to {escape(str(out / 'result.json'))}")
        if result["n_failed"]:
            if not allow_partial:
                console.print(f"[red]error:[/red] {result['n_failed']} of {result['n_samples']} samples failed (see "
                              f"'error' in the samples of result.json); the metrics count them as the benchmark's "
                              f"rules say. Rerun the same command to retry them, or pass --allow-partial to accept "
                              f"the result.")
                raise typer.Exit(code=EXIT_FAILED_SAMPLES)
            console.print(f"[yellow]{result['n_failed']} of {result['n_samples']} samples failed; accepted because "
                          f"of --allow-partial[/yellow]")


PROMPT_FILE_BENCHMARKS = ("hps", "imagereward", "dpg", "dpg-legacy")


def _prompt_options(bench: str, prompts: Optional[Path], prompts_sha256: Optional[str], vqa: Optional[str]) -> dict:
    """Return the prompt-file and VQA options of the hps, imagereward and dpg suites; fail for other benchmarks."""
    options: dict = {}
    flags = []
    if prompts is not None:
        options["prompts"] = str(prompts)
        flags.append("--prompts")
    if prompts_sha256 is not None:
        digest = prompts_sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            _fail(f"invalid --prompts-sha256 {prompts_sha256!r}; expected 64 hexadecimal digits")
        options["prompt_sha256"] = digest
        flags.append("--prompts-sha256")
    if flags and bench not in PROMPT_FILE_BENCHMARKS:
        _fail(f"{', '.join(flags)} only applies to --bench {', '.join(PROMPT_FILE_BENCHMARKS)}, not {bench!r}")
    if vqa is not None:
        if bench not in {"dpg", "dpg-legacy"}:
            _fail(f"--vqa only applies to --bench dpg or dpg-legacy, not {bench!r}")
        options["vqa"] = vqa
    return options


def _geneval_options(bench: str, detector: Optional[str], detector_weights: Optional[str], clip_weights: Optional[str]) -> dict:
    """Return the suite options of ``--bench geneval``; fail when they are given for another benchmark."""
    options = {"detector": detector, "detector_weights": detector_weights, "clip_weights": clip_weights}
    given = {key: value for key, value in options.items() if value is not None}
    if given and bench != "geneval":
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        _fail(f"{flags} only applies to --bench geneval, not {bench!r}")
    return given


def _read_score_metadata(path: Optional[Path], scorer, reward: str) -> Optional[dict]:
    """Read and check the GenEval metadata of `cogrpo score`: one JSON object, or a JSONL file with one line."""
    from cogrpo.benchmarks.geneval import load_metadata, validate_metadata
    from cogrpo.rewards.requirements import metadata_needs, read_utf8

    needs = metadata_needs(scorer)
    if path is None:
        if needs.needs_metadata:
            _fail(f"reward {reward!r} judges GenEval metadata; pass --metadata FILE with the prompt's metadata "
                  "(one JSON object with tag, include, exclude and prompt)")
        return None
    if not path.is_file():
        _fail(f"metadata file {path} not found; pass a .json file with one GenEval metadata object")
    try:
        if path.suffix == ".jsonl":
            entries = load_metadata(path, allowed_classes=needs.classes)
            if len(entries) != 1:
                _fail(f"{path} has {len(entries)} metadata lines; `cogrpo score` scores images of one prompt, so "
                      "pass a file with that prompt's line only")
            return entries[0]
        text = read_utf8(path)
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            _fail(f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno}); expected one "
                  "GenEval metadata object")
        return validate_metadata(entry, source=str(path), line_number=1, allowed_classes=needs.classes)
    except ValueError as error:
        _fail(str(error))


@app.command()
def score(
    reward: str = typer.Option(..., help="Reward name or weighted mix."),
    prompt: str = typer.Option(..., help="The prompt the images were generated for."),
    images: list[Path] = typer.Argument(..., help="Image files to score."),
    metadata: Optional[Path] = typer.Option(None, help="GenEval metadata JSON of the prompt (needed by shapes and GenEval rewards)."),
    timeout: float = typer.Option(300.0, help="Seconds a remote scorer (--reward http://...) may take per socket operation."),
) -> None:
    """Score image files with a reward; failed images are reported, and the exit code is 1 only when all failed."""
    _setup_logging(False)
    from cogrpo.rl.run import build_reward

    from cogrpo.rewards.remote import RemoteScorerError

    try:
        _check_reward_name(reward)
        if timeout <= 0:
            raise ValueError(f"invalid --timeout {timeout}; pass a positive number of seconds")
        scorer = build_reward(reward, timeout_s=timeout)
    except (KeyError, ValueError, FileNotFoundError, RemoteScorerError) as error:
        _fail(str(error))
    meta = _read_score_metadata(metadata, scorer, reward)
    result = scorer.score_detailed([str(p) for p in images], [prompt] * len(images), [meta] * len(images) if meta else None)
    table = Table(title=f"{scorer.name} scores")
    table.add_column("image")
    table.add_column("score", justify="right")
    table.add_column("error")
    for path, value, error in zip(images, result.scores, result.errors):
        table.add_row(escape(str(path)), "nan" if value != value else f"{value:.6f}", escape(error or ""))
    console.print(table)
    import numpy as np

    if not np.isfinite(result.scores).any():
        console.print("[red]error:[/red] every image failed to score; see the error column")
        raise typer.Exit(code=1)


@app.command()
def reproduce(
    out: Path = typer.Option(Path("results/shapes"), help="Folder for the result files."),
    tables_root: Optional[Path] = typer.Option(
        None, help="Results folder whose tables (and plot) are rebuilt at the end (default: results when --out is "
        "left at results/shapes, else --out)."),
    work: Path = typer.Option(Path("outputs/reproduce"), help="Folder for runs, images and per-sample scores."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    iterations: int = typer.Option(25, help="Training iterations per run (equal for every arm)."),
    sweep_steps: str = typer.Option("6,12", help="Comma-separated decoding step counts to evaluate."),
    images_per_prompt: int = typer.Option(1, help="Images per held-out prompt in each evaluation."),
    model_path: Optional[str] = typer.Option(None, help="Base model folder (default: the embedded weights)."),
) -> None:
    """Reproduce the comparisons of the Co-GRPO paper (arXiv 2512.22288) in miniature: Co-GRPO, naive GRPO, schedule-only, base."""
    _setup_logging(False)
    from cogrpo.evaluation.reproduce import ReproductionPlan
    from cogrpo.evaluation.reproduce import reproduce as run

    from cogrpo.evaluation.reproduce import check_plan

    try:
        plan = ReproductionPlan(seeds=tuple(int(s) for s in seeds.split(",")), iterations=iterations,
                                sweep_steps=tuple(int(s) for s in sweep_steps.split(",")),
                                images_per_prompt=images_per_prompt, model_path=model_path)
    except ValueError:
        _fail(f"invalid --seeds {seeds!r} or --sweep-steps {sweep_steps!r}; expected comma-separated integers")
    if len(set(plan.seeds)) != len(plan.seeds) or len(set(plan.sweep_steps)) != len(plan.sweep_steps):
        _fail(f"invalid --seeds {seeds!r} or --sweep-steps {sweep_steps!r}; list each value once")
    # The embedded model's images have 8 x 8 tokens, and a step must commit at least one.
    if not all(1 <= steps <= 64 for steps in plan.sweep_steps):
        _fail(f"invalid --sweep-steps {sweep_steps!r}; each step count must be from 1 to 64")
    if iterations < 1 or images_per_prompt < 1:
        _fail(f"invalid --iterations {iterations} or --images-per-prompt {images_per_prompt}; both must be at least 1")
    if model_path is not None and not Path(model_path).is_dir():
        _fail(f"--model-path {model_path} not found; pass a folder written by `cogrpo pretrain`")
    if 12 not in plan.sweep_steps:
        plan.train_steps = max(plan.sweep_steps)
    try:
        check_plan(plan, out)
    except ValueError as error:
        _fail(str(error))
    if tables_root is None:
        tables_root = Path("results") if out == Path("results/shapes") else out
    written = run(plan, out, work, tables_root)
    console.print("wrote " + escape(", ".join(str(p) for p in written)))


@app.command()
def tables(
    results: Path = typer.Option(Path("results"), help="Folder of result JSON files."),
    check: bool = typer.Option(False, "--check", help="Fail when the committed tables differ from a fresh build."),
    force: bool = typer.Option(
        False, "--force", help="Build tables even when results of one benchmark version have different prompt "
        "files; each prompt file then gets its own table."),
) -> None:
    """Build Markdown and LaTeX tables from result files (and a PNG plot of quality against steps).

    Fails when results of the same benchmark version were made with different prompt files, unless --force.
    """
    from cogrpo.evaluation.tables import MixedPromptFilesError, build_tables, check_tables

    try:
        if check:
            stale = check_tables(results, force=force)
            if stale:
                _fail("tables are out of date: " + ", ".join(stale) + ". Run `cogrpo tables` and commit the result.")
            console.print("tables are up to date")
            return
        written = build_tables(results, force=force)
    except (MixedPromptFilesError, ValueError) as error:
        _fail(str(error))
    console.print("wrote " + escape(", ".join(str(p) for p in written)))


if __name__ == "__main__":
    app()

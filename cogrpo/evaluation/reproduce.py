"""The comparisons of the Co-GRPO paper (arXiv 2512.22288) in miniature, on the embedded shapes world.

For each seed, Co-GRPO (``co``), naive GRPO (``model``: the model with the
default schedule) and schedule-only (``schedule``: frozen model) train from the
same base with the same budget. Every run and the base are evaluated on the
held-out shapes benchmark at the training step count and over a sweep of step
counts. Result files, tables and the plot go under the results folder.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cogrpo.checkpoint_io import atomic_write_json
from cogrpo.evaluation.runner import EvalRequest, run_benchmark
from cogrpo.evaluation.suites import shapes_suite
from cogrpo.evaluation.tables import build_tables
from cogrpo.rl.config import TrainConfig
from cogrpo.rl.run import build_backend, load_trained, train

logger = logging.getLogger(__name__)

ARMS = {"co": "co-grpo", "model": "naive-grpo", "schedule": "schedule-only"}


@dataclass
class ReproductionPlan:
    """The budget of a reproduction run."""

    seeds: tuple[int, ...] = (0, 1, 2)
    iterations: int = 25
    train_steps: int = 12
    sweep_steps: tuple[int, ...] = (6, 12)
    images_per_prompt: int = 1
    eval_seed: int = 0
    model_path: str | None = None
    train_overrides: dict = field(default_factory=dict)


def _evaluate(backend, schedule, stem: str, schedule_name: str, steps: int, plan: ReproductionPlan,
              work: Path, results: Path, model_info: dict) -> None:
    request = EvalRequest(steps=steps, seed=plan.eval_seed, images_per_prompt=plan.images_per_prompt,
                          schedule_name=schedule_name, model_info=model_info)
    out_dir = work / f"{stem}-T{steps}-{schedule_name}"
    # The arms are retrained on every call, so an earlier call's images may come from another model.
    if out_dir.exists():
        shutil.rmtree(out_dir)
    result = run_benchmark(shapes_suite(), request, out_dir, backend, schedule)
    result["samples"] = []  # per-sample records stay in the work folder; tables need the aggregates only
    atomic_write_json(results / f"{stem}-T{steps}-{schedule_name}.json", result)


def _plan_record(plan: ReproductionPlan) -> dict:
    return dict(plan.__dict__, seeds=list(plan.seeds), sweep_steps=list(plan.sweep_steps))


def check_plan(plan: ReproductionPlan, results: Path) -> ReproductionPlan:
    """Return the plan to record in ``results``: ``plan`` with the seeds of an earlier, otherwise equal plan added.

    Raises ``ValueError`` naming the differing fields when ``results/PLAN.json``
    records another plan, because its tables would average runs of both plans.
    """
    path = results / "PLAN.json"
    if not path.exists():
        return plan
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["plan"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable reproduction plan ({error}); restore it or use another --out") from None
    current = _plan_record(plan)
    changed = [f"{key}: {recorded.get(key)!r} there, {value!r} now" for key, value in current.items()
               if key != "seeds" and recorded.get(key) != value]
    if changed:
        raise ValueError(
            f"{results} contains results of another reproduction plan ({'; '.join(changed)}), and the tables would "
            f"average runs of both; pass another --out, or move those results away")
    seeds = tuple(dict.fromkeys([*recorded.get("seeds", []), *plan.seeds]))
    return dataclasses.replace(plan, seeds=seeds)


def reproduce(plan: ReproductionPlan, results: Path, work: Path, tables_root: Path | None = None) -> list[Path]:
    """Run the whole comparison and rebuild the tables of ``tables_root`` (default: ``results``).

    New seeds may be added to a results folder of an equal plan; ``PLAN.json`` then lists all of them.
    """
    recorded_plan = check_plan(plan, results)
    results.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    base = build_backend(TrainConfig(model_path=plan.model_path, device="cpu"), device)
    for steps in plan.sweep_steps:
        _evaluate(base, None, "base", "default", steps, plan, work, results, {"label": "base", "revision": base.revision})
    for seed in plan.seeds:
        for mode, name in ARMS.items():
            label = f"{name}-seed{seed}"
            run_dir = work / "runs" / label
            if run_dir.exists():
                shutil.rmtree(run_dir)
            config = TrainConfig(mode=mode, seed=seed, iterations=plan.iterations, steps=plan.train_steps,
                                 model_path=plan.model_path, device="cpu", out=str(run_dir), final_eval=False,
                                 checkpoint_every=0, **plan.train_overrides)
            train(config, progress=False)
            backend, policy, info = load_trained(run_dir, device)
            # Rows are labelled by arm; the seed is recorded and the tables average over seeds.
            info = {"label": name, "name": "shapes", "seed": seed, "iterations": plan.iterations,
                    "checkpoint_sha256": info["checkpoint_sha256"]}
            for steps in plan.sweep_steps:
                _evaluate(backend, None, label, "default", steps, plan, work, results, info)
            if mode != "model":
                _evaluate(backend, policy, label, "learned", plan.train_steps, plan, work, results, info)
    (results / "PLAN.json").write_text(json.dumps({"plan": _plan_record(recorded_plan)}, indent=2) + "\n")
    return build_tables(tables_root or results)

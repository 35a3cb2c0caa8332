"""Paper-style tables from result files: Markdown and LaTeX, plus a plot of quality against steps.

Result files are the ``result.json`` files of ``cogrpo eval`` (copied under
``results/``). Rows that share a label (``model.label``, set by ``cogrpo eval
--label`` and by the reproduction; else the model name with its checkpoint or
revision), schedule and step count are averaged and shown as mean ± std over seeds.
Partial runs (``--limit``) and runs of different benchmark versions, prompt
files or scorers never share a table: each (benchmark, version, prompt hash,
scorer label) gets its own table, and partial runs are left out. Because a
benchmark's version must change whenever its prompts change, results of one
benchmark version with different prompt hashes stop the build with
``MixedPromptFilesError`` unless ``force`` is set. The
reward-alignment table puts ImageReward and HPS v2 side by side. The paper's
reported numbers come from ``evals/reported.json`` and appear as rows marked
"reported".
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

TABLE_DIR = "tables"
REPORTED = Path(__file__).resolve().parents[2] / "evals" / "reported.json"
PAPER_COLUMNS = (("imagereward", "ImageReward"), ("hps_v2", "HPS v2"), ("geneval", "GenEval"), ("dpg", "DPG-Bench"))
# (benchmark name, column title) of the reward-alignment table.
REWARD_ALIGNMENT_COLUMNS = (("imagereward", "ImageReward"), ("hps", "HPS v2"))


class MixedPromptFilesError(ValueError):
    """Results of the same benchmark version that were made with different prompt files."""


def prompt_file_conflicts(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[str]]]:
    """Return {(benchmark, version): {prompt SHA-256: [result files]}} for versions with several prompt hashes.

    Partial runs are ignored, as the tables leave them out.
    """
    hashes: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        if result.get("partial"):
            continue
        bench = result["benchmark"]
        key = (bench["name"], str(bench["version"]))
        hashes[key][bench.get("prompt_sha256", "")].append(result.get("_path", "?"))
    return {key: dict(files) for key, files in hashes.items() if len(files) > 1}


def check_prompt_files(results: list[dict[str, Any]]) -> None:
    """Raise ``MixedPromptFilesError`` naming the files when one benchmark version has several prompt hashes."""
    conflicts = prompt_file_conflicts(results)
    if not conflicts:
        return
    lines = []
    for (name, version), files in sorted(conflicts.items()):
        listing = "; ".join(f"{sha[:12] or 'none'}: {', '.join(sorted(paths))}" for sha, paths in sorted(files.items()))
        lines.append(f"{name} v{version} has results with {len(files)} prompt files ({listing})")
    raise MixedPromptFilesError(
        ". ".join(lines) + ". Their numbers are not comparable. Rerun them with the same prompt file, move the odd "
        "results out of the folder, or pass --force to build one table per prompt file."
    )


def _check_result(data: dict[str, Any], path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` and the field when a result file lacks what the tables read."""
    problems = []
    bench = data.get("benchmark")
    if not isinstance(bench, dict) or "name" not in bench or "version" not in bench:
        problems.append("'benchmark' with 'name' and 'version'")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or "overall" not in metrics:
        problems.append("'metrics' with 'overall'")
    if not isinstance(data.get("model"), dict):
        problems.append("'model'")
    if not isinstance(data.get("steps"), int):
        problems.append("'steps' (an integer)")
    if not isinstance(data.get("n_failed"), int):
        problems.append("'n_failed' (an integer)")
    if problems:
        raise ValueError(f"result file {path} lacks {', '.join(problems)}; restore it from `cogrpo eval`'s "
                         "result.json or remove it")


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Read every result JSON under ``results_dir`` (the tables folder excluded).

    A JSON file with a ``benchmark`` or ``metrics`` key is a result file and must
    have every field the tables read. Other JSON files (such as ``PLAN.json``) are
    skipped, and partial runs are read but not checked, because no table uses
    them. Two files of the same evaluation (equal ``samples_sha256``, model,
    schedule, steps and seed) raise ``ValueError``, because the tables would
    count it twice as two seeds.
    """
    if not results_dir.is_dir():
        raise ValueError(f"results folder {results_dir} not found; pass the folder that contains the result JSON files")
    results = []
    seen: dict[str, str] = {}
    for path in sorted(results_dir.rglob("*.json")):
        if TABLE_DIR in path.relative_to(results_dir).parts:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON in result file {path}: {error}; fix or remove the file") from None
        if not isinstance(data, dict) or ("benchmark" not in data and "metrics" not in data):
            continue
        relative = str(path.relative_to(results_dir))
        data["_path"] = relative
        if data.get("partial"):
            # Partial runs stay out of every table, so nothing else of them is read.
            results.append(data)
            continue
        _check_result(data, path)
        # Equal samples alone are not a copy: a schedule-only run evaluated with the default schedule gives
        # the base model's samples, and an untrained learned schedule the default one's. Equal samples with an
        # equal model, schedule, step count and seed are.
        identity = json.dumps([data.get("samples_sha256"), data["model"], data.get("schedule"), data["steps"],
                               data.get("seed")], sort_keys=True)
        if data.get("samples_sha256") and identity in seen:
            raise ValueError(f"result files {seen[identity]} and {relative} in {results_dir} are the same evaluation "
                             "(equal samples_sha256, model, schedule, steps and seed), so the tables would count it "
                             "twice; remove one")
        seen[identity] = relative
        results.append(data)
    return results


def _label(result: dict[str, Any]) -> str:
    """Return the row label: ``model.label``, else the model name with its checkpoint or revision.

    Results share a row (and are averaged as seeds) only when their labels are
    equal, so unlabelled results of different checkpoints stay apart.
    """
    model = result.get("model") or {}
    if model.get("label"):
        return str(model["label"])
    name = str(model.get("name") or "model")
    identity = model.get("checkpoint_sha256") or model.get("revision")
    if not identity:
        return name
    identity = str(identity).removeprefix("sha256:")
    return f"{name} ({identity[:10]})"


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _grouped(results: list[dict[str, Any]]):
    tables: dict[tuple, dict[tuple, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        if result.get("partial"):
            continue
        bench = result["benchmark"]
        # The scorer label separates, e.g., DPG-Bench with BLIP from DPG-Bench with mPLUG.
        key = (bench["name"], str(bench["version"]), bench.get("prompt_sha256", ""), bench.get("scorer", ""))
        tables[key][(_label(result), result.get("schedule", "default"), int(result.get("steps", 0)))].append(result)
    return tables


def _metric_keys(rows: dict[tuple, list[dict[str, Any]]]) -> list[str]:
    keys: list[str] = []
    for runs in rows.values():
        for run in runs:
            for key in run["metrics"]:
                if key not in keys and key != "overall":
                    keys.append(key)
    return ["overall"] + keys


def _render(title: str, header: list[str], body: list[list[str]], note: str) -> tuple[str, str]:
    md = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in body]
    md += ["", note, ""]
    escape = lambda s: s.replace("_", "\\_").replace("±", "$\\pm$").replace("%", "\\%")  # noqa: E731
    tex = [f"% {title}", "\\begin{tabular}{" + "l" * 3 + "r" * (len(header) - 3) + "}", "\\toprule",
           " & ".join(escape(h) for h in header) + " \\\\", "\\midrule"]
    tex += [" & ".join(escape(c) for c in row) + " \\\\" for row in body]
    tex += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(md), "\n".join(tex)


def benchmark_tables(results: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Return {file stem: (markdown, latex)} with one table per benchmark version."""
    out = {}
    for (name, version, sha, scorer), rows in sorted(_grouped(results).items()):
        keys = _metric_keys(rows)
        header = ["model", "schedule", "steps", "seeds", "n_failed"] + keys
        body = []
        for (label, schedule, steps), runs in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
            seeds = ",".join(str((r.get("model") or {}).get("seed", r.get("seed"))) for r in runs)
            failed = str(sum(int(r.get("n_failed", 0)) for r in runs))
            body.append([label, schedule, str(steps), seeds, failed] + [_fmt([r["metrics"].get(k) for r in runs]) for k in keys])
        header = header[:3] + header[3:]
        failure_rule = next(iter(rows.values()))[0]["benchmark"].get("failed_samples", "count as incorrect")
        note = (f"Benchmark {name} v{version}, prompt file SHA-256 {sha[:12]}"
                + (f", scorer {scorer}" if scorer else "")
                + f"; mean ± sample std over seeds; failed samples {failure_rule}.")
        stem = f"{name}-v{version}-{sha[:8]}"
        if scorer:
            stem += "-" + hashlib.sha256(scorer.encode()).hexdigest()[:6]
        out[stem] = _render(f"{name} (v{version})", header, body, note)
    return out


def reward_alignment_table(results: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Return the ImageReward and HPS v2 ``overall`` scores side by side, or None without such results.

    A benchmark whose results span several versions, prompt files or scorers gets
    no column here (its own tables show each), so one column never mixes them.
    """
    groups = _grouped(results)
    columns = []
    skipped = []
    for bench_name, title in REWARD_ALIGNMENT_COLUMNS:
        keys = [key for key in groups if key[0] == bench_name]
        if len(keys) == 1:
            columns.append((title, keys[0], groups[keys[0]]))
        elif len(keys) > 1:
            skipped.append(f"{title} is left out: its results come from {len(keys)} benchmark versions, prompt files "
                           "or scorers, each in its own table.")
    if not columns:
        return None
    rows = sorted({row for _, _, group in columns for row in group}, key=lambda row: (row[2], row[0], row[1]))
    header = ["model", "schedule", "steps"] + [title for title, _, _ in columns]
    body = []
    for row in rows:
        cells = [_fmt([run["metrics"].get("overall") for run in group.get(row, [])]) for _, _, group in columns]
        body.append([row[0], row[1], str(row[2])] + cells)
    sources = "; ".join(f"{title}: {key[0]} v{key[1]}, prompt file SHA-256 {key[2][:12]}" for title, key, _ in columns)
    note = " ".join([f"{sources}. ImageReward: mean over prompts of the mean reward; HPS v2: HPS v2.1 x 100, mean of "
                     "the four HPD v2 styles. Mean ± sample std over seeds; partial runs are left out.", *skipped])
    return _render("Reward alignment (ImageReward, HPS v2)", header, body, note)


def reported_table(path: Path = REPORTED) -> tuple[str, str] | None:
    """Return the paper's reported numbers as a table, if the file exists."""
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    header = ["model", "source"] + [title for _, title in PAPER_COLUMNS]
    body = [[row["model"], "reported"] + [("n/a" if row.get(k) is None else f"{row[k]:g}") for k, _ in PAPER_COLUMNS]
            for row in data["rows"]]
    return _render("Reward alignment and generalisation (reported by the paper)", header, body, f"Source: {data['source']}.")


def steps_plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Plot overall score against steps for each label (the shapes benchmark); return False if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        if result.get("partial") or result["benchmark"]["name"] != "shapes":
            continue
        series[f"{_label(result)} ({result.get('schedule')})"][int(result["steps"])].append(result["metrics"]["overall"])
    if not any(len(points) > 1 for points in series.values()):
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, points in sorted(series.items()):
        steps = sorted(points)
        means = [np.mean(points[s]) for s in steps]
        stds = [np.std(points[s]) for s in steps]
        ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xlabel("decoding steps T")
    ax.set_ylabel("held-out shapes score (GenEval rules)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def render_all(results_dir: Path, out_dir: Path, force: bool = False) -> list[Path]:
    """Write every table (and the plot) for ``results_dir`` into ``out_dir``.

    Raises ``MixedPromptFilesError`` when one benchmark version has results with different prompt files,
    unless ``force``.
    """
    results = load_results(results_dir)
    if not force:
        check_prompt_files(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tables = benchmark_tables(results)
    alignment = reward_alignment_table(results)
    if alignment is not None:
        tables["reward-alignment"] = alignment
    reported = reported_table()
    if reported is not None:
        tables["reported"] = reported
    for stem, (md, tex) in tables.items():
        for suffix, text in ((".md", md), (".tex", tex)):
            path = out_dir / f"{stem}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if steps_plot(results, out_dir / "quality_vs_steps.png"):
        written.append(out_dir / "quality_vs_steps.png")
    return written


def build_tables(results_dir: Path, force: bool = False) -> list[Path]:
    """Rebuild ``results_dir/tables`` (see ``render_all`` for ``force``)."""
    return render_all(results_dir, results_dir / TABLE_DIR, force=force)


def check_tables(results_dir: Path, force: bool = False) -> list[str]:
    """Return the Markdown and LaTeX table files that differ from a fresh build (the PNG is not compared)."""
    committed = results_dir / TABLE_DIR
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        render_all(results_dir, fresh, force=force)
        stale = []
        names = {p.name for p in fresh.glob("*") if p.suffix in {".md", ".tex"}}
        names |= {p.name for p in committed.glob("*") if p.suffix in {".md", ".tex"}} if committed.exists() else set()
        for name in sorted(names):
            a, b = fresh / name, committed / name
            if not a.exists():
                # `cogrpo tables` does not delete files, so the message names the fix.
                stale.append(f"{name} (no longer built from these results; delete it)")
            elif not b.exists() or a.read_text(encoding="utf-8") != b.read_text(encoding="utf-8"):
                stale.append(name)
        return stale

"""Timing, memory and reporting helpers shared by the benchmark scripts.

Every script times its variants side by side in one process. Warm-up runs come
first, then rounds in which each variant runs once, always in the same order
(A, B, A, B, ...), and the report uses the median over the rounds. On CUDA the
device is synchronised before the clock starts and before it stops.

Each script prints progress to stderr and ends with exactly one JSON line on
stdout, written by ``emit_result``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# The real stdout, kept before ``quiet_stdout`` sends library prints to stderr.
_RESULT_STREAM = sys.stdout

RSS_PEAK_METHOD = "peak RSS: VmHWM reset through /proc/self/clear_refs, minus VmRSS before the run"
TRACEMALLOC_METHOD = "tracemalloc peak (Python allocations only; torch CPU tensors are not traced)"
CUDA_METHOD = "torch.cuda.max_memory_allocated minus torch.cuda.memory_allocated before the run"


def log(message: str) -> None:
    """Print a progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- command line


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int, warmup: int = 1) -> None:
    """Add --small, --device, --repeats, --warmup, --threads and --seed to a script's parser."""
    parser.add_argument("--small", action="store_true", help="smallest settings, a few seconds per script (smoke test)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="device to run on (default: cuda when available, else cpu)"
    )
    parser.add_argument("--repeats", type=int, default=None, help=f"timed rounds per variant (default {repeats}, 1 with --small)")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed warm-up runs per variant (default {warmup})")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the sampling generators, random weights, test images and the trainer (default 0)"
    )
    parser.set_defaults(default_repeats=repeats)


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the defaults that depend on other options and apply --threads."""
    if args.repeats is None:
        args.repeats = 1 if args.small else args.default_repeats
    if args.repeats < 1:
        raise SystemExit(f"invalid --repeats {args.repeats}; expected at least 1")
    if args.warmup < 0:
        raise SystemExit(f"invalid --warmup {args.warmup}; expected 0 or more")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"invalid --threads {args.threads}; expected at least 1")
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    return args


def resolve_device(name: str | None) -> torch.device:
    """Return the named device, or CUDA when available and no name is given."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False; use --device cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for the queued CUDA work of ``device``; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(function: Callable[[], object], device: torch.device) -> float:
    """Return the wall-clock seconds of one call, with the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def run_alternating(
    variants: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int,
    label: str = "",
) -> dict[str, list[float]]:
    """Time the variants in alternating rounds and return the seconds of each timed run.

    ``warmup`` untimed rounds come first. Each round then runs every variant once,
    in the order of ``variants``, so slow drift of the machine (other jobs, clock
    changes) affects all variants alike.
    """
    prefix = f"{label}: " if label else ""
    for round_index in range(warmup):
        for function in variants.values():
            function()
        synchronize(device)
        log(f"{prefix}warm-up round {round_index + 1}/{warmup} done")
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(repeats):
        for name, function in variants.items():
            seconds[name].append(time_once(function, device))
        timings = ", ".join(f"{name} {values[-1]:.4f} s" for name, values in seconds.items())
        log(f"{prefix}round {round_index + 1}/{repeats}: {timings}")
    return seconds


def medians(seconds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Return the median of each variant's timed runs."""
    return {name: statistics.median(values) for name, values in seconds.items()}


# --------------------------------------------------------------------------- memory


def _read_status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.MULTILINE)
    if match is None:
        raise OSError(f"{field} not found in /proc/self/status")
    return int(match.group(1))


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS (VmHWM); return False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _read_status_kib("VmHWM")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """Return freed heap memory to the OS (glibc only), so the RSS baseline is not inflated by it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_method(device: torch.device) -> str:
    """Return how ``peak_memory`` measures on ``device``."""
    if device.type == "cuda":
        return CUDA_METHOD
    return RSS_PEAK_METHOD if _reset_rss_peak() else TRACEMALLOC_METHOD


def peak_memory(function: Callable[[], object], device: torch.device) -> int:
    """Return the peak memory in bytes that one call of ``function`` adds, by the method ``memory_method`` names."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    if _reset_rss_peak():
        before = _read_status_kib("VmRSS")
        function()
        return (_read_status_kib("VmHWM") - before) * 1024
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- fits and goals


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Fit ``y = intercept + slope * x`` by least squares and return slope, intercept and R².

    R² is 1 - SS_res / SS_tot. With all ``y`` equal, SS_tot is 0 and R² is
    reported as 1.0 when the fit is exact, else NaN.
    """
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a linear fit needs at least two (x, y) pairs of equal count, got {len(xs)} and {len(ys)}")
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(ys)
    ss_xx = sum((x - mean_x) ** 2 for x in xs)
    if ss_xx == 0:
        raise ValueError(f"a linear fit needs at least two different x values, got {list(xs)}")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / ss_xx
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    if ss_tot == 0:
        r2 = 1.0 if ss_res == 0 else math.nan
    else:
        r2 = 1.0 - ss_res / ss_tot
    return {"slope": slope, "intercept": intercept, "r2": r2}


@dataclass(frozen=True)
class Goal:
    """A target for one named ratio: ``value <= target`` or ``value >= target``."""

    operator: str
    target: float

    def __post_init__(self) -> None:
        if self.operator not in ("<=", ">="):
            raise ValueError(f"invalid goal operator {self.operator!r}; allowed: '<=', '>='")

    def met(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value <= self.target if self.operator == "<=" else value >= self.target

    def __str__(self) -> str:
        return f"{self.operator} {self.target:g}"


def check_goals(ratios: Mapping[str, float], goals: Mapping[str, Goal]) -> dict[str, bool]:
    """Return, for each goal, whether its ratio meets it."""
    missing = sorted(set(goals) - set(ratios))
    if missing:
        raise KeyError(f"goals name ratios that were not measured: {', '.join(missing)}")
    return {name: goal.met(ratios[name]) for name, goal in goals.items()}


# --------------------------------------------------------------------------- environment and output


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, object]:
    """Return the device, package versions and thread count that a result depends on."""
    info: dict[str, object] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    for package in ("diffusers", "transformers", "open_clip"):
        with contextlib.suppress(ImportError):
            info[package] = __import__(package).__version__
    return info


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send everything printed to stdout inside the block to stderr, so stdout carries only the JSON line."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def build_result(
    benchmark: str,
    device: torch.device,
    ratios: Mapping[str, float],
    goals: Mapping[str, Goal],
    seconds: Mapping[str, Sequence[float]],
    **extra: object,
) -> dict[str, object]:
    """Assemble the result: ratios, goals and whether each is met, raw medians and runs, environment, extras."""
    result: dict[str, object] = {
        "benchmark": benchmark,
        "ratios": dict(ratios),
        "goals": {name: str(goal) for name, goal in goals.items()},
        "goals_met": check_goals(ratios, goals),
        "medians_s": medians(seconds),
        "runs_s": {name: list(values) for name, values in seconds.items()},
    }
    result.update(environment(device))
    result.update(extra)
    return result


def emit_result(result: Mapping[str, object]) -> None:
    """Print the result as one JSON line on the real stdout."""
    _RESULT_STREAM.write(json.dumps(result, allow_nan=True) + "\n")
    _RESULT_STREAM.flush()

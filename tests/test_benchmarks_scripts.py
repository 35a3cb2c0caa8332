"""Smoke runs of the performance benchmark scripts under benchmarks/.

Each script runs once with --small on the CPU in a subprocess. The test checks
the shape of the JSON line it prints last, never the timings.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
COMMON_KEYS = ("benchmark", "ratios", "goals", "goals_met", "medians_s", "runs_s", "device", "torch")
EXPECTED_RATIOS = {
    "sampler": {
        "shapes/rollout_over_bare_forwards",
        "shapes/images_per_s_ours_over_pipeline",
        "amused-256/rollout_over_bare_forwards",
        "amused-256/images_per_s_ours_over_pipeline",
    },
    "trainer": {
        "iteration_over_by_hand",
        "peak_memory_max_steps_over_min_steps",
        "peak_memory_max_chunk_over_min_chunk",
    },
    "scorers": {
        "hps/batched_over_one_per_call",
        "hps/batched_over_one_per_call_with_reload",
        "imagereward/batched_over_one_per_call",
    },
    "scaling": {
        "rollout/steps/r2",
        "rollout/batch/r2",
        "iteration/steps/r2",
        "iteration/prompts/r2",
        "iteration/group_size/r2",
    },
}
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def results():
    """Start every script with --small at once and return a function that waits for one and parses its output.

    The four runs overlap, so most of their start-up (importing torch, diffusers and
    transformers) runs in parallel.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    processes = {}
    for name in sorted(EXPECTED_RATIOS):
        # One torch thread each: four processes share the machine's cores.
        command = [sys.executable, str(BENCHMARKS / f"{name}.py"), "--small", "--device", "cpu", "--threads", "1"]
        processes[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    @functools.cache
    def result(name: str) -> dict:
        stdout, stderr = processes[name].communicate(timeout=TIMEOUT_S)
        assert processes[name].returncode == 0, f"{name}.py exited with {processes[name].returncode}:\n{stderr[-4000:]}"
        lines = stdout.strip().splitlines()
        assert len(lines) == 1, f"{name}.py printed {len(lines)} lines on stdout; expected one JSON line:\n{stdout[-2000:]}"
        return json.loads(lines[-1])

    yield result
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("name", sorted(EXPECTED_RATIOS))
def test_small_run_prints_result(results, name):
    result = results(name)

    for key in COMMON_KEYS:
        assert key in result, f"{name}: missing key {key!r}"
    assert result["benchmark"] == name
    assert result["device"] == "cpu"
    assert result["small"] is True
    assert set(result["ratios"]) == EXPECTED_RATIOS[name]
    for ratio_name, value in result["ratios"].items():
        assert isinstance(value, (int, float)), f"{name}: ratio {ratio_name} is {value!r}"
        assert math.isfinite(value), f"{name}: ratio {ratio_name} is {value}"
        assert value > 0, f"{name}: ratio {ratio_name} is {value}"
    assert set(result["goals"]) == set(result["ratios"])
    assert set(result["goals_met"]) == set(result["ratios"])
    for variant, seconds in result["medians_s"].items():
        assert math.isfinite(seconds), f"{name}: median of {variant} is {seconds}"
        assert seconds > 0, f"{name}: median of {variant} is {seconds}"
    assert set(result["runs_s"]) == set(result["medians_s"])


def test_trainer_reports_memory_fits(results):
    result = results("trainer")

    assert result["memory_method"]
    for axis in ("against_steps", "against_chunk_size"):
        fit = result["memory"][axis]
        assert len(fit["x"]) == len(fit["peak_mib"]) == 3
        assert math.isfinite(fit["slope_mib_per_unit"])

"""Tests for atomic result files and crash-safe checkpoint folders."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cogrpo import checkpoint_io
from cogrpo.checkpoint_io import (
    CorruptCheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    checkpoint_name,
    clean_staging,
    commit_checkpoint,
    latest_valid_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    sanitize_json,
    verify_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "model.safetensors": b"model-weights" * 100,
    "optimizer.pt": b"optimizer-state" * 50,
    "state/trainer.json": b'{"step": 1}\n',
}


def write_payload(files: dict[str, bytes]):
    """Return a ``write_files`` callback that writes ``files`` into the staging folder."""

    def write_files(staging: Path) -> None:
        for relative, data in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    return write_files


def payload_for_step(step: int) -> dict[str, bytes]:
    return {relative: data + f"-step{step}".encode() for relative, data in FILES.items()}


def commit_step(run_dir: Path, step: int, **kwargs) -> Path:
    return commit_checkpoint(run_dir, checkpoint_name(step), write_payload(payload_for_step(step)), **kwargs)


def leftover_entries(run_dir: Path) -> list[str]:
    return sorted(entry.name for entry in run_dir.iterdir() if entry.name.startswith("."))


def read_files(checkpoint: Path) -> dict[str, bytes]:
    return {
        path.relative_to(checkpoint).as_posix(): path.read_bytes()
        for path in checkpoint.rglob("*")
        if path.is_file() and path.name != "manifest.json"
    }


# ---------------------------------------------------------------------------
# sanitize_json and atomic writes


def test_sanitize_json_replaces_non_finite_floats():
    value = {
        "nan": float("nan"),
        "inf": float("inf"),
        "minus_inf": -math.inf,
        "finite": 1.5,
        "nested": [1, (2.0, float("nan")), {"deep": [np.float32("nan")]}],
        "np_inf": np.float64("-inf"),
    }

    result = sanitize_json(value)

    assert result == {
        "nan": None,
        "inf": None,
        "minus_inf": None,
        "finite": 1.5,
        "nested": [1, [2.0, None], {"deep": [None]}],
        "np_inf": None,
    }


def test_sanitize_json_converts_numpy_values():
    value = {
        "int": np.int64(7),
        "float": np.float32(0.5),
        "bool": np.bool_(True),
        "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        np.int32(3): "numpy key",
    }

    result = sanitize_json(value)

    assert result == {"int": 7, "float": 0.5, "bool": True, "array": [[1.0, None], [None, 2.0]], 3: "numpy key"}
    assert type(result["int"]) is int
    assert type(result["float"]) is float
    assert type(result["bool"]) is bool
    assert all(type(key) in (str, int) for key in result)


def test_sanitize_json_does_not_modify_input():
    original = {"values": [float("nan"), 1.0]}

    sanitize_json(original)

    assert math.isnan(original["values"][0])


def test_atomic_write_json_writes_null_for_nan(tmp_path):
    path = tmp_path / "result.json"
    data = {"score": float("nan"), "count": np.int64(3), "values": [np.float32(1.25), float("inf")]}

    atomic_write_json(path, data)

    text = path.read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    assert json.loads(text) == {"score": None, "count": 3, "values": [1.25, None]}


def test_atomic_write_json_content_complete(tmp_path):
    path = tmp_path / "result.json"
    data = {"zeta": 1, "alpha": {"b": [1, 2, 3], "a": "text"}}

    atomic_write_json(path, data)

    expected = json.dumps(data, indent=2) + "\n"
    assert path.read_text() == expected
    assert list(json.loads(path.read_text())) == ["zeta", "alpha"], "keys must keep insertion order"
    assert leftover_entries(tmp_path) == []


def test_atomic_write_text_and_bytes(tmp_path):
    text_path = tmp_path / "notes.txt"
    bytes_path = tmp_path / "blob.bin"

    atomic_write_text(text_path, "grüße\n")
    atomic_write_bytes(bytes_path, b"\x00\x01\x02")

    assert text_path.read_bytes() == "grüße\n".encode("utf-8")
    assert bytes_path.read_bytes() == b"\x00\x01\x02"


def test_atomic_write_keeps_existing_permissions(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("{}\n")
    path.chmod(0o640)

    atomic_write_json(path, {"new": True})

    assert path.stat().st_mode & 0o777 == 0o640


def test_replace_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"version": "old"})
    old_text = path.read_text()

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "injected replace failure")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected replace failure"):
        atomic_write_json(path, {"version": "new"})

    assert path.read_text() == old_text
    assert leftover_entries(tmp_path) == []


def test_fsync_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"version": "old"})
    old_text = path.read_text()

    def failing_fsync(descriptor):
        raise OSError(errno.ENOSPC, "injected fsync failure")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected fsync failure"):
        atomic_write_json(path, {"version": "new", "padding": "x" * 10_000})

    assert path.read_text() == old_text
    assert leftover_entries(tmp_path) == []


def test_unserializable_json_keeps_old_file(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"version": "old"})
    old_text = path.read_text()

    with pytest.raises(TypeError):
        atomic_write_json(path, {"version": object()})

    assert path.read_text() == old_text
    assert leftover_entries(tmp_path) == []


# ---------------------------------------------------------------------------
# Naming and listing


def test_checkpoint_name_pads_to_eight_digits():
    assert checkpoint_name(12) == "checkpoint-00000012"
    assert checkpoint_name(0) == "checkpoint-00000000"
    assert checkpoint_name(123_456_789) == "checkpoint-123456789"


@pytest.mark.parametrize("step", [-1, 1.0, "3", True])
def test_checkpoint_name_rejects_invalid_step(step):
    with pytest.raises((TypeError, ValueError)):
        checkpoint_name(step)


def test_list_checkpoints_orders_by_step(tmp_path):
    for name in ["checkpoint-00000010", "checkpoint-00000002", "checkpoint-100000000", "checkpoint-00000001"]:
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / ".staging-checkpoint-00000004-abc").mkdir()
    (tmp_path / "checkpoint-00000005").write_text("a file, not a folder")
    (tmp_path / "checkpoint-00000006.json").mkdir()

    names = [path.name for path in list_checkpoints(tmp_path)]

    assert names == ["checkpoint-00000001", "checkpoint-00000002", "checkpoint-00000010", "checkpoint-100000000"]


def test_list_checkpoints_missing_run_dir(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    assert latest_valid_checkpoint(tmp_path / "missing") is None
    assert clean_staging(tmp_path / "missing") == 0


# ---------------------------------------------------------------------------
# Commit and verify


def test_commit_verify_round_trip(tmp_path):
    run_dir = tmp_path / "run"

    checkpoint = commit_step(run_dir, 1, manifest_extra={"step": 1, "config_hash": "abc", "loss": float("nan")})

    assert checkpoint == run_dir / "checkpoint-00000001"
    assert read_files(checkpoint) == payload_for_step(1)
    manifest = verify_checkpoint(checkpoint)
    assert manifest == json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["format"] == 1
    assert manifest["name"] == "checkpoint-00000001"
    assert manifest["step"] == 1
    assert manifest["config_hash"] == "abc"
    assert manifest["loss"] is None
    assert sorted(manifest["files"]) == sorted(FILES)
    for relative, data in payload_for_step(1).items():
        assert manifest["files"][relative] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert leftover_entries(run_dir) == []
    assert latest_valid_checkpoint(run_dir) == checkpoint


def test_commit_replaces_existing_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    commit_checkpoint(run_dir, "checkpoint-00000001", write_payload({"a.bin": b"old", "only-old.bin": b"x"}))

    checkpoint = commit_checkpoint(run_dir, "checkpoint-00000001", write_payload({"a.bin": b"new"}))

    assert read_files(checkpoint) == {"a.bin": b"new"}
    assert verify_checkpoint(checkpoint)["files"].keys() == {"a.bin"}
    assert leftover_entries(run_dir) == []


def test_commit_rejects_reserved_manifest_keys(tmp_path):
    run_dir = tmp_path / "run"

    with pytest.raises(ValueError, match="reserved key 'files'"):
        commit_step(run_dir, 1, manifest_extra={"files": {}})

    assert list_checkpoints(run_dir) == []
    assert leftover_entries(run_dir) == []


def test_commit_rejects_manifest_from_write_files(tmp_path):
    run_dir = tmp_path / "run"

    with pytest.raises(ValueError, match="must not create manifest.json"):
        commit_checkpoint(run_dir, "checkpoint-00000001", write_payload({"manifest.json": b"{}"}))

    assert list_checkpoints(run_dir) == []
    assert leftover_entries(run_dir) == []


def test_commit_rejects_symlink(tmp_path):
    run_dir = tmp_path / "run"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside")

    def write_files(staging: Path) -> None:
        (staging / "link.bin").symlink_to(outside)

    with pytest.raises(ValueError, match="link.bin"):
        commit_checkpoint(run_dir, "checkpoint-00000001", write_files)

    assert leftover_entries(run_dir) == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a\\b"])
def test_commit_rejects_invalid_name(tmp_path, name):
    with pytest.raises(ValueError, match="invalid checkpoint name"):
        commit_checkpoint(tmp_path, name, write_payload(FILES))


# ---------------------------------------------------------------------------
# Failure injection


class InjectedWriteError(OSError):
    pass


def failing_payload_writer(files: dict[str, bytes], fail_at: int):
    """Return a ``write_files`` callback whose ``fail_at``-th write stops halfway and raises."""

    def write_files(staging: Path) -> None:
        for index, (relative, data) in enumerate(files.items()):
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                if index == fail_at:
                    handle.write(data[: len(data) // 2])
                    raise InjectedWriteError(errno.ENOSPC, f"injected failure writing {relative}")
                handle.write(data)

    return write_files


def assert_previous_checkpoint_intact(run_dir: Path, previous: Path) -> None:
    assert latest_valid_checkpoint(run_dir) == previous
    assert verify_checkpoint(previous)["name"] == previous.name
    assert read_files(previous) == payload_for_step(1)
    assert not (run_dir / checkpoint_name(2)).exists()
    assert leftover_entries(run_dir) == []


@pytest.mark.parametrize("fail_at", range(len(FILES)))
def test_commit_failure_at_each_file_write(tmp_path, fail_at):
    run_dir = tmp_path / "run"
    previous = commit_step(run_dir, 1)

    with pytest.raises(InjectedWriteError):
        commit_checkpoint(run_dir, checkpoint_name(2), failing_payload_writer(payload_for_step(2), fail_at))

    assert_previous_checkpoint_intact(run_dir, previous)


def test_commit_failure_during_manifest_write(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    previous = commit_step(run_dir, 1)
    original_replace = os.replace

    # The manifest is written with atomic_write_json, which finishes with os.replace.
    def replace_failing_for_manifest(src, dst):
        if Path(dst).name == "manifest.json":
            raise InjectedWriteError(errno.EIO, "injected failure writing manifest.json")
        original_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_for_manifest)
    with pytest.raises(InjectedWriteError):
        commit_step(run_dir, 2)

    assert_previous_checkpoint_intact(run_dir, previous)


def test_commit_failure_during_file_fsync(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    previous = commit_step(run_dir, 1)

    def failing_fsync(descriptor):
        raise InjectedWriteError(errno.EIO, "injected fsync failure")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(InjectedWriteError):
        commit_step(run_dir, 2)
    monkeypatch.undo()

    assert_previous_checkpoint_intact(run_dir, previous)


def test_commit_failure_at_final_rename(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    previous = commit_step(run_dir, 1)
    original_rename = os.rename

    def rename_failing_for_staging(src, dst):
        if Path(src).name.startswith(".staging-"):
            raise InjectedWriteError(errno.EIO, "injected rename failure")
        original_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_failing_for_staging)
    with pytest.raises(InjectedWriteError):
        commit_step(run_dir, 2)
    monkeypatch.undo()

    assert_previous_checkpoint_intact(run_dir, previous)


def test_commit_rename_failure_restores_replaced_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    previous = commit_step(run_dir, 1)
    original_rename = os.rename

    def rename_failing_for_staging(src, dst):
        if Path(src).name.startswith(".staging-"):
            raise InjectedWriteError(errno.EIO, "injected rename failure")
        original_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_failing_for_staging)
    with pytest.raises(InjectedWriteError):
        commit_checkpoint(run_dir, previous.name, write_payload({"replacement.bin": b"new"}))
    monkeypatch.undo()

    assert latest_valid_checkpoint(run_dir) == previous
    assert read_files(previous) == payload_for_step(1)
    assert leftover_entries(run_dir) == []


def test_commit_keyboard_interrupt_removes_staging(tmp_path):
    run_dir = tmp_path / "run"
    previous = commit_step(run_dir, 1)

    def interrupted(staging: Path) -> None:
        (staging / "partial.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        commit_checkpoint(run_dir, checkpoint_name(2), interrupted)

    assert_previous_checkpoint_intact(run_dir, previous)


SIGKILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    from cogrpo.checkpoint_io import commit_checkpoint

    run_dir = Path(sys.argv[1])
    marker = Path(sys.argv[2])


    def write_first(staging):
        (staging / "model.bin").write_bytes(b"first" * 1000)


    def write_second_and_hang(staging):
        (staging / "model.bin").write_bytes(b"second" * 1000)
        marker.write_text("in write_files")
        time.sleep(300)


    commit_checkpoint(run_dir, "checkpoint-00000001", write_first)
    commit_checkpoint(run_dir, "checkpoint-00000002", write_second_and_hang)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_keeps_previous(tmp_path, caplog):
    run_dir = tmp_path / "run"
    marker = tmp_path / "marker"
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-c", SIGKILL_SCRIPT, str(run_dir), str(marker)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The deadline is generous because the machine may be busy with other jobs.
        deadline = time.monotonic() + 120
        while not marker.exists():
            if process.poll() is not None:
                _, stderr = process.communicate()
                pytest.fail(f"save subprocess exited with {process.returncode} early: {stderr.decode()}")
            if time.monotonic() > deadline:
                pytest.fail("save subprocess did not reach write_files within 120 s")
            time.sleep(0.05)

        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()

    assert process.returncode == -signal.SIGKILL
    first = run_dir / "checkpoint-00000001"
    staging_folders = [entry for entry in run_dir.iterdir() if entry.name.startswith(".staging-")]
    assert len(staging_folders) == 1
    assert not (run_dir / "checkpoint-00000002").exists()

    with caplog.at_level(logging.WARNING, logger="cogrpo.checkpoint_io"):
        assert latest_valid_checkpoint(run_dir) == first
    assert verify_checkpoint(first)["files"]["model.bin"]["bytes"] == 5000

    assert clean_staging(run_dir) == 1
    assert leftover_entries(run_dir) == []
    assert latest_valid_checkpoint(run_dir) == first


def test_clean_staging_removes_leftovers(tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = commit_step(run_dir, 1)
    (run_dir / ".staging-checkpoint-00000002-abcd1234").mkdir()
    (run_dir / ".staging-checkpoint-00000002-abcd1234" / "model.bin").write_bytes(b"partial")
    (run_dir / ".trash-checkpoint-00000000-abcd1234").mkdir()
    (run_dir / ".staging-file").write_text("a file, not a folder")

    assert clean_staging(run_dir) == 2

    assert leftover_entries(run_dir) == [".staging-file"]
    assert latest_valid_checkpoint(run_dir) == checkpoint


def test_clean_staging_restores_replaced_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = commit_step(run_dir, 1)
    # State after a crash between moving the old folder aside and renaming the new one in.
    os.rename(checkpoint, run_dir / ".replaced-checkpoint-00000001-0123abcd")
    (run_dir / ".staging-checkpoint-00000001-zz").mkdir()

    assert clean_staging(run_dir) == 1

    assert leftover_entries(run_dir) == []
    assert latest_valid_checkpoint(run_dir) == checkpoint
    assert read_files(checkpoint) == payload_for_step(1)


def test_clean_staging_removes_replaced_after_commit(tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = commit_step(run_dir, 1)
    (run_dir / ".replaced-checkpoint-00000001-0123abcd").mkdir()

    assert clean_staging(run_dir) == 1

    assert leftover_entries(run_dir) == []
    assert latest_valid_checkpoint(run_dir) == checkpoint


# ---------------------------------------------------------------------------
# Corruption


def flip_byte(checkpoint: Path) -> str:
    target = checkpoint / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF
    target.write_bytes(bytes(data))
    return "model.safetensors"


def truncate_file(checkpoint: Path) -> str:
    target = checkpoint / "optimizer.pt"
    target.write_bytes(target.read_bytes()[:-1])
    return "optimizer.pt"


def delete_file(checkpoint: Path) -> str:
    (checkpoint / "state" / "trainer.json").unlink()
    return "state/trainer.json"


def add_unlisted_file(checkpoint: Path) -> str:
    (checkpoint / "state" / "extra.bin").write_bytes(b"not in the manifest")
    return "state/extra.bin"


def delete_manifest(checkpoint: Path) -> str:
    (checkpoint / "manifest.json").unlink()
    return "manifest.json"


def garble_manifest(checkpoint: Path) -> str:
    (checkpoint / "manifest.json").write_text('{"format": 1, "files": ')
    return "manifest.json"


def change_manifest_format(checkpoint: Path) -> str:
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["format"] = 99
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return "manifest.json"


def list_escaping_path(checkpoint: Path) -> str:
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["../outside.bin"] = {"sha256": "0" * 64, "bytes": 1}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return "../outside.bin"


CORRUPTIONS = {
    "edited byte": (flip_byte, "SHA-256 mismatch"),
    "truncated file": (truncate_file, "size mismatch"),
    "deleted file": (delete_file, "missing"),
    "unlisted file": (add_unlisted_file, "not listed"),
    "deleted manifest": (delete_manifest, "missing"),
    "invalid manifest JSON": (garble_manifest, "invalid JSON"),
    "unknown manifest format": (change_manifest_format, "unsupported format"),
    "path outside checkpoint": (list_escaping_path, "invalid path"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS.keys())
def test_verify_detects_corruption(tmp_path, corruption):
    corrupt, problem = CORRUPTIONS[corruption]
    checkpoint = commit_step(tmp_path / "run", 1)

    damaged_file = corrupt(checkpoint)

    with pytest.raises(CorruptCheckpointError) as raised:
        verify_checkpoint(checkpoint)
    assert raised.value.file == damaged_file
    assert damaged_file in str(raised.value)
    assert problem in str(raised.value)
    assert str(checkpoint) in str(raised.value)


@pytest.mark.parametrize("corruption", CORRUPTIONS.keys())
def test_latest_valid_skips_corrupt(tmp_path, caplog, corruption):
    corrupt, _ = CORRUPTIONS[corruption]
    run_dir = tmp_path / "run"
    older = commit_step(run_dir, 1)
    newer = commit_step(run_dir, 2)

    corrupt(newer)

    with caplog.at_level(logging.WARNING, logger="cogrpo.checkpoint_io"):
        assert latest_valid_checkpoint(run_dir) == older
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert newer.name in warnings[0]


def test_latest_valid_none_when_all_corrupt(tmp_path):
    run_dir = tmp_path / "run"
    delete_manifest(commit_step(run_dir, 1))

    assert latest_valid_checkpoint(run_dir) is None


def test_verify_missing_folder(tmp_path):
    with pytest.raises(CorruptCheckpointError, match="missing"):
        verify_checkpoint(tmp_path / "checkpoint-00000001")


# ---------------------------------------------------------------------------
# Pruning


def test_prune_keeps_newest(tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = [commit_step(run_dir, step) for step in range(1, 5)]

    deleted = prune_checkpoints(run_dir, keep=2)

    assert deleted == checkpoints[1::-1]
    assert list_checkpoints(run_dir) == checkpoints[2:]
    assert leftover_entries(run_dir) == []


def test_prune_skips_invalid_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = [commit_step(run_dir, step) for step in range(1, 5)]
    delete_manifest(checkpoints[3])

    deleted = prune_checkpoints(run_dir, keep=1)

    assert sorted(deleted) == checkpoints[:2]
    assert list_checkpoints(run_dir) == checkpoints[2:]
    assert latest_valid_checkpoint(run_dir) == checkpoints[2]


def test_prune_keep_more_than_present(tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = [commit_step(run_dir, step) for step in range(1, 3)]

    assert prune_checkpoints(run_dir, keep=5) == []
    assert list_checkpoints(run_dir) == checkpoints


@pytest.mark.parametrize("keep", [0, -1, True, 1.5])
def test_prune_rejects_invalid_keep(tmp_path, keep):
    run_dir = tmp_path / "run"
    checkpoint = commit_step(run_dir, 1)

    with pytest.raises(ValueError, match="keep must be"):
        prune_checkpoints(run_dir, keep=keep)

    assert list_checkpoints(run_dir) == [checkpoint]


def test_module_exports_public_api():
    for name in [
        "sanitize_json",
        "atomic_write_bytes",
        "atomic_write_text",
        "atomic_write_json",
        "CorruptCheckpointError",
        "commit_checkpoint",
        "verify_checkpoint",
        "list_checkpoints",
        "latest_valid_checkpoint",
        "prune_checkpoints",
        "clean_staging",
        "checkpoint_name",
    ]:
        assert hasattr(checkpoint_io, name), name
    assert issubclass(CorruptCheckpointError, RuntimeError)

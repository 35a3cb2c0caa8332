"""Crash-safe result files and checkpoint folders.

Every file is written to a temporary name in its destination folder, flushed, fsynced
and then renamed over the destination, so a reader sees either the old or the new
content, never a partial file.

A checkpoint is a folder ``<run_dir>/<name>`` that is built in a staging folder
``<run_dir>/.staging-<name>-<random>``. Its ``manifest.json`` lists the size and SHA-256
of every other file and is written last, after all data files are fsynced. The staging
folder is then renamed to ``<name>``, so a checkpoint folder with a matching manifest is
complete. A process killed during a save leaves only a ``.staging-*`` folder behind, which
``clean_staging`` removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

STAGING_PREFIX = ".staging-"
# A checkpoint that is being replaced by a new one of the same name waits under this
# prefix until the new folder has been renamed into place.
REPLACED_PREFIX = ".replaced-"
# A pruned checkpoint is renamed under this prefix before it is deleted, so a crash during
# the deletion never leaves a half-deleted folder under a checkpoint name.
TRASH_PREFIX = ".trash-"

# The step is zero-padded to 8 digits. Steps of 10**8 and above get more digits, and
# folders are always ordered by the step's integer value.
_CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d{8,})")
_HASH_CHUNK_BYTES = 1 << 20


class CorruptCheckpointError(RuntimeError):
    """A checkpoint folder whose files do not match its manifest.json."""

    def __init__(self, checkpoint: Path, file: str, problem: str) -> None:
        super().__init__(f"checkpoint {checkpoint} is corrupt: {file}: {problem}")
        self.checkpoint = checkpoint
        self.file = file
        self.problem = problem


# ---------------------------------------------------------------------------
# JSON values


def sanitize_json(obj: Any) -> Any:
    """Return a copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    NaN and ±Inf (Python or NumPy floats, at any depth) become ``None``. NumPy scalars
    become Python numbers or bools and NumPy arrays become nested lists. Tuples become
    lists, and NumPy scalar dict keys become Python scalars. Values of other types are
    returned unchanged, so ``json.dumps`` still raises ``TypeError`` for them.
    """
    if isinstance(obj, Mapping):
        return {_sanitize_key(key): sanitize_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize_json(item) for item in obj]
    if isinstance(obj, np.ndarray):
        return sanitize_json(obj.tolist())
    if isinstance(obj, np.generic):
        return sanitize_json(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _sanitize_key(key: Any) -> Any:
    if isinstance(key, np.generic):
        return key.item()
    return key


# ---------------------------------------------------------------------------
# Atomic files


def _fsync_directory(path: Path) -> None:
    """Fsync a folder so that a rename or a new entry in it survives a power loss."""
    if not hasattr(os, "O_DIRECTORY"):
        # NOTE: platforms without O_DIRECTORY (Windows) cannot fsync a folder, so a
        # rename there is durable only once the OS flushes the folder on its own.
        return
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _new_file_mode() -> int:
    """Return the permission bits that ``open(path, "w")`` would give a new file."""
    # os.umask can only be read by setting it. Doing that once at import keeps the
    # window in which another thread could see the zero mask to a single call.
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


_NEW_FILE_MODE = _new_file_mode()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` so that readers never see a partial file.

    The bytes go to a uniquely named temporary file in the same folder, which is flushed,
    fsynced and renamed over ``path`` with ``os.replace``. The folder is then fsynced. If
    anything fails, the temporary file is removed and the old file at ``path`` is left
    as it was. An existing file keeps its permission bits, and a new one gets the
    process umask.
    """
    path = Path(path)
    folder = path.parent
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _NEW_FILE_MODE

    descriptor, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(folder)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file at ``path`` with UTF-8 ``text``, atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Replace the file at ``path`` with ``obj`` as JSON, atomically.

    ``obj`` goes through ``sanitize_json`` first, so NaN and ±Inf are written as ``null``.
    Keys keep their insertion order and the file ends with a newline. A value that JSON
    cannot represent raises ``TypeError`` before anything is written.
    """
    text = json.dumps(sanitize_json(obj), indent=indent, allow_nan=False, sort_keys=False)
    atomic_write_text(path, text + "\n")


# ---------------------------------------------------------------------------
# Committing checkpoints


def checkpoint_name(step: int) -> str:
    """Return the folder name of the checkpoint for ``step``, e.g. ``checkpoint-00000012``."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}: {step!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"checkpoint-{int(step):08d}"


def _sha256_and_fsync(path: Path) -> tuple[str, int]:
    """Hash the file at ``path``, fsync it, and return its SHA-256 hex digest and size."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(handle.fileno())
    return digest.hexdigest(), size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _list_files(folder: Path) -> tuple[list[str], list[str], list[Path]]:
    """Walk ``folder`` and return its regular files and other entries as relative POSIX paths.

    The second list contains symlinks and special files, which a checkpoint must not
    contain. The third list contains the subfolders, deepest first.
    """
    files: list[str] = []
    others: list[str] = []
    subfolders: list[Path] = []
    for root, dirnames, filenames in os.walk(folder):
        root_path = Path(root)
        for dirname in dirnames:
            entry = root_path / dirname
            if entry.is_symlink():
                others.append(entry.relative_to(folder).as_posix())
            else:
                subfolders.append(entry)
        for filename in filenames:
            entry = root_path / filename
            relative = entry.relative_to(folder).as_posix()
            if entry.is_symlink() or not entry.is_file():
                others.append(relative)
            else:
                files.append(relative)
    subfolders.sort(key=lambda subfolder: len(subfolder.parts), reverse=True)
    return sorted(files), sorted(others), subfolders


def _validate_entry_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in {".", ".."} or name.startswith("."):
        raise ValueError(
            f"invalid checkpoint name {name!r}: expected a plain folder name that does not "
            "start with '.', e.g. checkpoint_name(step)"
        )


def _build_manifest(staging: Path, name: str, manifest_extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fsync every file in ``staging`` and return the manifest that lists them."""
    files, others, subfolders = _list_files(staging)
    if others:
        raise ValueError(
            f"write_files created symlinks or special files in {staging}: {', '.join(others)}. "
            "A checkpoint may contain only regular files."
        )
    if MANIFEST_NAME in files:
        raise ValueError(f"write_files must not create {MANIFEST_NAME}, because commit_checkpoint writes it last")

    listed: dict[str, dict[str, Any]] = {}
    for relative in files:
        sha256, size = _sha256_and_fsync(staging / relative)
        listed[relative] = {"sha256": sha256, "bytes": size}
    for subfolder in subfolders:
        _fsync_directory(subfolder)

    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "name": name, "files": listed}
    for key, value in (manifest_extra or {}).items():
        if key in manifest:
            raise ValueError(f"manifest_extra must not set the reserved key {key!r}")
        manifest[key] = value
    return manifest


def _remove_tree(path: Path, description: str) -> None:
    """Delete a folder and log, without raising, if that fails."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning("failed to remove %s %s: %s", description, path, error)


def commit_checkpoint(
    run_dir: str | os.PathLike[str],
    name: str,
    write_files: Callable[[Path], None],
    manifest_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder ``run_dir/name`` atomically and return its path.

    ``write_files(staging)`` writes the checkpoint's files into an empty staging folder
    ``run_dir/.staging-<name>-<random>``. Subfolders are allowed, but symlinks and a file
    named ``manifest.json`` are not. Every file is then fsynced and ``manifest.json`` is
    written last. It contains ``format``, ``name``, ``files`` (relative POSIX path to
    ``sha256`` and ``bytes``) and the keys of ``manifest_extra``, which must not reuse
    the first three. Finally the staging folder is renamed to ``run_dir/name``.

    An existing ``run_dir/name`` is first renamed to ``.replaced-<name>-<random>`` and
    deleted only after the new folder is in place. If the rename fails, the old folder is
    moved back. On any exception the staging folder is removed and the exception is
    re-raised, so ``run_dir/name`` is either the old checkpoint or the complete new one.

    Only one process may commit into ``run_dir`` at a time. In distributed training,
    rank 0 commits after a barrier.
    """
    run_dir = Path(run_dir)
    _validate_entry_name(name)
    run_dir.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=run_dir))
    final = run_dir / name
    replaced: Path | None = None
    try:
        write_files(staging)
        manifest = _build_manifest(staging, name, manifest_extra)
        atomic_write_json(staging / MANIFEST_NAME, manifest)
        _fsync_directory(staging)

        if final.exists() or final.is_symlink():
            replaced = run_dir / f"{REPLACED_PREFIX}{name}-{secrets.token_hex(4)}"
            os.rename(final, replaced)
        try:
            os.rename(staging, final)
        except BaseException:
            if replaced is not None:
                os.rename(replaced, final)
                replaced = None
            raise
        _fsync_directory(run_dir)
    except BaseException:
        _remove_tree(staging, "staging folder")
        raise

    if replaced is not None:
        _remove_tree(replaced, "replaced checkpoint")
    logger.info("committed checkpoint %s (%d files)", final, len(manifest["files"]))
    return final


# ---------------------------------------------------------------------------
# Reading and maintaining a run folder


def _load_manifest(checkpoint: Path) -> dict[str, Any]:
    manifest_path = checkpoint / MANIFEST_NAME
    if not checkpoint.is_dir():
        raise CorruptCheckpointError(checkpoint, ".", "the checkpoint folder is missing")
    if not manifest_path.is_file():
        raise CorruptCheckpointError(checkpoint, MANIFEST_NAME, "file is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(checkpoint, MANIFEST_NAME, f"invalid JSON: {error}") from error

    if not isinstance(manifest, dict):
        raise CorruptCheckpointError(checkpoint, MANIFEST_NAME, "expected a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptCheckpointError(
            checkpoint,
            MANIFEST_NAME,
            f"unsupported format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}",
        )
    if not isinstance(manifest.get("files"), dict):
        raise CorruptCheckpointError(checkpoint, MANIFEST_NAME, "'files' is missing or not an object")
    return manifest


def _validate_listed_path(checkpoint: Path, relative: str, entry: Any) -> None:
    parts = relative.split("/")
    if not relative or relative.startswith("/") or "\\" in relative or any(part in {"", ".", ".."} for part in parts):
        raise CorruptCheckpointError(checkpoint, relative, "invalid path in manifest.json")
    if relative == MANIFEST_NAME:
        raise CorruptCheckpointError(checkpoint, relative, "manifest.json must not list itself")
    valid_entry = (
        isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("bytes"), int)
        and not isinstance(entry.get("bytes"), bool)
    )
    if not valid_entry:
        raise CorruptCheckpointError(checkpoint, relative, "manifest entry needs a 'sha256' string and a 'bytes' int")


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest and return the manifest.

    Every listed file must exist as a regular file with the listed size and SHA-256, and
    every file in the folder except ``manifest.json`` must be listed. Raises
    ``CorruptCheckpointError`` naming the first file that fails and the problem.
    Sizes are checked for all files before any file is hashed.
    """
    checkpoint = Path(path)
    manifest = _load_manifest(checkpoint)
    listed: dict[str, Any] = manifest["files"]

    for relative, entry in listed.items():
        _validate_listed_path(checkpoint, relative, entry)

    present, others, _ = _list_files(checkpoint)
    if others:
        raise CorruptCheckpointError(checkpoint, others[0], "symlink or special file, expected a regular file")
    present_set = set(present)
    present_set.discard(MANIFEST_NAME)
    unlisted = sorted(present_set - set(listed))
    if unlisted:
        raise CorruptCheckpointError(checkpoint, unlisted[0], "file is not listed in manifest.json")

    for relative, entry in listed.items():
        if relative not in present_set:
            raise CorruptCheckpointError(checkpoint, relative, "file listed in manifest.json is missing")
        size = (checkpoint / relative).stat().st_size
        if size != entry["bytes"]:
            raise CorruptCheckpointError(
                checkpoint, relative, f"size mismatch: {size} bytes, manifest.json lists {entry['bytes']}"
            )

    for relative, entry in listed.items():
        sha256 = _sha256(checkpoint / relative)
        if sha256 != entry["sha256"]:
            raise CorruptCheckpointError(
                checkpoint, relative, f"SHA-256 mismatch: {sha256}, manifest.json lists {entry['sha256']}"
            )
    return manifest


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Return the ``checkpoint-<step>`` folders in ``run_dir``, ordered by ascending step.

    Folders are listed whether or not they verify. A missing ``run_dir`` gives ``[]``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in run_dir.iterdir():
        match = _CHECKPOINT_PATTERN.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append((int(match.group(1)), entry))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def latest_valid_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Return the newest checkpoint in ``run_dir`` that verifies, or None if there is none.

    Logs a warning for each newer checkpoint that fails verification and is skipped.
    """
    for checkpoint in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(checkpoint)
        except CorruptCheckpointError as error:
            logger.warning("skipping invalid checkpoint: %s", error)
            continue
        return checkpoint
    return None


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete the oldest valid checkpoints so that the ``keep`` newest valid ones remain.

    ``keep`` must be at least 1, so the newest valid checkpoint is never deleted.
    Checkpoints that fail verification are left in place for inspection and logged as
    warnings. Each deleted folder is first renamed to ``.trash-<name>-<random>``, so a
    crash during deletion leaves no half-deleted checkpoint. Returns the deleted paths.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1 so the newest valid checkpoint survives, got {keep!r}")
    run_dir = Path(run_dir)

    valid_count = 0
    deleted: list[Path] = []
    for checkpoint in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(checkpoint)
        except CorruptCheckpointError as error:
            logger.warning("not pruning invalid checkpoint: %s", error)
            continue
        valid_count += 1
        if valid_count <= keep:
            continue

        trash = run_dir / f"{TRASH_PREFIX}{checkpoint.name}-{secrets.token_hex(4)}"
        os.rename(checkpoint, trash)
        _fsync_directory(run_dir)
        _remove_tree(trash, "pruned checkpoint")
        deleted.append(checkpoint)
        logger.info("pruned checkpoint %s", checkpoint)
    return deleted


def _replaced_original_name(folder_name: str) -> str:
    """Return ``<name>`` from ``.replaced-<name>-<8 hex digits>``."""
    return folder_name[len(REPLACED_PREFIX) :].rsplit("-", 1)[0]


def clean_staging(run_dir: str | os.PathLike[str]) -> int:
    """Remove leftovers of interrupted saves in ``run_dir`` and return how many were removed.

    Removes ``.staging-*`` folders (unfinished checkpoints) and ``.trash-*`` folders
    (unfinished prunes). A ``.replaced-<name>-*`` folder is deleted if ``<name>`` exists.
    If ``<name>`` is missing, the save crashed between moving the old checkpoint aside and
    renaming the new one in, so the old folder is renamed back to ``<name>``, logged,
    and not counted. Call this only while no save into ``run_dir`` is running, e.g. at
    startup before resuming.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return 0

    removed = 0
    for entry in sorted(run_dir.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(entry)
            logger.info("removed leftover folder %s", entry)
            removed += 1
        elif entry.name.startswith(REPLACED_PREFIX):
            original = run_dir / _replaced_original_name(entry.name)
            if original.exists():
                shutil.rmtree(entry)
                logger.info("removed leftover folder %s", entry)
                removed += 1
            else:
                os.rename(entry, original)
                logger.warning("restored %s from %s after an interrupted save", original, entry)
    if removed:
        _fsync_directory(run_dir)
    return removed

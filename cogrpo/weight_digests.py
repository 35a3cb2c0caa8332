"""SHA-256 digests of weight files, for result JSON: which bytes a model or scorer actually loaded.

Files are hashed in 1 MiB blocks, so multi-GB checkpoints never sit in memory,
and each file is hashed once per process. The cache key is the resolved path
with its size and modification time, so a file rewritten in place is hashed again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
HASH_BLOCK_BYTES = 1 << 20

_cache: dict[tuple[str, int, int], str] = {}
_cache_lock = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file's bytes, following symbolic links (Hugging Face cache snapshots)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with resolved.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _cache_lock:
        _cache[key] = value
    return value


def is_weight_file(path: Path) -> bool:
    """Return True for a file whose suffix is one of ``WEIGHT_SUFFIXES``."""
    return path.suffix.lower() in WEIGHT_SUFFIXES


def folder_weight_sha256(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Return the SHA-256 of every weight file under ``folder``, keyed by its POSIX path relative to ``folder``.

    Symbolic links to files are followed, as in a Hugging Face snapshot folder.
    A missing folder gives an empty dictionary.
    """
    root = Path(folder)
    if not root.is_dir():
        return {}
    files = sorted(path for path in root.rglob("*") if path.is_file() and is_weight_file(path))
    return {path.relative_to(root).as_posix(): file_sha256(path) for path in files}


def weight_sha256(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the SHA-256 of the weight files at ``path``: a weight file itself, or those of a folder.

    A single file is keyed by its absolute path and a folder's files by
    ``<folder>/<relative path>``, so the keys of several sources do not collide.
    Symbolic links stay in the keys, so a Hugging Face snapshot path keeps its revision.
    """
    location = Path(os.path.abspath(path))
    if location.is_file():
        return {str(location): file_sha256(location)}
    return {f"{location}/{relative}": digest for relative, digest in folder_weight_sha256(location).items()}


def hub_snapshot_folder(
    repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None = None, probe: str = "config.json"
) -> Path | None:
    """Return the local Hugging Face snapshot folder of ``repo_id`` at ``revision``, or None when it is not cached.

    The folder is found through the cached ``probe`` file, so nothing is downloaded.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, probe, revision=revision, cache_dir=cache_dir)
    return Path(found).parent if isinstance(found, str) else None

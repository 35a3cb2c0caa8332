"""Benchmark files pinned to a commit of their GitHub repository: download, cache and checksum checks.

A file is fetched from ``https://raw.githubusercontent.com/<repo>/<commit>/<path>``
into a cache folder, checked against its recorded SHA-256 (and git blob id when
recorded), and checked again on every later use. No download happens when
``HF_HUB_OFFLINE`` is set, so one switch keeps every benchmark input offline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedFile:
    """A file in a GitHub repository at a fixed commit, with its checksums when recorded."""

    repo: str
    commit: str
    path: str
    sha256: str | None = None
    # Git's object id of the file (SHA-1 of "blob <size>\0" + content), as listed
    # by `git ls-tree <commit>`.
    git_blob_sha1: str | None = None

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"

    @property
    def cache_name(self) -> str:
        """File name in the cache: the file's stem, the first 12 digits of the commit and its suffix."""
        name = Path(self.path)
        return f"{name.stem}-{self.commit[:12]}{name.suffix}"


class ChecksumMismatchError(ValueError):
    """A file whose SHA-256 or git blob id differs from the recorded one."""


def hub_offline() -> bool:
    """Return True when ``HF_HUB_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def default_cache_dir(name: str) -> Path:
    """Return ``$XDG_CACHE_HOME/cogrpo/<name>``, with ``~/.cache`` when the variable is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cogrpo" / name


def file_checksums(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Return the SHA-256 and the git blob SHA-1 of a file."""
    path = Path(path)
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            blob.update(block)
    return sha256.hexdigest(), blob.hexdigest()


def verify_file(
    path: str | os.PathLike[str],
    pinned: PinnedFile,
    *,
    expected_sha256: str | None = None,
    fix: str = "Delete the file and fetch it again.",
) -> str:
    """Check a file against its expected SHA-256 and the recorded git blob id; return its SHA-256.

    ``expected_sha256`` replaces the recorded SHA-256 and skips the git blob check,
    for a file that the caller pins on purpose. Raises ``ChecksumMismatchError``
    naming the file, the expected and actual checksums, the source URL and ``fix``.
    """
    path = Path(path)
    sha256, blob = file_checksums(path)
    if expected_sha256 is not None:
        if sha256 != expected_sha256.lower():
            raise ChecksumMismatchError(
                f"{path} has SHA-256 {sha256}, expected {expected_sha256.lower()} (the pinned value). {fix}"
            )
        return sha256
    if pinned.git_blob_sha1 is not None and blob != pinned.git_blob_sha1:
        raise ChecksumMismatchError(f"{path} has git blob id {blob}, expected {pinned.git_blob_sha1} for {pinned.url}. {fix}")
    if pinned.sha256 is None:
        logger.warning("%s has SHA-256 %s, but no SHA-256 is recorded for %s to compare with", path, sha256, pinned.url)
    elif sha256 != pinned.sha256:
        raise ChecksumMismatchError(f"{path} has SHA-256 {sha256}, expected {pinned.sha256} for {pinned.url}. {fix}")
    return sha256


def fetch_pinned(
    pinned: PinnedFile,
    cache_dir: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    local_option: str = "a local path",
) -> Path:
    """Return the cached copy of ``pinned``, downloading it first when it is not cached.

    The download is skipped, with ``FileNotFoundError``, when ``HF_HUB_OFFLINE``
    is set. ``timeout`` is in seconds per network operation. The file is checked
    with ``verify_file`` on download and on every later call. ``local_option``
    names how a caller passes a local copy instead, for the error messages.
    """
    directory = Path(cache_dir)
    target = directory / pinned.cache_name
    if target.is_file():
        verify_file(target, pinned)
        return target
    if hub_offline():
        raise FileNotFoundError(
            f"{target} is not cached and HF_HUB_OFFLINE is set. Download {pinned.url} to that path "
            f"on a machine with access, or pass {local_option}."
        )
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(pinned.url, timeout=timeout) as response, partial.open("wb") as handle:
            for block in iter(lambda: response.read(1 << 20), b""):
                handle.write(block)
    except OSError as error:  # URLError and timeouts are OSError subclasses
        partial.unlink(missing_ok=True)
        raise OSError(f"could not download {pinned.url}: {error}. Download it by hand and pass {local_option}.") from error
    with partial.open("rb") as handle:
        if handle.read(40).startswith(b"version https://git-lfs"):
            partial.unlink()
            raise OSError(f"{pinned.url} returned a Git LFS pointer, not the file; download the file from the GitHub web page")
    try:
        verify_file(partial, pinned)
    except ChecksumMismatchError:
        partial.unlink()
        raise
    partial.replace(target)
    return target

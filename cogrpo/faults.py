"""Fault injection for tests, read from the ``COGRPO_FAULT`` environment variable.

``COGRPO_FAULT`` is a comma-separated list of ``KIND@rankR:iterN`` or
``KIND@rankR:iterN-M`` entries (iterations N to M inclusive, counted from 0).
Process ``R`` injects the fault in those training iterations:

``nan_reward``
    Every reward of the process's images is NaN, as if the scorer failed.
``nan_loss``
    The process's loss is multiplied by NaN before the backward pass, so the
    gradient all-reduce spreads NaN to every process.
``nan_grad``
    After the gradients are reduced across processes, the first element of the
    process's first gradient is set to NaN, so only this process has it.
``oom``
    The process raises ``torch.OutOfMemoryError`` when the update starts.
``hang``
    The process sleeps from the start of the update until it is killed, as a
    stuck process would.

Example: ``COGRPO_FAULT=nan_grad@rank1:iter0-2,oom@rank1:iter5``. When the
variable is unset or empty, no fault fires. A malformed value raises
``ValueError`` when the trainer starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

ENV_VAR = "COGRPO_FAULT"
KINDS = ("nan_reward", "nan_loss", "nan_grad", "oom", "hang")

_ENTRY = re.compile(r"(?P<kind>[a-z_]+)@rank(?P<rank>\d+):iter(?P<first>\d+)(?:-(?P<last>\d+))?")


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, the process rank and the inclusive iteration range."""

    kind: str
    rank: int
    first: int
    last: int

    def fires(self, kind: str, rank: int, iteration: int) -> bool:
        return self.kind == kind and self.rank == rank and self.first <= iteration <= self.last


class FaultPlan:
    """The faults parsed from ``COGRPO_FAULT``. An empty plan never fires."""

    def __init__(self, faults: tuple[Fault, ...] = ()):
        self.faults = faults

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Parse a ``COGRPO_FAULT`` value, raising ``ValueError`` that names the first malformed entry."""
        faults = []
        for entry in text.split(","):
            entry = entry.strip()
            if not entry:
                continue
            match = _ENTRY.fullmatch(entry)
            if match is None:
                raise ValueError(
                    f"invalid {ENV_VAR} entry {entry!r}; expected KIND@rankR:iterN or KIND@rankR:iterN-M "
                    f"with KIND one of {', '.join(KINDS)}, e.g. nan_grad@rank1:iter0"
                )
            kind = match["kind"]
            if kind not in KINDS:
                raise ValueError(f"invalid {ENV_VAR} entry {entry!r}: unknown fault kind {kind!r}; use one of {', '.join(KINDS)}")
            first = int(match["first"])
            last = int(match["last"]) if match["last"] is not None else first
            if last < first:
                raise ValueError(f"invalid {ENV_VAR} entry {entry!r}: the iteration range {first}-{last} is empty")
            faults.append(Fault(kind, int(match["rank"]), first, last))
        return cls(tuple(faults))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultPlan:
        """Parse ``COGRPO_FAULT`` from ``environ`` (default: ``os.environ``)."""
        environ = os.environ if environ is None else environ
        return cls.parse(environ.get(ENV_VAR, ""))

    def check_world_size(self, world_size: int) -> None:
        """Raise ``ValueError`` when a fault names a rank the run does not have."""
        for fault in self.faults:
            if fault.rank >= world_size:
                raise ValueError(
                    f"invalid {ENV_VAR}: a {fault.kind} fault names rank {fault.rank}, "
                    f"but the run has {world_size} process(es) (ranks 0 to {world_size - 1})"
                )

    def fires(self, kind: str, rank: int, iteration: int) -> bool:
        """Return True when a fault of ``kind`` is planned for ``rank`` at ``iteration``."""
        return any(fault.fires(kind, rank, iteration) for fault in self.faults)

    def __bool__(self) -> bool:
        return bool(self.faults)

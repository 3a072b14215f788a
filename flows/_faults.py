"""TESTING ONLY: faults injected into a run of the flow on purpose (the ``fault`` Parameter), so that
tests can prove every step survives an exception or a kill followed by ``resume``.

``fault`` is a comma-separated list with one entry per run of a resume chain: entry 0 applies to the
fresh run, entry 1 to its resume, entry 2 to the resume of that resume, and so on (``resume`` keeps the
origin run's Parameters, so one value has to describe the whole chain; a run finds its place in it by
walking its origins, ``flows/_lineage.py``). An entry is

- ``<step>:raise``: the step raises at the end of its work (nothing it made is kept);
- ``<step>:kill``: the step's task process sends itself SIGKILL there (no cleanup, no exception
  handler, no ``finally``: what a lost node or the out-of-memory killer does);
- ``@N`` after either, for ``train``: once checkpoint N has been saved to the datastore (``@0``: right
  after the checkpoint to continue from was restored, before any training step); for
  ``generate_hints``: once N hints of the shard are final (and synced to the cache);
- ``-``: no fault in that run.

In a foreach step (``generate_hints``, ``evaluate``) only the first branch (index 0) is hit.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from typing import Any

_ENTRY = re.compile(r"^(?P<step>[a-z_]+):(?P<kind>raise|kill)(?:@(?P<at>\d+))?$")


class InjectedFault(RuntimeError):
    """Raised on purpose by a ``<step>:raise`` fault."""


@dataclass(frozen=True)
class Fault:
    step: str
    kind: str  # "raise" | "kill"
    at: int | None = None

    def fire(self, where: str) -> None:
        if self.kind == "kill":
            print(f"[ptdpo] fault: SIGKILL of this task ({where})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected fault: {self.step}:{self.kind} ({where})")


def parse_faults(spec: str, steps: set[str] | None = None) -> list[Fault | None]:
    """The faults of ``spec``, one per run of the chain (None: no fault in that run)."""
    out: list[Fault | None] = []
    for i, entry in enumerate(x.strip() for x in (spec or "").split(",")):
        if entry in ("", "-"):
            out.append(None)
            continue
        m = _ENTRY.match(entry)
        if m is None:
            raise ValueError(f"fault entry {i} {entry!r}: expected <step>:raise|kill[@N] or '-'")
        if steps is not None and m["step"] not in steps:
            raise ValueError(f"fault entry {i} {entry!r}: no step {m['step']!r} (steps: {sorted(steps)})")
        out.append(Fault(m["step"], m["kind"], int(m["at"]) if m["at"] is not None else None))
    return out if any(out) else []


def fault_here(spec: str, current: Any, index: int | None = None) -> Fault | None:
    """The fault this task is to suffer (the entry of this run's place in its resume chain, for this
    step, on the first foreach branch), or None."""
    if not spec:
        return None
    from _lineage import run_chain

    faults = parse_faults(spec)
    depth = len(run_chain(current))
    fault = faults[depth] if depth < len(faults) else None
    if fault is None or fault.step != current.step_name or (index not in (None, 0)):
        return None
    return fault


def maybe_fail(spec: str, current: Any, index: int | None = None) -> None:
    """Fire this task's fault if it has one that is not tied to a point inside the step (``@N``)."""
    fault = fault_here(spec, current, index)
    if fault is not None and fault.at is None:
        fault.fire(f"end of {current.step_name}")

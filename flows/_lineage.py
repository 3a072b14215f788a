"""Which runs a run continues: the chain of ``resume`` origins.

``python flow.py resume`` starts a new run that clones the successful tasks of its origin run
(``current.origin_run_id``) and re-runs the rest. A resume of a resume has the first resume as its
origin, so one step back is not enough to find earlier work: a resume that was itself interrupted
before its ``train`` task saved anything must still find the checkpoints of the run before it. Metaflow
records every task's origin run in the task metadata (``origin-run-id``, ``"None"`` for a fresh run),
which is what :func:`origin_chain` follows.
"""

from __future__ import annotations

from typing import Any


def origin_of(flow_name: str, run_id: str) -> str | None:
    """The run that ``run_id`` resumed, or None for a fresh run (or a run that holds no task)."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    try:
        run = Run(f"{flow_name}/{run_id}", _namespace_check=False)
        for step in run:
            for task in step:
                value = task.metadata_dict.get("origin-run-id")
                return None if value in (None, "", "None") else str(value)
    except MetaflowNotFound:
        return None
    return None


def origin_chain(flow_name: str, origin_run_id: str | None, limit: int = 1000) -> list[str]:
    """``[origin, origin's origin, ...]``: the runs a run with ``origin_run_id`` continues, newest first,
    ending at the fresh run that started it all. Empty for a fresh run."""
    chain: list[str] = []
    run_id = str(origin_run_id) if origin_run_id else None
    while run_id and run_id not in chain and len(chain) < limit:
        chain.append(run_id)
        run_id = origin_of(flow_name, run_id)
    return chain


def run_chain(current: Any) -> list[str]:
    """The chain of the running task's run (:func:`origin_chain` of ``current.origin_run_id``), computed
    once per task."""
    cached = getattr(run_chain, "_cache", None)
    key = (current.flow_name, current.run_id)
    if cached is None or cached[0] != key:
        run_chain._cache = (key, origin_chain(current.flow_name, getattr(current, "origin_run_id", None)))
    return list(run_chain._cache[1])

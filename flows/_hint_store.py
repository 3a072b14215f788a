"""Where ``generate_hints`` keeps its resumable cache: with the run, in the run's datastore.

A shard's finished hints are appended to a local jsonl file (``ptdpo.hints.generation.ShardCache``) and
copied, in segments, into the flow's datastore (the local ``.metaflow`` folder, or S3 on a cluster)
under ``mf.ptdpo/hint-cache/<flow>/<run>/``, where ``<run>`` is the first run of the resume chain
(``flows/_lineage.py``): every retry and every resume of that run, on any machine or pod, reads back the
hints finished before it and generates only the rest. ``hints.cache_dir`` (or ``$PTDPO_HINT_CACHE``)
names a shared folder instead (a volume every pod mounts), with no datastore copy.

The datastore is reached the way metaflow-checkpoint reaches it: the storage backend of the running
task's datastore (``flow._datastore._storage_impl``), so the copy lives wherever the run's artifacts do.
"""

from __future__ import annotations

import os
from typing import Any

PREFIX = "mf.ptdpo/hint-cache"


class DatastoreMirror:
    """``ptdpo.hints.generation.CacheMirror`` over a Metaflow datastore storage backend (local or S3),
    every key under ``prefix``."""

    def __init__(self, storage: Any, prefix: str):
        self.storage, self.prefix = storage, prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def list(self, folder: str) -> list[str]:
        base = self._key(folder)
        out = []
        for entry in self.storage.list_content([base]):
            name = entry.path.rstrip("/").split("/")[-1]
            if entry.is_file and name.startswith("seg-"):
                out.append(f"{folder}/{name}")
        return out

    def get(self, key: str) -> bytes:
        with self.storage.load_bytes([self._key(key)]) as loaded:
            for _, path, _ in loaded:
                if path is None:
                    raise FileNotFoundError(self._key(key))
                with open(path, "rb") as f:
                    return f.read()
        raise FileNotFoundError(self._key(key))

    def put(self, key: str, data: bytes) -> None:
        import io

        self.storage.save_bytes(iter([(self._key(key), io.BytesIO(data))]), overwrite=True)

    def __repr__(self) -> str:
        return f"DatastoreMirror({getattr(self.storage, 'datastore_root', '?')}/{self.prefix})"


def hint_cache_for(flow: Any, current: Any, configured: str | None) -> tuple[str, DatastoreMirror | None]:
    """(local cache folder, datastore copy or None) for this task's shard cache."""
    from _lineage import run_chain

    from steps.hints import hint_cache_dir

    root_run = (run_chain(current) or [current.run_id])[-1]
    run_name = f"{current.flow_name}-{root_run}"
    if configured or os.environ.get("PTDPO_HINT_CACHE"):
        return hint_cache_dir(configured, run_name), None
    storage = flow._datastore._storage_impl
    mirror = DatastoreMirror(storage, f"{PREFIX}/{current.flow_name}/{root_run}")
    return hint_cache_dir(None, run_name), mirror

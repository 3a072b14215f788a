"""Images that a data set ships as an archive beside its rows (ViRL39K: ``images.zip`` next to
``39Krelease.parquet``, whose ``image`` column holds paths such as ``images/<name>.jpg``).

:func:`prepare_image_root` makes the folder a spec's ``image_root`` names ready: it finds the archive
(a local file, or a file of the spec's hub dataset repo, fetched by :func:`fetch_hub_file`, the only
function here that uses the network) and unpacks it there once (:func:`unpack_once`).

Unpacking is idempotent and safe to interrupt: a marker file (:data:`MARKER`) naming the archive is
written last, only after every member was extracted. A folder without the marker, or with the marker of
another archive, is unpacked again over what is there (members are overwritten, so a file cut short by
a crash is rewritten; nothing is deleted, so an ``image_root`` that holds other files is never wiped).
Concurrent unpackers of one folder are serialised by a lock file beside it.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

from ptdpo.data.sources import is_hub_id
from ptdpo.data.spec import DatasetSpec, SpecError

MARKER = ".ptdpo-unpacked.json"


def _resolve(p: str, base_dir: Path | None) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() or base_dir is None else base_dir / q


def fetch_hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """Download one file of a Hugging Face dataset repo into the hub cache (``HF_HUB_CACHE``, under
    ``HF_HOME``: the cluster's cache volume) and return its local path; a file already cached (same
    revision) is not downloaded again, and ``HF_HUB_OFFLINE=1`` uses the cache only."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", revision=revision))
    except Exception as e:  # noqa: BLE001 - every hub failure gets the same context
        raise SpecError(f"cannot fetch {filename!r} from the dataset repo {repo_id!r}"
                        f"{f' at revision {revision!r}' if revision else ''}: {type(e).__name__}: {e}") from e


def resolve_archive(spec: DatasetSpec, base_dir: Path | None = None) -> Path:
    """The local path of ``spec.images_archive``: a file (relative to ``base_dir``), else, for a spec
    that reads a hub dataset (format ``hf``, ``path`` a hub id), that repo's file of this name."""
    name = spec.images_archive
    if name is None:
        raise SpecError("the spec has no images_archive")
    local = _resolve(name, base_dir)
    if local.is_file():
        return local
    if spec.format == "hf" and is_hub_id(spec.path, base_dir):
        return fetch_hub_file(spec.path, name, spec.revision)
    raise SpecError(f"images_archive {name!r}: no such file (looked at {local}), and the spec reads no hub "
                    "dataset to fetch it from (format 'hf' with 'path' a hub id)")


def archive_identity(archive: Path) -> dict[str, Any]:
    """What the marker records of an archive: its name and size. A hub-cache path resolves to its blob,
    named by content hash, so a new revision of the archive has another name."""
    real = Path(os.path.realpath(archive))
    return {"archive": real.name, "size": real.stat().st_size}


def read_marker(dest: str | Path) -> dict[str, Any] | None:
    """The marker of an unpacked folder (archive, size, files, unpacked_at), or None."""
    try:
        return json.loads((Path(dest) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _extract(archive: Path, dest: Path) -> int:
    """Extract every member into ``dest`` (overwriting); the number of files. Member paths that would
    leave ``dest`` (absolute, ``..``) are refused or sanitised by the standard library's extractors."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # strips absolute paths and ".." components
            return sum(1 for i in zf.infolist() if not i.is_dir())
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")  # refuses members outside dest, links out, devices
            return sum(1 for m in tf.getmembers() if m.isfile())
    raise SpecError(f"images archive {archive} is neither a zip nor a tar file")


def unpack_once(archive: str | Path, dest: str | Path) -> int:
    """Unpack ``archive`` into ``dest`` unless its marker says this archive is already there; the number
    of files extracted (0 when nothing had to be done). See the module docstring."""
    import fcntl

    archive, dest = Path(archive), Path(dest)
    ident = archive_identity(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second unpacker waits, then finds the marker
        marker = read_marker(dest)
        if marker is not None and {k: marker.get(k) for k in ident} == ident:
            return 0
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MARKER).unlink(missing_ok=True)  # a stale marker must not survive a failed redo
        n = _extract(archive, dest)
        tmp = dest / f"{MARKER}.tmp"
        tmp.write_text(json.dumps({**ident, "files": n, "unpacked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}),
                       encoding="utf-8")
        os.replace(tmp, dest / MARKER)  # written last: its presence means every member is there
        return n


def prepare_image_root(spec: DatasetSpec, base_dir: Path | None = None) -> Path | None:
    """The folder relative image paths of ``spec`` are taken from (None: the data file's folder), with
    ``images_archive`` fetched and unpacked into it first when the spec names one."""
    if spec.image_root is None:
        return None
    root = _resolve(spec.image_root, base_dir)
    if spec.images_archive is not None:
        unpack_once(resolve_archive(spec, base_dir), root)
    elif not root.is_dir():
        raise SpecError(f"image_root {spec.image_root!r} is not a folder (looked at {root})")
    return root

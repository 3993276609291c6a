"""Where artifacts live: a local folder, or any fsspec filesystem by URI (s3://, gs://, ...).

`location(p)` is a `pathlib.Path` for a local path (so local runs behave exactly as before: flock,
mmap, rename) and a `UPath` (universal_pathlib, the same API over fsspec) for a URI. s3:// takes
its endpoint and credentials from the standard environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), so any S3-compatible server works.

Object stores have no rename and no partial objects: an object appears whole when its upload
completes, or not at all. So a file that a local writer writes to a temp name and renames into
place is, on an object store, written once under its final name (`write_atomic`, `upload`); the
write-last order that marks a folder finished (shards, then sidecars, then the manifest) is the
same on both. Readers of big files (`fetched`) copy a remote file to a local spool file first,
so hashing and memory-mapped reading work unchanged and each byte crosses the network once.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_remote(p: Any) -> bool:
    """A URI with a scheme other than file:// (a Path, or a plain path string, is local)."""
    if isinstance(p, Path):
        return False
    if type(p).__module__.startswith("upath"):
        return True
    s = str(p)
    return "://" in s and not s.startswith("file://")


def location(p: Any):
    """`p` as a path object: `pathlib.Path` when local, `UPath` when a URI."""
    if isinstance(p, Path) or type(p).__module__.startswith("upath"):
        return p
    s = str(p)
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    if "://" not in s:
        return Path(s)
    scheme = s.split("://", 1)[0]
    try:
        from upath import UPath
        path = UPath(s)
        path.fs  # noqa: B018 - imports the filesystem's package now, so a missing one is said here
    except ImportError as e:
        extra = EXTRAS.get(scheme, scheme)
        raise ValueError(f"{p}: {scheme}:// paths need the filesystem package ({e.name or e}): "
                         f"pip install 'less-ray[{extra}]'") from None
    return path


def require_local(p: Any, what: str) -> None:
    """Refuse a URI where a stage needs a local (or shared-mount) folder: run folders, checkpoints,
    models, reports. Object storage holds stores, score folders and selections."""
    if p and is_remote(p):
        raise ValueError(f"{what}: {p} is on object storage; this stage writes a local (or shared-mount) "
                         "folder. Object storage holds datastores (extract), score folders (score) and "
                         "selections (select): docs/datastore.md, 'On object storage'")


def name_of(p: Any) -> str:
    """How a path is shown and recorded: the URI for remote, the string for local."""
    return str(location(p))


def rmtree(p: Any) -> None:
    """Remove a folder and everything under it; nothing if it is not there."""
    loc = location(p)
    if isinstance(loc, Path):
        shutil.rmtree(loc, ignore_errors=True)
        return
    try:
        loc.fs.rm(loc.path, recursive=True)
    except FileNotFoundError:
        pass


def remove(p: Any) -> None:
    """Remove one file; nothing if it is not there."""
    loc = location(p)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    try:
        loc.fs.rm(loc.path)
    except FileNotFoundError:
        pass


def write_atomic(p: Any, data: bytes | str) -> None:
    """`p` holds `data` whole, or its previous content: never a part of it."""
    loc = location(p)
    raw = data.encode() if isinstance(data, str) else data
    if not isinstance(loc, Path):
        loc.write_bytes(raw)  # one PUT: the object appears whole or not at all
        return
    loc.parent.mkdir(parents=True, exist_ok=True)
    tmp = loc.with_name(f".{loc.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(raw)
    os.replace(tmp, loc)


def upload(local: Path, p: Any) -> None:
    """Move the finished local file `local` to `p` (a rename when local, an upload when remote)."""
    loc = location(p)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, loc)
        return
    try:
        loc.fs.put_file(str(local), loc.path)
    finally:
        Path(local).unlink(missing_ok=True)


def spool_dir() -> Path:
    """Local scratch for files on their way to or from an object store."""
    d = Path(os.environ.get("LESS_RAY_SPOOL") or tempfile.gettempdir()) / "less_ray_spool"
    d.mkdir(parents=True, exist_ok=True)
    return d


def spool_file(p: Any) -> Path:
    """A fresh local temp file for `p`: beside it when local (so the rename stays on one disk),
    in the spool when remote."""
    loc = location(p)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        return loc.with_name(f".tmp-{loc.name}-{uuid.uuid4().hex}")
    return spool_dir() / f"{uuid.uuid4().hex}-{loc.name}"


@contextlib.contextmanager
def fetched(p: Any) -> Iterator[Path]:
    """A local file holding `p`'s bytes: `p` itself when local, else a spool copy removed after."""
    loc = location(p)
    if isinstance(loc, Path):
        yield loc
        return
    tmp = spool_dir() / f"{uuid.uuid4().hex}-{loc.name}"
    try:
        loc.fs.get_file(loc.path, str(tmp))
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(f"{loc}: no such object") from None
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def create_exclusive(p: Any, data: bytes) -> bool:
    """Create `p` holding `data` only if it does not exist (S3's conditional PUT, If-None-Match: *;
    O_EXCL locally); False if it exists."""
    loc = location(p)
    if isinstance(loc, Path):
        try:
            fd = os.open(loc, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    try:
        loc.fs.pipe_file(loc.path, data, mode="create")
    except FileExistsError:
        return False
    return True

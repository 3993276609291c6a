"""One writer per run folder or store: an OS file lock (the `filelock` library) and a holder sidecar.

    <folder>/.less_ray.lock        the lock (flock: the kernel releases it when its process dies)
    <folder>/.less_ray.lock.json   who holds it: stage, pid, host, start time

Every writing stage takes the lock on its output folder before writing anything (`pipeline` on
the run folder, `extract` on its out folder, `score` on its out folder). A second writer fails
at once (no waiting) naming the holder's stage, pid and host; it changes nothing in the folder.
A lock left by a dead process is free by construction (the kernel dropped it with the process);
its stale sidecar is reported and replaced. Within one process the lock is re-entrant, so a
stage may call another on the same folder. Over NFS the lock is a POSIX lock, which NFSv4 serves
across nodes.

On an object store (`s3://...`, less_ray/storage.py) there is no kernel to drop a dead holder's
lock, so the lock is a lease:

    <folder>/.less_ray.lock        one object: the holder (stage, pid, host, start), a random token
                                   and `renewed` (epoch seconds)

It is taken by a conditional create (S3's `If-None-Match: *`: of two writers exactly one succeeds;
S3 since 2024, MinIO, Ceph and moto honour it). While held, a daemon thread rewrites it every
LEASE_S / 4 with a fresh `renewed`. A lock not renewed for LEASE_S (LESS_RAY_LOCK_LEASE_S, default
120 s) belongs to a dead holder: the next writer reports it, deletes it and creates its own, again
conditionally, so of several writers recovering it at once one wins. (The check and the delete are
two requests: a holder that renewed between them loses its lock; the lease is 30 renewal periods
wide of that window.) Release deletes the object if it still holds this holder's token.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from . import storage

log = logging.getLogger("less_ray")
LOCK_FILE = ".less_ray.lock"
HOLDER_FILE = ".less_ray.lock.json"


class RunLockBusy(ValueError):
    """Another process writes this folder. (A ValueError, so the command line prints it as one
    `less-ray <stage>: error: ...` line.)"""


_held: dict[Any, list[Any]] = {}  # folder (_key) -> [_FileLock or _Lease, depth]
_guard = threading.Lock()


def holder(folder: str | Path) -> dict[str, Any] | None:
    """The recorded holder of `folder`'s lock (which may be stale), or None."""
    loc = storage.location(folder)
    try:
        return json.loads((loc / (HOLDER_FILE if isinstance(loc, Path) else LOCK_FILE)).read_text())
    except (OSError, ValueError):
        return None


def lease_s() -> float:
    return float(os.environ.get("LESS_RAY_LOCK_LEASE_S", "120"))


def _holder_record(stage: str) -> dict[str, Any]:
    return {"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _busy(folder: Any, h: dict[str, Any], lock_name: str) -> RunLockBusy:
    return RunLockBusy(
        f"{folder} is in use: `{h.get('stage', '?')}` (pid {h.get('pid', '?')} on host {h.get('host', '?')}, "
        f"since {h.get('started', '?')}) holds {lock_name}; one writer per folder: wait for it to "
        "finish or stop it, or give this run another folder")


class _Lease:
    """The object-store lock of one folder while this process holds it (module docstring)."""

    def __init__(self, folder: Any, stage: str):
        self.folder = folder
        self.obj = storage.location(folder) / LOCK_FILE
        self.record = {**_holder_record(stage), "token": uuid.uuid4().hex}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.record, "renewed": time.time()}).encode()

    def acquire(self) -> None:
        folder = self.folder
        if storage.create_exclusive(self.obj, self._body()):
            return self._start()
        h = holder(folder) or {}
        age = time.time() - float(h.get("renewed", 0))
        if age <= lease_s():
            raise _busy(folder, h, str(self.obj))
        log.warning("%s: recovered a stale lock of `%s` (pid %s on %s; not renewed for %.0f s, lease %.0f s)",
                    folder, h.get("stage"), h.get("pid"), h.get("host"), age, lease_s())
        if (holder(folder) or {}).get("token") == h.get("token"):  # still the stale one
            self.obj.unlink(missing_ok=True)
        if not storage.create_exclusive(self.obj, self._body()):  # another writer recovered it first
            raise _busy(folder, holder(folder) or {}, str(self.obj))
        self._start()

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._renew, name="less_ray-lock-lease", daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        while not self.stop.wait(lease_s() / 4):
            try:
                if (json.loads(self.obj.read_text()) or {}).get("token") != self.record["token"]:
                    log.error("%s: this run's lock was taken over by another writer", self.obj)
                    return
                self.obj.write_bytes(self._body())
            except (OSError, ValueError) as e:  # a failed renewal is retried; the lease is 4 periods long
                log.warning("%s: lock renewal failed (%s); retrying", self.obj, e)

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        try:
            if json.loads(self.obj.read_text()).get("token") == self.record["token"]:
                self.obj.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _FileLock:
    """The OS file lock of one local folder, and its holder sidecar, while this process holds it."""

    def __init__(self, folder: Path, stage: str):
        from filelock import FileLock
        self.folder, self.stage = folder, stage
        self.lock = FileLock(str(folder / LOCK_FILE), timeout=0)

    def acquire(self) -> None:
        from filelock import Timeout
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise _busy(folder, holder(folder) or {}, str(folder / LOCK_FILE)) from None
        old = holder(folder)
        if old:
            state = ("dead" if old.get("host") == socket.gethostname() and isinstance(old.get("pid"), int)
                     and not _alive(old["pid"]) else "gone")
            log.warning("%s: recovered a stale lock of `%s` (pid %s on %s, %s; the OS had released it)",
                        folder, old.get("stage"), old.get("pid"), old.get("host"), state)
        tmp = folder / f".{HOLDER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(_holder_record(self.stage)))
        os.replace(tmp, folder / HOLDER_FILE)

    def release(self) -> None:
        (self.folder / HOLDER_FILE).unlink(missing_ok=True)  # before the lock: the next holder writes its own
        self.lock.release()


def _key(folder: str | Path):
    """What `_held` knows a folder by: its resolved path, or its URI."""
    return storage.name_of(folder).rstrip("/") if storage.is_remote(folder) else Path(folder).resolve()


def acquire(folder: str | Path, stage: str):
    """Take `folder`'s lock (creating the folder) or raise RunLockBusy naming the holder:
    an OS file lock for a local folder, a lease object on an object store."""
    key = _key(folder)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return key
        lock = _Lease(key, stage) if storage.is_remote(key) else _FileLock(key, stage)
        lock.acquire()
        _held[key] = [lock, 1]
        return key


def release(folder: str | Path) -> None:
    key = _key(folder)
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1]:
            return
        del _held[key]
        entry[0].release()


class RunLock:
    """`with RunLock(folder, stage):` one writer in `folder` for the block."""

    def __init__(self, folder: str | Path, stage: str):
        self.folder, self.stage = folder, stage

    def __enter__(self) -> "RunLock":
        self.folder = acquire(self.folder, self.stage)
        return self

    def __exit__(self, *exc) -> None:
        release(self.folder)


def locked(stage: str, folder_of: Callable[[Any], str | Path] = lambda cfg: cfg.out, local: bool = False):
    """Decorator for `run_<stage>(cfg, ...)`: the function runs holding the lock of
    `folder_of(cfg)` (default `cfg.out`); a missing folder setting is left to the function's own
    check. `local`: the stage needs a local folder; a URI is refused before anything is taken."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(cfg, *args, **kwargs):
            folder = folder_of(cfg)
            if not folder:
                return fn(cfg, *args, **kwargs)
            if local:
                storage.require_local(folder, f"{stage}: out")
            with RunLock(folder, stage):
                return fn(cfg, *args, **kwargs)
        return inner
    return wrap

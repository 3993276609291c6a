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
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("less_ray")
LOCK_FILE = ".less_ray.lock"
HOLDER_FILE = ".less_ray.lock.json"


class RunLockBusy(ValueError):
    """Another process writes this folder. (A ValueError, so the command line prints it as one
    `less-ray <stage>: error: ...` line.)"""


_held: dict[Path, list[Any]] = {}  # folder -> [FileLock, depth]
_guard = threading.Lock()


def holder(folder: str | Path) -> dict[str, Any] | None:
    """The recorded holder of `folder`'s lock (which may be stale), or None."""
    try:
        return json.loads((Path(folder) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(folder: str | Path, stage: str) -> Path:
    """Take `folder`'s lock (creating the folder) or raise RunLockBusy naming the holder."""
    from filelock import FileLock, Timeout
    folder = Path(folder).resolve()
    with _guard:
        if folder in _held:
            _held[folder][1] += 1
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / LOCK_FILE), timeout=0)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            h = holder(folder) or {}
            raise RunLockBusy(
                f"{folder} is in use: `{h.get('stage', '?')}` (pid {h.get('pid', '?')} on host {h.get('host', '?')}, "
                f"since {h.get('started', '?')}) holds {folder / LOCK_FILE}; one writer per folder: wait for it to "
                "finish or stop it, or give this run another folder") from None
        old = holder(folder)
        if old:
            state = ("dead" if old.get("host") == socket.gethostname() and isinstance(old.get("pid"), int)
                     and not _alive(old["pid"]) else "gone")
            log.warning("%s: recovered a stale lock of `%s` (pid %s on %s, %s; the OS had released it)",
                        folder, old.get("stage"), old.get("pid"), old.get("host"), state)
        tmp = folder / f".{HOLDER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        os.replace(tmp, folder / HOLDER_FILE)
        _held[folder] = [lock, 1]
        return folder


def release(folder: str | Path) -> None:
    folder = Path(folder).resolve()
    with _guard:
        entry = _held.get(folder)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1]:
            return
        del _held[folder]
        (folder / HOLDER_FILE).unlink(missing_ok=True)  # before the lock: the next holder writes its own
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


def locked(stage: str, folder_of: Callable[[Any], str | Path] = lambda cfg: cfg.out):
    """Decorator for `run_<stage>(cfg, ...)`: the function runs holding the lock of
    `folder_of(cfg)` (default `cfg.out`); a missing folder setting is left to the function's own
    check."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(cfg, *args, **kwargs):
            folder = folder_of(cfg)
            if not folder:
                return fn(cfg, *args, **kwargs)
            with RunLock(folder, stage):
                return fn(cfg, *args, **kwargs)
        return inner
    return wrap

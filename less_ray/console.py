"""What a run prints: one line per stage by default, everything with `-v`.

Quiet mode keeps less_ray's own INFO lines (one per stage: what, counts, seconds, where the
artifact is) and warnings a user can act on; it hides what a user cannot act on: Ray's worker
log forwarding (worker logs stay in /tmp/ray/session_*/logs), Ray Data's periodic progress
logs when stderr is not a terminal (a terminal keeps its progress bars), library deprecation
and future warnings, and transformers' load-progress bars. `-v` (or LESS_RAY_VERBOSE=1) shows all.
The setting travels to Ray workers through the environment.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "LESS_RAY_VERBOSE"
# categories from libraries (ray, transformers, torch, deepspeed) that a user of less_ray cannot fix
_NOISE = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, not the stream it was created
    with: a handler made under a replaced stderr (a test's capture, a notebook cell) must not
    write to it after it is closed."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def configure(verbose_flag: bool | None = None) -> None:
    """Set up less_ray's log line format and, unless verbose, silence library noise."""
    if verbose_flag is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_flag else "0"
    logger = logging.getLogger("less_ray")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s less_ray %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose() else logging.INFO)
    if verbose():
        return
    quiet_libraries()


def quiet_libraries() -> None:
    """In this process (the driver, or a worker that calls it): drop the noise."""
    if verbose():
        return
    for category in _NOISE:
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=".*(TRANSFORMERS_CACHE|torch_dtype|is_gradient_checkpointing).*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor", "ray.train", "ray.tune",
                 "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # notices about the machine, not the run: DeepSpeed finding no GPU, Ray's default token auth
    for name in ("DeepSpeed", "deepspeed", "ray._private.authentication.authentication_token_setup",
                 "ray.data._internal.progress"):  # ... and Ray Data saying that we turned its bars off
        logging.getLogger(name).setLevel(logging.ERROR)
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "transformers" in sys.modules:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def ray_init_args() -> dict:
    """`ray.init` keywords that follow the verbosity: workers' logs reach the driver only with -v."""
    if verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.WARNING}


def after_ray_init() -> None:
    """Ray Data's progress: bars on a terminal, nothing in a log file unless verbose."""
    if verbose():
        return
    try:
        from ray.data import DataContext  # first: Ray Data sets its loggers' levels when imported
        quiet_libraries()
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
        if hasattr(ctx, "enable_operator_progress_bars"):
            ctx.enable_operator_progress_bars = sys.stderr.isatty()
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = False
    except ImportError:
        pass

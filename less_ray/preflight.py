"""Checks that run before Ray starts: a mistake in a config costs a second, not a Ray start
and a warmup.

`check_config_paths` is every stage's: inputs exist, models are local folders (a hub id only
with LESS_RAY_ALLOW_HUB=1). `preflight_pipeline` adds the pipeline's: required keys, stage
names, pool and target files parse under the bad-input policy, and the sizes that make LESS
silently degenerate (an epoch of one optimizer step, a checkpoint whose mean learning rate is
0 and so weighs nothing in the score, a selection smaller than one training batch).
Errors are collected and raised together (ConfigError); warnings are returned and logged.
"""
from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import HUB_ENV, ConfigError, hub_allowed, looks_like_hub_id, path_fields

log = logging.getLogger("less_ray")
BUILTIN_EVAL_TASKS = ("bbh", "mmlu", "tydiqa")


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def raise_errors(self, what: str) -> None:
        if self.errors:
            raise ConfigError(f"{what}: {len(self.errors)} problem(s) found before starting:\n  "
                              + "\n  ".join(self.errors))

    def log_warnings(self) -> None:
        for w in self.warnings:
            log.warning("warning: %s", w)


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").exists() or (path / "adapter_config.json").exists())


def check_config_paths(cfg: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """Problems with the path fields of `cfg`: a missing input, a model that is not a local folder."""
    errors = []
    for key, kind, value in path_fields(cfg, prefix):
        if key in skip or not value:
            continue
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str) or "://" in v:
                continue
            p = Path(v)
            if kind == "in" and not p.exists():
                errors.append(f"{key}: no such file or folder: {p}")
            elif kind == "model" and not is_model_folder(p):
                if hub_allowed() and looks_like_hub_id(v):
                    continue
                why = "exists but holds no config.json" if p.is_dir() else "does not exist"
                errors.append(f"{key}: {p} {why}; a base model must be a local model folder (nothing is downloaded:"
                              f" `less-ray model smollm2 DIR` makes one; a hub id needs {HUB_ENV}=1 and a network)")
    return errors


def check_stage_config(cfg: Any, what: str) -> None:
    """A single stage's preflight (`less-ray warmup|train|extract|score ...`)."""
    Findings(errors=check_config_paths(cfg)).raise_errors(what)


def _count_records(path: str, what: str, f: Findings) -> list | None:
    """The file's records under the bad-input policy; None (and an error naming `what`) when it
    does not parse or holds none."""
    from .data.io import read_records, require_records
    from .data.schema import DataFileError
    try:
        return require_records(read_records(path), "pool examples" if what == "pool" else "target examples")
    except DataFileError as e:
        f.errors.append(f"{what}: {e}")
        return None


def epoch_mean_lrs(n: int, batch: int, epochs: int, lr: float, warmup_ratio: float, scheduler: str) -> list[float]:
    """Each epoch's mean learning rate, as the training loop will record it (`avg_lr`)."""
    from .train.plan import lr_factor, steps_per_epoch, warmup_steps
    per_epoch = steps_per_epoch(n, batch)
    total = per_epoch * epochs
    warm = warmup_steps(total, warmup_ratio)
    return [sum(lr * lr_factor(s, total, warm, scheduler) for s in range(e * per_epoch, (e + 1) * per_epoch))
            / per_epoch for e in range(epochs)]


def check_training_sizes(n: int, settings: Any, what: str, f: Findings, lr_weights: bool) -> None:
    """`n` examples trained with `settings` (TrainingSettings): the batch and schedule they get."""
    s, o = settings.scaling, settings.optim
    batch = s.effective_batch_size
    per_epoch = math.ceil(n / batch)
    if n < batch:
        f.warnings.append(f"{what}: {n} examples is less than one effective batch ({what}.scaling."
                          f"effective_batch_size = {batch}): each epoch is one optimizer step on repeated examples;"
                          f" lower effective_batch_size (e.g. to {_batch_for(n, s)})")
    elif per_epoch < 2:
        f.warnings.append(f"{what}: an epoch is {per_epoch} optimizer step ({n} examples, effective batch {batch});"
                          f" lower {what}.scaling.effective_batch_size for a schedule that can move")
    if lr_weights:
        lrs = epoch_mean_lrs(n, batch, o.epochs, o.lr, o.warmup_ratio, o.scheduler)
        zero = [i + 1 for i, x in enumerate(lrs) if x <= 0]
        if zero:
            f.errors.append(
                f"{what}: epoch(s) {zero} would have mean learning rate 0 ({per_epoch} step(s) per epoch, the first is"
                f" the warmup's lr 0, or the linear decay has reached 0), so their checkpoints would weigh 0 in the"
                f" score; lower {what}.scaling.effective_batch_size (now {batch}) so an epoch has more steps, or set"
                f" {what}.optim.warmup_ratio: 0")


def _batch_for(n: int, scaling: Any) -> int:
    """An effective batch that gives `n` examples about 4 optimizer steps an epoch."""
    per_step = scaling.per_device_batch_size * scaling.num_workers
    return max(per_step, (n // 4) // per_step * per_step)


def eval_tasks_for(cfg: Any, task: str) -> list[str]:
    """The eval tasks of target task `task`: as configured, else the benchmark of the same name,
    else the held-out answer loss (`loss:<task>`) on examples never used for selection."""
    configured = cfg.eval.tasks.get(task)
    if configured:
        return list(configured)
    return [task] if task in BUILTIN_EVAL_TASKS else [f"loss:{task}"]


def known_eval_task(name: str) -> bool:
    return name in BUILTIN_EVAL_TASKS or name.startswith(("demo:", "loss:"))


def preflight_pipeline(cfg: Any) -> Findings:
    """Everything a pipeline config can be checked for before Ray starts (paths already absolute)."""
    from .stages import PIPELINE_STAGES
    f = Findings()
    for key in ("out", "base_model", "pool"):
        if not getattr(cfg, key):
            f.errors.append(f"{key}: required key is missing")
    if not cfg.targets:
        f.errors.append("targets: required key is missing (task name: file of target examples)")
    for i, s in enumerate(cfg.stages):
        if s not in PIPELINE_STAGES:
            near = difflib.get_close_matches(s, PIPELINE_STAGES, n=1)
            f.errors.append(f"stages[{i}]: unknown stage {s!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                                     f"; stages are {', '.join(PIPELINE_STAGES)}"))
    from .core.projectors import DEFAULT_DIMS
    if len(cfg.extract.dims or DEFAULT_DIMS) != 1:
        f.errors.append(f"extract.dims: the pipeline scores one projection dim, got {cfg.extract.dims}; run "
                        "`less-ray extract` for more, or the pipeline once per dim into the same run folder")
    f.errors += check_config_paths(cfg, skip=("train.base_model",) if not cfg.train.base_model else ())
    if f.errors:  # sizes need readable files
        return f

    pool = _count_records(cfg.pool, "pool", f)
    targets = {t: _count_records(p, f"targets.{t}", f) for t, p in cfg.targets.items()}
    for task, recs in targets.items():
        if recs is None:
            continue
        tasks = {r.task for r in recs if r.task} - {task}
        if tasks:
            f.warnings.append(f"targets.{task}: records name task(s) {sorted(tasks)}; the pipeline scores them all as"
                              f" task {task!r} (the key under targets:)")
        for ev in eval_tasks_for(cfg, task):
            if not known_eval_task(ev):
                f.errors.append(f"eval.tasks.{task}: unknown eval task {ev!r}; use bbh, mmlu, tydiqa, demo:<family>, or"
                                f" leave it out to evaluate the held-out answer loss (loss:{task})")
            elif ev == f"loss:{task}" and task not in cfg.eval.heldout:
                n_hold = heldout_count(len(recs), cfg.eval.heldout_fraction)
                if len(recs) - n_hold < 1 or n_hold < 1:
                    f.errors.append(f"targets.{task}: {len(recs)} example(s); task {task!r} has no built-in benchmark, so"
                                    f" {cfg.eval.heldout_fraction:.0%} of its targets are held out to measure the trained"
                                    f" model: give at least 2 targets, or a held-out file as eval.heldout.{task}")
    for task, path in cfg.eval.heldout.items():
        if task not in cfg.targets:
            f.errors.append(f"eval.heldout.{task}: no such target task (targets: {sorted(cfg.targets)})")
    if pool is None or any(r is None for r in targets.values()):
        return f

    want = set(cfg.stages)
    n_warm = max(1, int(len(pool) * cfg.warmup.percentage))
    if "warmup" in want:
        check_training_sizes(n_warm, cfg.warmup, "warmup", f, lr_weights=True)
    try:
        k = pipeline_selection_count(cfg, len(pool))
    except ValueError as e:
        f.errors.append(f"select: {e}")
        return f
    if "train" in want:
        batch = cfg.train.scaling.effective_batch_size
        if k < batch:
            f.warnings.append(f"train: the selection has {k} examples (select.top_p {cfg.select.top_p} of {len(pool)}),"
                              f" fewer than one effective batch ({batch}); lower train.scaling.effective_batch_size")
        else:
            check_training_sizes(k, cfg.train, "train", f, lr_weights=False)
    return f


def pipeline_selection_count(cfg, n_pool: int) -> int:
    """k of the run's selection: the select stage's own rule (selection.select.selection_count)."""
    from .selection.select import selection_count
    return selection_count(cfg.select.top_p, cfg.select.top_n, n_pool, rule=cfg.select.count_rule)


def heldout_count(n: int, fraction: float) -> int:
    """How many of `n` targets are held out for the loss eval: at least one, never all."""
    return min(n - 1, max(1, round(n * fraction))) if n > 1 else 0

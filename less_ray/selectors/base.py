"""Selectors besides LESS: one config shape, one registry, one entry point, one Ray Data job shape.

A selector is a config dataclass (`SelectorConfig`'s common fields plus its own) and a
`run(cfg) -> summary` that writes a score folder under `cfg.out` (`less_ray.selection.folder`).
`run_selector(name, cfg)` runs it, saves the resolved config beside it and, when `cfg.top_p` is
set, runs `select` on the folder, so `top_p{p}.jsonl`, `sorted.csv`, `report` and `train` work
unchanged. Task-agnostic selectors write one task, `ALL_TASK`; targeted ones one task per entry
of `cfg.targets`. Ordered selectors (random, k-center) write their order as a score, so that
`select`'s top-k (score desc, id asc) is exactly their selection.

Adding a selector: a module in this package whose run function carries
`@register("name", ConfigClass, "one line of help")`, plus its one line in
`less_ray.selectors.SELECTOR_MODULES` (name -> module, imported only when that selector runs).

Per-example scorers run as Ray Data jobs through `score_pool`: the pool is sharded once as
Parquet (one row group per shard, `shards.shard_input`), an actor pool maps shard indices
(the scorer is built once per actor, e.g. a model load) and writes one part per shard; the
driver streams the parts, in shard order, into the score folder. Memory: one shard per actor,
one part at a time on the driver.
"""
from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import load_config, save_config, path_field
from ..ray_runtime import RayStage
from ..shards import SHARDED_INPUT, ShardActor, map_shards, shard_input  # noqa: F401  (re-exported to the selectors)

log = logging.getLogger("less_ray")
ALL_TASK = "all"  # the one task of a task-agnostic selector


@dataclass
class SelectorConfig(RayStage):
    pool: str = path_field("in", "")  # candidate pool (schema JSONL/Parquet)
    targets: dict[str, str] = path_field("in", {})  # task -> target examples file (targeted selectors)
    out: str = path_field("out", "")  # the score folder
    seed: int = 0
    top_p: float | None = 0.05  # select this fraction after scoring (None: score only)
    shard_rows: int = 2048  # examples per Ray Data work unit


@dataclass(frozen=True)
class Selector:
    name: str
    config_cls: type
    run: Callable[[Any], dict[str, Any]]
    help: str
    targeted: bool  # needs cfg.targets
    warmup_checkpoint: str  # the pipeline's default for a `checkpoint` field: "first" or "last" epoch


REGISTRY: dict[str, Selector] = {}


def register(name: str, config_cls: type, help: str, targeted: bool = False, warmup_checkpoint: str = "last"):
    """Decorator for a selector's `run(cfg) -> summary`."""
    if warmup_checkpoint not in ("first", "last"):
        raise ValueError(f"warmup_checkpoint must be first or last, not {warmup_checkpoint!r}")

    def deco(fn):
        REGISTRY[name] = Selector(name, config_cls, fn, help, targeted, warmup_checkpoint)
        return fn
    return deco


def selector_names() -> list[str]:
    from . import SELECTOR_MODULES
    return sorted(SELECTOR_MODULES)


def get_selector(name: str) -> Selector:
    from . import SELECTOR_MODULES
    if name not in SELECTOR_MODULES:
        raise ValueError(f"unknown selector {name!r}; known: {', '.join(sorted(SELECTOR_MODULES))}")
    importlib.import_module(f"{__package__}.{SELECTOR_MODULES[name]}")
    if name not in REGISTRY:
        raise RuntimeError(f"module {SELECTOR_MODULES[name]} registers no selector named {name!r}")
    return REGISTRY[name]


def load_selector_config(name: str, path: str | None = None, overrides: dict[str, Any] | None = None,
                         sets: dict[str, Any] | None = None):
    """The selector's config: its defaults, the YAML file, `overrides` (None = not given), `sets`."""
    return load_config(get_selector(name).config_cls, path, overrides, sets)


def run_selector(name: str, cfg: Any) -> dict[str, Any]:
    """Score the pool into `cfg.out`, save the resolved config, select the top `cfg.top_p`."""
    from ..selection.select import SelectConfig, run_select
    from ..storage import require_local
    require_local(getattr(cfg, "out", None), f"selector {name}: out")
    sel = get_selector(name)
    if not isinstance(cfg, sel.config_cls):
        raise TypeError(f"selector {name} takes a {sel.config_cls.__name__}, got {type(cfg).__name__}")
    if not cfg.pool or not cfg.out:
        raise ValueError(f"selector {name}: 'pool' and 'out' are required")
    if sel.targeted and not cfg.targets:
        raise ValueError(f"selector {name} is targeted: give 'targets' (task -> target examples file)")
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = sel.run(cfg)
    save_config(cfg, out / "selector.config.yaml")
    if cfg.top_p is not None:
        summary["select"] = run_select(SelectConfig(scores=str(out), pool=cfg.pool, top_p=cfg.top_p))
    summary["seconds"] = round(time.time() - t0, 2)
    log.info("selector %s: done in %.1fs -> %s", name, time.time() - t0, out)
    return summary


def task_names(cfg: SelectorConfig, targeted: bool) -> list[str]:
    return list(cfg.targets) if targeted else [ALL_TASK]


def read_targets(targets: dict[str, str]) -> dict[str, list]:
    """task -> its target records (each file read strictly: a bad line is an error naming it)."""
    from ..data.io import read_records
    return {task: read_records(path).records for task, path in targets.items()}


# ---- the Ray Data job shape -------------------------------------------------------------------

def shard_records(data: str, folder: Path, shard_rows: int) -> tuple[Path, int, int, str]:
    """Stage a records file as Parquet, one row group per shard (reused while the file is
    unchanged). Returns (sharded file, rows, shards, input sha256)."""
    rows, shards, digest = shard_input(data, folder, shard_rows)
    return folder / SHARDED_INPUT, rows, shards, digest


class PoolScorer:
    """Per-example scores of a block of pool rows. Built once per actor (load models here).
    `score(rows)` returns {task: (scores [n] finite, best_subtask names or None)}."""

    def __init__(self, tasks: list[str], **kwargs: Any):
        self.tasks = tasks

    def score(self, rows: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, list[str] | None]]:
        raise NotImplementedError


class _ScoreShards(ShardActor):
    def __init__(self, sharded: str, parts: str, scorer_cls: type, scorer_kwargs: dict[str, Any]):
        super().__init__(sharded)
        self.parts = Path(parts)
        self.scorer = scorer_cls(**scorer_kwargs)

    def process(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        result = self.scorer.score(rows)
        cols: dict[str, Any] = {"id": [r["id"] for r in rows], "source": [r["source"] for r in rows]}
        for task in self.scorer.tasks:
            scores, best = result[task]
            scores = np.asarray(scores, dtype=np.float32)
            if len(scores) != len(rows) or not np.isfinite(scores).all():
                bad = [rows[i]["id"] for i in np.flatnonzero(~np.isfinite(scores))[:5]] if len(scores) == len(rows) else []
                raise ValueError(f"shard {shard}, task {task}: {len(scores)} scores for {len(rows)} rows, "
                                 f"non-finite for ids {bad}")
            cols[f"score/{task}"] = scores
            cols[f"best/{task}"] = best if best is not None else [task] * len(rows)
        tmp = self.parts / f".tmp-{shard:05d}.parquet"
        pq.write_table(pa.table(cols), tmp)
        tmp.rename(self.parts / f"{shard:05d}.parquet")
        return {"shard": shard, "rows": len(rows)}


def score_pool(cfg: SelectorConfig, selector: str, tasks: list[str], scorer_cls: type,
               scorer_kwargs: dict[str, Any] | None = None, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every pool example with `scorer_cls` on a Ray Data actor pool -> the score folder."""
    import pyarrow.parquet as pq

    from ..selection.folder import ScoreFolderWriter
    out = Path(cfg.out).resolve()  # actors may run elsewhere (another cwd or node)
    sharded, n_rows, n_shards, digest = shard_records(cfg.pool, out / "_staged", cfg.shard_rows)
    parts = out / "_parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    t0 = time.time()
    log.info("selector %s: %d pool rows in %d shards, tasks %s", selector, n_rows, n_shards, tasks)
    map_shards(cfg, _ScoreShards, {"sharded": str(sharded), "parts": str(parts), "scorer_cls": scorer_cls,
                                   "scorer_kwargs": {"tasks": tasks, **(scorer_kwargs or {})}}, list(range(n_shards)))
    writer = ScoreFolderWriter(out, tasks, pool=cfg.pool)
    for i in range(n_shards):  # pool order, one row group per shard
        t = pq.read_table(parts / f"{i:05d}.parquet")
        ids, sources = t.column("id").to_pylist(), t.column("source").to_pylist()
        for task in tasks:
            writer.write(task, ids, sources, t.column(f"score/{task}").to_numpy(), t.column(f"best/{task}").to_pylist())
    shutil.rmtree(parts)
    info = {"selector": selector, "pool_sha256": digest, "shards": n_shards,
            "seconds_scoring": round(time.time() - t0, 2), **(summary or {})}
    return writer.close(info)

"""The one shard executor every Ray Data stage runs on (extract, score, each selector, dedup).

A stage's work is a list of shard indices; `map_shards` maps them over an autoscaling Ray Data
actor pool (the stage's `ActorPool` settings: actors, CPUs, GPUs, memory, restarts), one shard
per call, and returns one result row per shard, checked complete. An actor killed for memory
ends the stage with the settings to change (explain_actor_failure, below).

Record inputs are sharded once as Parquet with one row group per shard (`shard_input`), so a shard
is a fixed set of examples whatever actor runs it, and `ShardActor` reads its rows.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .ray_runtime import RayStage
from .artifact import sha256_file
from .resources import GiB

SHARDED_INPUT = "_input.parquet"
log = logging.getLogger("less_ray")
# Ray Data placed 2 actors of 7.6 GiB but not 2 of 7.9 on a node whose Ray `memory` was 16.1 GiB
# (measured here): a pool gets between 94.4% and 98.1% of a node's memory
RAY_DATA_MEMORY_SHARE = 0.95


def shard_input(data: str, out, shard_rows: int, sha256: str | None = None) -> tuple[int, int, str]:
    """Validated records as Parquet, one row group per shard (`<out>/_input.parquet`). Returns
    (rows, shards, input sha256); reused when the input file and shard size are unchanged.
    `sha256`: the file's, when the caller hashed it already (it is read in full to hash)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .data.io import _parquet_schema, iter_records
    digest = sha256 or sha256_file(data)
    out = storage.location(out)
    info_path = out / "_input.json"
    if info_path.exists() and (out / SHARDED_INPUT).exists():
        info = json.loads(info_path.read_text())
        if info["sha256"] == digest and info["shard_rows"] == shard_rows:
            return info["rows"], info["shards"], digest
    schema = _parquet_schema()
    tmp = storage.spool_file(out / SHARDED_INPUT)
    rows, shards, chunk = 0, 0, []
    with pq.ParquetWriter(tmp, schema) as w:
        def flush():
            w.write_table(pa.Table.from_pylist(chunk, schema=schema), row_group_size=shard_rows)
        for rec in iter_records(data):
            chunk.append({"id": rec.id, "source": rec.source, "messages": list(rec.messages),
                          "task": rec.task, "subtask": rec.subtask})
            if len(chunk) == shard_rows:
                flush()
                rows, shards, chunk = rows + len(chunk), shards + 1, []
        if chunk:
            flush()
            rows, shards = rows + len(chunk), shards + 1
    storage.upload(tmp, out / SHARDED_INPUT)
    storage.write_atomic(info_path, json.dumps({"path": str(data), "sha256": digest, "rows": rows, "shards": shards,
                                     "shard_rows": shard_rows}))
    return rows, shards, digest


def actors_that_fit(nodes: list[dict[str, float]], memory_bytes: int | None, num_cpus: float,
                    num_gpus: float) -> int:
    """How many actors of this size the nodes (their Ray resources: CPU, GPU, memory) hold at once
    (an actor that reserves nothing: no bound)."""
    if not (num_cpus or num_gpus or memory_bytes):
        return 2 ** 31
    total = 0
    for r in nodes:
        fit = []
        if num_cpus:
            fit.append(math.floor(r.get("CPU", 0) / num_cpus + 1e-9))
        if num_gpus:
            fit.append(math.floor(r.get("GPU", 0) / num_gpus + 1e-9))
        if memory_bytes:
            fit.append(math.floor(RAY_DATA_MEMORY_SHARE * r.get("memory", 0) / memory_bytes))
        total += min(fit)
    return total


def placement_warning(stage: str, want: int, fit: int, memory_bytes: int | None, nodes: list[dict[str, float]],
                      knobs: str) -> str | None:
    """The warning when fewer actors fit than the stage asks for (memory, not cores, is short)."""
    if fit >= want:
        return None
    gib = 2 ** 30
    mem = (f"each actor reserves {memory_bytes / gib:.1f} GiB and Ray has "
           f"{max(r.get('memory', 0) for r in nodes) / gib:.1f} GiB on its largest node; " if memory_bytes else "")
    return (f"{stage}: {want} actors asked for, only {max(fit, 0)} fit at once ({mem}the cores of the others "
            f"idle). To use them, lower {knobs}, or set actor_memory_gb if the estimate is above what an actor "
            "uses.")


def ray_nodes() -> list[dict[str, float]]:
    import ray
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def read_input_shard(sharded: str | Path, shard: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq
    if storage.is_remote(sharded):  # ranged reads: only this row group crosses the network
        with storage.location(sharded).open("rb") as fh:
            return pq.ParquetFile(fh).read_row_group(shard).to_pylist()
    return pq.ParquetFile(sharded).read_row_group(shard).to_pylist()


class ShardActor:
    """Ray Data actor over a sharded records file: one batch row = one shard (row group) index.
    Subclasses build their state once in `__init__` and implement `process(shard, rows)`."""

    def __init__(self, sharded: str):
        self.sharded = sharded

    def rows(self, shard: int) -> list[dict[str, Any]]:
        return read_input_shard(self.sharded, shard)

    def process(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [self.process(int(s), self.rows(int(s))) for s in batch["shard"]]
        return {k: np.array([d[k] for d in done]) for k in done[0]}


def map_shards(cfg: RayStage, actor_cls: type, ctor_kwargs: dict[str, Any], shards: list[int],
               stage: str = "stage", memory_bytes: int | None = None,
               knobs: str = "its batch size or max_actors") -> list[dict]:
    """Run `actor_cls(**ctor_kwargs)` over `shards` on the stage's actor pool; one result row per
    shard. `memory_bytes`: what each actor declares to Ray when the config sets no
    actor_memory_gb; `stage`, `knobs`: name the stage and its memory settings in the error an
    actor killed for memory ends it with."""
    import ray

    if not shards:
        return []
    cfg.join_ray()
    memory = cfg.reserved_memory(memory_bytes)
    nodes = ray_nodes()
    warning = placement_warning(stage, min(cfg.max_actors, len(shards)),
                                actors_that_fit(nodes, memory, cfg.actor_num_cpus, cfg.actor_num_gpus),
                                memory, nodes, knobs)
    if warning:
        log.warning(warning)
    ds = ray.data.from_items([{"shard": i} for i in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(actor_cls, batch_size=1, fn_constructor_kwargs=ctor_kwargs,
                        **cfg.map_batches_args(memory_bytes))
    try:
        done = ds.take_all()
    except Exception as e:  # an actor killed for memory: say so, with the settings to change
        raise explain_actor_failure(e, stage, memory, knobs) from e
    got = sorted(int(d["shard"]) for d in done)
    if got != sorted(shards):
        raise RuntimeError(f"{stage}: shards missing from the result: {sorted(set(shards) - set(got))[:10]}")
    return done


class ActorFailure(RuntimeError):
    """A stage's actor died for a reason the user can act on; the message says how."""


def _memory_killed(err: BaseException) -> bool:
    import ray.exceptions as rex
    seen, e = set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, rex.OutOfMemoryError):
            return True
        text = str(e)
        if "OutOfMemoryError" in text or "running low on memory" in text or "memory monitor" in text.lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def explain_actor_failure(err: BaseException, stage: str, memory_bytes: int | None, knobs: str) -> BaseException:
    """The error to raise instead of `err`: for an actor killed for memory, one that names the
    memory Ray had for it and the settings that lower it; otherwise `err` itself."""
    if not _memory_killed(err):
        return err
    declared = (f"each actor declared {memory_bytes / GiB:.1f} GiB to Ray ({stage}.actor_memory_gb overrides that"
                f" estimate)" if memory_bytes else f"the actors declared no memory ({stage}.actor_memory_gb)")
    limit = _node_memory_text()
    return ActorFailure(
        f"{stage}: an actor was killed for memory by Ray's memory monitor{limit}, after its restarts "
        f"({stage}.actor_max_restarts); {declared}. Lower {knobs}, or raise {stage}.actor_memory_gb so fewer actors"
        f" share a node. Ray's own record: /tmp/ray/session_latest/logs/raylet.out")


def _node_memory_text() -> str:
    try:
        import psutil
        total = psutil.virtual_memory().total
        return f" (this node: {total / GiB:.1f} GiB; it kills at 95% use by default)"
    except Exception:  # psutil missing: the message stays useful without the number
        return ""

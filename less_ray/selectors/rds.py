"""`rds`: representation-based data selection — cosine between pool and target embeddings.

score(x) = max over the task's subtasks s of mean_{t in s} cos(e_x, e_t), the same subtask
mean/max reduction LESS applies to gradient features (`core.influence`), with unit embeddings
(`selectors.embeddings`: MiniLM or the model's last-layer mean hidden state) in place of
gradients. Since the mean is linear the pool meets one [subtasks, d] matrix per task. The pool's
embedding store is streamed block by block (memory: one block, not the pool).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.influence import TaskQuery, partial_subtask_scores, reduce_max, stack_queries
from ..selection.folder import ScoreFolderWriter
from ..store import iter_blocks, read_store
from .base import register
from .embeddings import EmbedConfig, check_same_encoder, embed_pool_and_targets


@dataclass
class RDSConfig(EmbedConfig):
    block_rows: int = 65536
    subtask_scores: bool = False  # also write <task>/subtask_scores.parquet (select's order=round_robin)


def task_queries(target_stores: dict[str, Path]) -> list[TaskQuery]:
    queries = []
    for task, store in target_stores.items():
        t = read_store(store, ("features", "subtask"))
        queries.append(TaskQuery.build(task, [t["features"]], list(t["subtask"]), [1.0]))
    return queries


def score_stores(pool_store: Path, target_stores: dict[str, Path], out: str, pool: str, block_rows: int,
                 summary: dict[str, Any] | None = None, subtask_scores: bool = False) -> dict[str, Any]:
    """Stream the pool store through the stacked subtask-mean target embeddings -> score folder."""
    check_same_encoder(pool_store, list(target_stores.values()))
    queries = task_queries(target_stores)
    (matrix,), slices = stack_queries(queries)
    writer = ScoreFolderWriter(out, [q.task for q in queries], pool=pool)
    for blk in iter_blocks(pool_store, ("id", "source", "features"), block_rows):
        sims = partial_subtask_scores(blk["features"], matrix)
        for q, sl in zip(queries, slices):
            score, best = reduce_max(sims, sl)
            writer.write(q.task, list(blk["id"]), list(blk["source"]), score,
                         np.asarray(q.subtasks, dtype=object)[best].tolist(),
                         dict(zip(q.subtasks, sims[:, sl].T)) if subtask_scores else None)
    return writer.close({**(summary or {}), "tasks": {q.task: {"subtasks": q.subtasks} for q in queries}})


@register("rds", RDSConfig, "cosine of pool and target embeddings (subtask mean, max over subtasks)", targeted=True)
def run_rds(cfg: RDSConfig) -> dict[str, Any]:
    pool_store, target_stores = embed_pool_and_targets(cfg)
    return score_stores(pool_store, target_stores, cfg.out, cfg.pool, cfg.block_rows,
                        {"selector": "rds", "encoder": cfg.encoder, "embeddings": str(pool_store.parent)},
                        cfg.subtask_scores)

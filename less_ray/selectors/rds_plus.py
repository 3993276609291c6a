"""`rds_plus`: RDS+ (Ivison et al. 2025, arXiv 2503.01807; code hamishivi/automated-instruction-selection).

As their `compute_influence_cosinesim.py --pooling weighted_mean` and `get_top_influences.py
--selection_method max` do it:
- every pool and target example is rendered as their `encode_with_messages_format` renders it
  (`<|user|>\\n..\\n<|assistant|>\\n..{eos}\\n` per message, contents stripped, the whole text
  stripped: our `tulu_stripped`), tokenised with the tokenizer's special tokens, cut at 2,048
  tokens;
- its embedding is the selecting model's final hidden state (after the final norm), pooled with
  position weights: token i of n weighted i / (1 + .. + n) (SGPT), then L2-normalised;
- each target example ranks the pool by cosine, and the pool is picked round-robin over the
  target examples (each in turn adds its best example not yet picked): their "max" selection.
  `core.round_robin` turns that order into a score (-(round x targets + target index)): the top
  k by score are the round-robin's first k picks, for every k.
`aggregation: max` (each pool example's best cosine over the task's targets) or `mean` (its mean)
rank by a plain score instead; the summary records which. Each task of --targets is its own list
of targets and its own score folder task, as with every targeted selector.

Differences from their code: fp32 by default (theirs bf16); the pool is embedded in length-sorted
padded batches (theirs one example at a time, so padding never enters the weighted mean; here the
weights count the kept tokens only, which gives the same embedding); the model is `model` (the
pipeline fills in its base model), not a warmup checkpoint — unless `pool_embeddings` and
`target_embeddings` name the embedding stores LESS's extraction kept from its own gradient pass
(`extract --set embedding=weighted_mean`): the warmup checkpoint's hidden states over LESS's
tokens (its `chat_format`, examples without a label token skipped), at no extra pass.

Memory: the round-robin holds [pool, targets chunk] cosines, chunked so they fit `sims_bytes`
(one pass over the pool store per chunk); max and mean stream the pool once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import path_field
from ..core.formatting import ChatFormat
from ..core.round_robin import RoundRobin, key_scores
from ..selection.folder import ScoreFolderWriter
from ..store import iter_blocks, read_manifest, read_store
from .base import register
from .embeddings import EmbedConfig, check_same_encoder, embed_pool_and_targets

AGGREGATIONS = ("round_robin", "max", "mean")


@dataclass
class RDSPlusConfig(EmbedConfig):
    encoder: str = "model"  # the selecting model's own hidden states (RDS+); minilm is allowed
    chat_format: ChatFormat = "tulu_stripped"  # RDS+'s encode_with_messages_format
    pooling: str = "weighted_mean"  # RDS+'s --pooling weighted_mean
    embed_max_tokens: int = 2048  # RDS+'s max_seq_length
    embed_batch_size: int = 8
    aggregation: str = "round_robin"  # round_robin (RDS+'s) | max | mean over the task's target examples
    block_rows: int = 65536
    sims_bytes: int = 1 << 30  # round_robin: memory for [pool, targets chunk] float32 cosines
    # embedding stores made already (extract's `embedding: weighted_mean`, <extract out>/embedding,
    # the same pass as LESS's gradients): the pool's and each task's; given, nothing is embedded here
    pool_embeddings: str | None = path_field("in", None)
    target_embeddings: dict[str, str] = path_field("in", {})
    # the pipeline fills in its own chat_format elsewhere; RDS+ renders as its paper does
    OWN_DEFAULTS: ClassVar[tuple[str, ...]] = ("chat_format",)


def _pool_columns(pool_store: Path, block_rows: int) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    sources: list[str] = []
    for blk in iter_blocks(pool_store, ("id", "source"), block_rows):
        ids += blk["id"].tolist()
        sources += blk["source"].tolist()
    return ids, sources


def task_scores(pool_store: Path, target_store: Path, aggregation: str, block_rows: int,
                sims_bytes: int) -> dict[str, Any]:
    """{"score" float64 [N], "target" [N] (the target that picks / best matches each row), "subtasks"
    of the targets, "exact_positions"} for one task, pool rows in store order."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    t = read_store(target_store, ("features", "subtask"))
    feats, n = t["features"].astype(np.float32), read_manifest(pool_store).count
    if len(feats) == 0:
        raise ValueError(f"{target_store}: no target examples")
    out: dict[str, Any] = {"subtasks": list(t["subtask"]), "targets": len(feats)}
    if aggregation != "round_robin":
        score, best, pos = np.empty(n), np.empty(n, np.int64), 0
        for blk in iter_blocks(pool_store, ("features",), block_rows):
            sims = blk["features"] @ feats.T
            m = len(sims)
            best[pos:pos + m] = sims.argmax(1)
            score[pos:pos + m] = sims.max(1) if aggregation == "max" else sims.mean(1, dtype=np.float64)
            pos += m
        return {**out, "score": score, "target": best, "exact_positions": None}
    chunk = max(1, min(len(feats), sims_bytes // max(1, 4 * n)))
    rr = RoundRobin(n)
    for lo in range(0, len(feats), chunk):
        part = feats[lo:lo + chunk]
        sims, pos = np.empty((n, len(part)), np.float32), 0
        for blk in iter_blocks(pool_store, ("features",), block_rows):
            sims[pos:pos + len(blk["features"])] = blk["features"] @ part.T
            pos += len(blk["features"])
        for j in range(len(part)):  # the targets in store order: the turn order
            rr.add(sims[:, j])
    keys, picker = rr.keys()
    score, exact = key_scores(keys)
    return {**out, "score": score, "target": picker, "exact_positions": exact, "target_chunk": chunk}


@register("rds_plus", RDSPlusConfig, "RDS+: the model's position-weighted mean final hidden states, cosine, "
          "round-robin over the target examples (Ivison et al. 2025; give --set model=DIR)", targeted=True)
def run_rds_plus(cfg: RDSPlusConfig) -> dict[str, Any]:
    if cfg.pool_embeddings:
        missing = sorted(set(cfg.targets) - set(cfg.target_embeddings))
        if missing or not cfg.target_embeddings:
            raise ValueError(f"rds_plus: pool_embeddings given, so target_embeddings must name a store for every "
                             f"task; missing {missing or sorted(cfg.targets)}")
        pool_store = Path(cfg.pool_embeddings)
        target_stores = {t: Path(cfg.target_embeddings[t]) for t in (cfg.targets or cfg.target_embeddings)}
    else:
        pool_store, target_stores = embed_pool_and_targets(cfg)
    check_same_encoder(pool_store, list(target_stores.values()))
    ids, sources = _pool_columns(pool_store, cfg.block_rows)
    writer = ScoreFolderWriter(cfg.out, list(target_stores), pool=cfg.pool)
    tasks: dict[str, Any] = {}
    for task, store in target_stores.items():
        r = task_scores(pool_store, store, cfg.aggregation, cfg.block_rows, cfg.sims_bytes)
        subtasks = np.asarray(r.pop("subtasks"), dtype=object)
        writer.write(task, ids, sources, r.pop("score"), subtasks[r.pop("target")].tolist())
        tasks[task] = r
    return writer.close({"selector": "rds_plus", "encoder": read_manifest(pool_store).extra.get("encoder"),
                         "aggregation": cfg.aggregation, "embeddings": str(pool_store.parent), "tasks": tasks,
                         "score": {"round_robin": "-(round x targets + target index): top k = the first k picks",
                                   "max": "best cosine over the task's targets",
                                   "mean": "mean cosine over the task's targets"}[cfg.aggregation]})

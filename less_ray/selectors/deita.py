"""`deita`: complexity x quality scores, then a score-first, diversity-aware walk (DEITA).

DEITA (Liu et al. 2024, "What Makes Good Data for Alignment?", code hkust-nlp/deita):
- scores: a complexity scorer rates the user query and a quality scorer the (query, response),
  each read as DEITA's `infer_score` does: one forward pass on its prompt
  (`deita.selection.scorer.llama_scorer` templates, raw text, no chat template), the softmax over
  the next-token logits of "1".."6" and sum(p·value). The evol score is complexity x quality,
  summed over a conversation's turns (`Combined_Filter._sort`). `complexity_model` and
  `quality_model` default to `model`; DEITA's own scorers (hkust-nlp/deita-complexity-scorer,
  deita-quality-scorer) work when given as folders.
- selection (`IterativeFilter.filter` with its default batch of 1): walk the pool by evol score
  (descending; ties: smaller id first) and add an example unless its embedding's cosine to an
  already selected one exceeds `threshold` (τ = 0.9 in the paper), until `budget` examples
  (default select's k of top_p). DEITA embeds with its own model's mean hidden state; the
  embedder here is RDS's (`encoder`: MiniLM by default, or `model`).
The score folder writes the walk's order: selected examples first (in walk order), then every other
example in evol-score order, strictly below. The evol scores are in `evol/all/scores.parquet`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import path_field
from ..selection.folder import ScoreFolderWriter, score_blocks
from ..store import read_store
from .base import ALL_TASK, PoolScorer, register, score_pool
from .embeddings import embed_pool_and_targets
from .judge import JudgeConfig, LMJudge, judge_kwargs, turn_pairs
from .kcenter import budget_for

COMPLEXITY = ("You are a helpful assistant. Please identify the complexity score of the following user query. \n"
              "##Query: {instruction}  \n##Complexity: ")
QUALITY = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
           "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
SCALE = (1, 2, 3, 4, 5, 6)


@dataclass
class DeitaConfig(JudgeConfig):
    complexity_model: str | None = path_field("model", None)  # default: model
    quality_model: str | None = path_field("model", None)  # default: model
    threshold: float = 0.9  # τ: skip a candidate whose cosine to a selected example exceeds it (paper: 0.9)
    budget: int | None = None  # examples selected by the walk (default select's k of top_p)
    chunk: int = 256  # candidates compared with the selected set per matrix product


class DeitaScorer(PoolScorer):
    """Per example: sum over turns of complexity(query) x quality(query, response)."""

    def __init__(self, tasks: list[str], complexity: dict[str, Any], quality: dict[str, Any]):
        super().__init__(tasks)
        self.c = LMJudge(**complexity)
        self.q = self.c if quality == complexity else LMJudge(**quality)

    def score(self, rows):
        pairs = [turn_pairs(r["messages"]) for r in rows]
        flat = [p for ps in pairs for p in ps]
        c = self.c.expected([COMPLEXITY.format(instruction=self.c.cut(u)) for u, _ in flat], SCALE)
        q = self.q.expected([QUALITY.format(instruction=self.q.cut(u), output=self.q.cut(a)) for u, a in flat], SCALE)
        evol, at = np.empty(len(rows)), 0
        for i, ps in enumerate(pairs):
            evol[i] = float((c[at:at + len(ps)] * q[at:at + len(ps)]).sum())
            at += len(ps)
        return {ALL_TASK: (evol, None)}


def diversity_walk(x: np.ndarray, order: np.ndarray, threshold: float, budget: int, chunk: int = 256) -> list[int]:
    """Rows of unit vectors `x` visited in `order`; a row is kept unless its cosine to a kept row
    exceeds `threshold`; stops at `budget` kept. Exactly the one-at-a-time walk, computed a chunk at
    a time (one product with the kept rows, then the chunk's survivors against each other in order)."""
    import torch
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    kept: list[int] = []
    kept_mat = xt.new_zeros((0, xt.shape[1]))
    for lo in range(0, len(order), chunk):
        if len(kept) >= budget:
            break
        idx = order[lo:lo + chunk]
        cand = xt[idx]
        ok = ~((cand @ kept_mat.T) > threshold).any(1) if len(kept) else torch.ones(len(idx), dtype=torch.bool)
        new: list[int] = []
        for j in torch.nonzero(ok).flatten().tolist():
            if new and bool(((xt[new] @ cand[j]) > threshold).any()):
                continue
            new.append(int(idx[j]))
            if len(kept) + len(new) >= budget:
                break
        kept += new
        kept_mat = torch.cat([kept_mat, xt[new]]) if new else kept_mat
    return kept


def walk_scores(n: int, evol_order: np.ndarray, kept: list[int]) -> np.ndarray:
    """float32 scores whose descending order is: kept rows in walk order, then the rest by evol rank."""
    s = np.empty(n, np.float32)
    s[evol_order] = n - np.arange(n, dtype=np.float32)  # n .. 1 by evol rank
    s[np.asarray(kept, dtype=np.int64)] = 2 * n - np.arange(len(kept), dtype=np.float32)  # above every rank
    return s


@register("deita", DeitaConfig, "DEITA: complexity x quality scorer ratings, then a score-first walk skipping "
          "near-duplicates (cosine > 0.9); give --set model=DIR")
def run_deita(cfg: DeitaConfig) -> dict[str, Any]:
    if not (cfg.model or (cfg.complexity_model and cfg.quality_model)):
        raise ValueError("deita needs scorer models: --set model=DIR (or complexity_model= and quality_model=)")
    out = Path(cfg.out).resolve()

    evol_cfg = dataclasses.replace(cfg, out=str(out / "evol"))
    evol_summary = score_pool(evol_cfg, "deita", [ALL_TASK], DeitaScorer,
                              {"complexity": judge_kwargs(cfg, cfg.complexity_model),
                               "quality": judge_kwargs(cfg, cfg.quality_model)})
    blocks = list(score_blocks(out / "evol" / ALL_TASK / "scores.parquet", 65536))
    ids = np.concatenate([b["id"] for b in blocks])
    sources = np.concatenate([b["source"] for b in blocks])
    evol = np.concatenate([b["score"] for b in blocks])
    pool_store, _ = embed_pool_and_targets(dataclasses.replace(cfg, targets={}))
    emb = read_store(pool_store, ("id", "features"))
    if list(emb["id"]) != list(ids):
        raise RuntimeError(f"deita: the embedding store {pool_store} is not in the pool's order")
    order = np.lexsort((ids, -evol))  # evol desc, id asc: select's order
    budget = budget_for(cfg, len(ids))
    kept = diversity_walk(emb["features"], order, cfg.threshold, budget, cfg.chunk)
    writer = ScoreFolderWriter(out, [ALL_TASK], pool=cfg.pool)
    writer.write(ALL_TASK, ids.tolist(), sources.tolist(), walk_scores(len(ids), order, kept))
    return writer.close({"selector": "deita", "encoder": cfg.encoder, "threshold": cfg.threshold,
                         "budget": budget, "selected_by_walk": len(kept),
                         "visited": int(np.flatnonzero(np.isin(order, kept[-1:]))[0]) + 1 if kept else 0,
                         "evol": {"scores": str(out / "evol"), "mean": float(evol.mean()),
                                  "seconds": evol_summary.get("seconds_scoring")},
                         "complexity_model": str(cfg.complexity_model or cfg.model),
                         "quality_model": str(cfg.quality_model or cfg.model)})

"""`fusion`: one ranking from several finished score folders (LESS's and RDS+'s, or any).

score(x) = sum_i w_i * s_i(x) over the inputs i, weights normalised to sum 1, where s_i is
- `method: rank` (the default): x's percentile in input i's ranking of the pool,
  1 - (rank - 1) / (N - 1) with rank 1 the best and tied scores sharing their mean rank
  (Borda-style rank fusion: insensitive to each input's score scale);
- `method: zscore`: input i's score standardised over the pool, (s - mean) / std.
Each task of the output is fused from each input's folder for that task; an input with a single
task-agnostic task (`all`, or its selector's name) serves every task. The inputs must score the
same pool ids (any row order; the output keeps the first input's). `best_subtask` is the first
input's.

`inputs` maps a label to a score folder. In a pipeline run, the name `less` stands for the run's
LESS scores and any other name without a "/" for that selector's folder in the run
(`selectors/<name>`): list the inputs' selectors before `fusion` under `selectors:`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import path_field
from ..selection.folder import ScoreFolderWriter
from .base import SelectorConfig, register

METHODS = ("rank", "zscore")


@dataclass
class FusionConfig(SelectorConfig):
    inputs: dict[str, str] = field(default_factory=dict)  # label -> score folder (pipeline: less | a selector name)
    weights: dict[str, float] | None = None  # label -> weight (default equal), normalised to sum 1
    method: str = "rank"  # rank (mean percentile) | zscore
    run_folder: str | None = path_field("in", None)  # the pipeline run (it fills this in): resolves input names


def input_folder(cfg: FusionConfig, label: str, where: str) -> Path:
    if "/" not in where and cfg.run_folder:
        return Path(cfg.run_folder) / ("scores" if where == "less" else f"selectors/{where}")
    return Path(where)


def percentile(score: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    n = len(score)
    if n < 2:
        return np.ones(n)
    rank = rankdata(-score, method="average")  # 1 = best; ties share their mean rank
    return 1.0 - (rank - 1.0) / (n - 1.0)


def standardised(score: np.ndarray) -> np.ndarray:
    std = score.std()
    return (score - score.mean()) / std if std > 0 else np.zeros_like(score)


def _read(folder: Path, task: str) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq
    t = pq.read_table(folder / task / "scores.parquet").to_pydict()
    return {"id": np.asarray(t["id"], dtype=object), "source": np.asarray(t["source"], dtype=object),
            "score": np.asarray(t["score"], np.float64), "best": np.asarray(t["best_subtask"], dtype=object)}


@register("fusion", FusionConfig, "LESS and RDS+ (or any score folders) fused: weighted mean percentile rank "
          "(or z-score); give --set inputs={less: DIR, rds_plus: DIR}", targeted=True)
def run_fusion(cfg: FusionConfig) -> dict[str, Any]:
    if len(cfg.inputs) < 2:
        raise ValueError(f"fusion: inputs must name at least two score folders, got {cfg.inputs}")
    if cfg.method not in METHODS:
        raise ValueError(f"fusion: method must be one of {METHODS}, not {cfg.method!r}")
    weights = cfg.weights or {k: 1.0 for k in cfg.inputs}
    if set(weights) != set(cfg.inputs) or any(not np.isfinite(w) or w < 0 for w in weights.values()) \
            or sum(weights.values()) <= 0:
        raise ValueError(f"fusion: weights must give every input ({sorted(cfg.inputs)}) a weight >= 0, "
                         f"not all 0; got {weights}")
    total = sum(weights.values())
    w = {k: float(v) / total for k, v in weights.items()}
    folders, tasks = {}, {}
    for label, where in cfg.inputs.items():
        folder = input_folder(cfg, label, where)
        summary = folder / "score_summary.json"
        if not summary.exists():
            raise FileNotFoundError(f"fusion input {label}: {summary} is missing; run that selector (or LESS's "
                                    "score stage) first")
        folders[label], tasks[label] = folder, list(json.loads(summary.read_text())["tasks"])
    wanted = list(cfg.targets) or tasks[next(iter(tasks))]  # the targets' tasks, else the first input's
    writer = ScoreFolderWriter(cfg.out, wanted, pool=cfg.pool)
    info: dict[str, Any] = {}
    for task in wanted:
        fused, first, back, used = None, None, None, {}
        for label, folder in folders.items():
            own = task if task in tasks[label] else (tasks[label][0] if len(tasks[label]) == 1 else None)
            if own is None:
                raise ValueError(f"fusion input {label} ({folder}) has no task {task!r}: it has {tasks[label]}")
            part = _read(folder, own)
            order = np.argsort(part["id"])
            part = {k: v[order] for k, v in part.items()}
            if first is None:
                first, back = part, np.argsort(order)  # back: the first input's own row order
            elif len(part["id"]) != len(first["id"]) or not (part["id"] == first["id"]).all():
                raise ValueError(f"fusion: {folder / own} scores other pool ids than {next(iter(used))}'s "
                                 f"({len(part['id'])} vs {len(first['id'])} rows)")
            s = percentile(part["score"]) if cfg.method == "rank" else standardised(part["score"])
            fused = w[label] * s if fused is None else fused + w[label] * s
            used[label] = str(folder / own / "scores.parquet")
        writer.write(task, first["id"][back].tolist(), first["source"][back].tolist(), fused[back],
                     first["best"][back].tolist())
        info[task] = {"inputs": used}
    return writer.close({"selector": "fusion", "method": cfg.method, "weights": w, "tasks": info,
                         "score": "sum of weight x " + ("percentile rank (1 best, 0 worst; ties: mean rank)"
                                                        if cfg.method == "rank" else "z-scored input score")})

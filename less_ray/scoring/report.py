"""`less-ray report`: one self-contained HTML page (PNG plots inlined) about a selection.

Per task: selected share per source against its pool share, the score histogram, how often each
subtask is the best match, and the top and bottom examples with their scores. Everything is
computed by streaming the score blocks; only the shown examples are held in memory.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import save_config
from ..core.influence import TopK
from ..data.io import iter_records
from .select import pool_file


@dataclass
class ReportConfig:
    scores: str = ""  # the score stage's output folder (after select)
    out: str | None = None  # default: <scores>/report.html
    pool: str | None = None  # pool records for example texts; default: the pool store's input file
    top_p: float = 0.05  # the selection to describe (k = floor(p * N))
    examples: int = 5  # top and bottom examples shown per task
    bins: int = 50
    block_rows: int = 65536


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def task_statistics(scores_path: Path, k: int, n_examples: int, bins: int, block_rows: int) -> dict[str, Any]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(scores_path)
    stats = [pf.metadata.row_group(i).column(2).statistics for i in range(pf.num_row_groups)]
    lo = min(s.min for s in stats)
    hi = max(s.max for s in stats)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    hist = np.zeros(bins, dtype=np.int64)
    pool_src, wins = Counter(), Counter()
    top, bottom = TopK(k), TopK(n_examples)
    for b in pf.iter_batches(batch_size=block_rows):
        ids = np.asarray(b.column("id").to_pylist(), dtype=str)
        src = np.asarray(b.column("source").to_pylist(), dtype=object)
        score = b.column("score").to_numpy().astype(np.float64)
        hist += np.histogram(score, edges)[0]
        pool_src.update(src.tolist())
        wins.update(b.column("best_subtask").to_pylist())
        top.push(score, ids, source=src)
        bottom.push(-score, ids)
    sel_src = Counter(top.extra.get("source", np.empty(0)).tolist())
    return {"n": pf.metadata.num_rows, "hist": hist, "edges": edges, "pool_sources": pool_src,
            "selected_sources": sel_src, "wins": wins,
            "top": list(zip(top.ids[:n_examples].tolist(), top.scores[:n_examples].tolist())),
            "bottom": list(zip(bottom.ids.tolist(), (-bottom.scores).tolist()))}


def _plots(task: str, st: dict[str, Any]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sources = sorted(st["pool_sources"], key=lambda s: -st["pool_sources"][s])[:30]
    n_sel = max(1, sum(st["selected_sources"].values()))
    x = np.arange(len(sources))
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(sources)), 3.5))
    ax.bar(x - 0.2, [st["pool_sources"][s] / st["n"] for s in sources], 0.4, label="pool share")
    ax.bar(x + 0.2, [st["selected_sources"][s] / n_sel for s in sources], 0.4, label="selected share")
    ax.set_xticks(x, sources, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"{task}: share per source")
    ax.legend()
    out = [_png(fig)]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.stairs(st["hist"], st["edges"], fill=True)
    ax.set_title(f"{task}: influence score histogram")
    ax.set_xlabel("score")
    out.append(_png(fig))
    wins = st["wins"].most_common(30)
    if len(wins) > 1:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(wins)), 3))
        ax.bar(range(len(wins)), [c for _, c in wins])
        ax.set_xticks(range(len(wins)), [w or "(none)" for w, _ in wins], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{task}: best-matching subtask, count over the pool")
        out.append(_png(fig))
    return out


def _texts(pool: str, ids: set[str]) -> dict[str, str]:
    out = {}
    for rec in iter_records(pool):
        if rec.id in ids:
            out[rec.id] = "\n".join(f"[{m['role']}] {m['content']}" for m in rec.messages)
    return out


def run_report(cfg: ReportConfig) -> Path:
    import pyarrow.parquet as pq
    root = Path(cfg.scores)
    summary = json.loads((root / "score_summary.json").read_text())
    stats = {}
    for task in summary["tasks"]:
        path = root / task / "scores.parquet"
        k = int(math.floor(cfg.top_p * pq.ParquetFile(path).metadata.num_rows + 1e-9))
        stats[task] = task_statistics(path, k, cfg.examples, cfg.bins, cfg.block_rows)
    shown = {i for st in stats.values() for i, _ in st["top"] + st["bottom"]}
    texts = _texts(pool_file(cfg.scores, cfg.pool), shown)
    parts = [f"<h1>LESS selection report</h1><p>{summary['pool_rows']} pool examples, "
             f"{summary['checkpoints']} checkpoints (weights {[round(w, 4) for w in summary['weights']]}), "
             f"top {cfg.top_p:g} of the pool per task.</p>"]
    for task, st in stats.items():
        parts.append(f"<h2>{html.escape(task)}</h2>")
        rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{st['pool_sources'][s]}</td>"
                       f"<td>{st['pool_sources'][s] / st['n']:.1%}</td><td>{st['selected_sources'][s]}</td>"
                       f"<td>{st['selected_sources'][s] / max(1, sum(st['selected_sources'].values())):.1%}</td></tr>"
                       for s in sorted(st["pool_sources"], key=lambda s: -st["selected_sources"][s]))
        parts.append("<table><tr><th>source</th><th>pool</th><th>pool share</th><th>selected</th>"
                     f"<th>selected share</th></tr>{rows}</table>")
        parts += [f'<img alt="{html.escape(task)} plot" src="data:image/png;base64,{p}">' for p in _plots(task, st)]
        for title, items in (("Top", st["top"]), ("Bottom", st["bottom"])):
            parts.append(f"<h3>{title} examples</h3><ol>" + "".join(
                f"<li><b>{score:.4f}</b> <code>{html.escape(i)}</code><pre>{html.escape(texts.get(i, '')[:1500])}</pre></li>"
                for i, score in items) + "</ol>")
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}pre{white-space:pre-wrap;font-size:12px;"
             "background:#f6f6f6;padding:4px}img{display:block;margin:8px 0}</style>")
    out = Path(cfg.out) if cfg.out else root / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>less_ray report</title>{style}</head>"
                   f"<body>{''.join(parts)}</body></html>", encoding="utf-8")
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    return out


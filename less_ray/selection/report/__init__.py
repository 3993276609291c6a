"""`less-ray report`: one self-contained HTML page (PNG plots inlined) about a selection.

Works on any score folder (`less_ray.selection.folder`): LESS's and every other selector's
(random, full, RDS, k-center, loss-based, ...). The page holds:
- a "how to read this" paragraph;
- the run's metadata: selector, model, pool and target files with their content hashes (the
  hash recorded at scoring time beside the file's hash now), checkpoints and weights (LESS),
  the resolved configs (pipeline, score / selector, select), dates and library versions, all read
  from the score folder, its store manifests and, inside a pipeline run folder, `pipeline.config.yaml`;
- eval results of every trained model (`<run>/eval/*.json` inside a pipeline run folder, plus
  the JSON files or folders in `ReportConfig.eval`);
- result tables made elsewhere (`ReportConfig.tables`: e.g. an experiment's trained-model comparison);
- per task: the selection file and its size rule (k, p, the denominator N; a rule `select`
  records is shown as recorded), the composition by source of the selection beside the pool and
  a random baseline of the same size (`<run>/selectors/random` when the run has it, else a seeded
  random sample of the scored pool: the one `less-ray selector random --seed S` draws),
  near-duplicate counts in the selection and in the baseline (the `dedup` stage's MinHash, in
  process), the score histogram, how often each subtask is the best match, and the top and
  bottom examples with their scores.
Score blocks are streamed; memory holds the selection, the baseline and the shown examples.

`collect` reads the folder and its files, `statistics` computes per task, `render` writes the HTML;
`run_report` here runs them in that order.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import path_field, save_config
from ..seeded import RANDOM_SELECTOR
from ..select import pool_file, pool_size
from .collect import (conversation_texts, eval_files, eval_rows, read_selection, read_yaml, result_tables,
                      run_folder, run_metadata, selection_spec)
from .render import page_html, tables_html
from .statistics import near_duplicates, random_baseline, run_random_folder, task_statistics


@dataclass
class ReportConfig:
    scores: str = path_field("in", "")  # the score folder (LESS's `score` or any selector's), after select
    out: str | None = path_field("out", None)  # default: <scores>/report.html
    pool: str | None = path_field("in", None)  # pool records for example texts; default: the one the folder records
    top_p: float | None = None  # the selection to describe; default: what `select` recorded, else 0.05
    examples: int = 5  # top and bottom examples shown per task
    bins: int = 50
    block_rows: int = 65536
    eval: list[str] = path_field("in", [])  # eval JSON files or folders (besides <run>/eval/**/*.json)
    # result tables made elsewhere (an experiment's comparison), each file JSON: {"title", "tables":
    # [{"caption", "columns": [..], "rows": [[..], ..], "note"?}]}, shown after the eval results
    tables: list[str] = path_field("in", [])
    random_seed: int = 0  # seed of the computed random baseline (used when the run has no selectors/random)
    dedup_threshold: float | None = 0.8  # near-duplicate: estimated Jaccard of word shingles >= this (None: skip)
    dedup_ngram: int = 5
    dedup_num_perm: int = 128
    dedup_max: int = 20000  # near-duplicates among at most this many (the highest-ranked; a random sample's first)


def _task(task: str, root: Path, run: Path | None, spec: dict[str, Any], cfg: ReportConfig,
          selected_records: list[dict[str, Any]] | None, seed: int) -> dict[str, Any]:
    """One task's statistics, selection (the file's records, else the top k by score) and baseline."""
    k = len(selected_records) if selected_records is not None else spec["k_rule"]
    need_random = run_random_folder(root, run) is None
    st = task_statistics(root / task / "scores.parquet", k, cfg.examples, cfg.bins, cfg.block_rows,
                         seed if need_random else None)
    if selected_records is None:
        selected_records = [{"id": i, "source": s, "score": sc, "messages": None}
                            for i, s, sc in zip(st["top_ids"], st["top_sources"], st["top_scores"])]
    scored = [r["score"] for r in selected_records if isinstance(r.get("score"), (int, float))]
    st["cut"] = min(scored) if scored else None
    base = random_baseline(root, run, task, k, st, seed, cfg.block_rows)
    return {"task": task, "st": st, "spec": spec, "k": k, "selected": selected_records, "random": base}


def run_report(cfg: ReportConfig) -> Path:
    import pyarrow.parquet as pq

    from ...storage import require_local
    require_local(cfg.scores, "report: scores")
    root = Path(cfg.scores)
    tables = [(Path(p), result_tables(Path(p))) for p in cfg.tables]  # a malformed file fails before the work
    summary = json.loads((root / "score_summary.json").read_text())
    run = run_folder(root)
    try:
        pool = pool_file(cfg.scores, cfg.pool)
    except ValueError:
        pool = None
    if pool is None and run is not None:
        pool = read_yaml(run / "pipeline.config.yaml").get("pool")
    meta = run_metadata(root, run, summary, pool)

    seed = cfg.random_seed  # the computed baseline's; for the random selector itself, another draw
    if meta["selector"] == RANDOM_SELECTOR and read_yaml(root / "selector.config.yaml").get("seed", summary.get("seed")) == seed:
        seed += 1
    dup_n = cfg.dedup_max if cfg.dedup_threshold is not None else 0
    tasks = []

    @functools.cache
    def n_pool():  # the pool's N, counted once and only if a task has no recorded selection
        if pool is None:
            return None
        try:
            return pool_size(pool)
        except (OSError, ValueError):  # the page says elsewhere that the pool cannot be read
            return None

    for task in summary["tasks"]:
        n = pq.ParquetFile(root / task / "scores.parquet").metadata.num_rows
        spec = selection_spec(root / task, n, cfg.top_p, n_pool)
        selected = read_selection(spec["file"], max(cfg.examples, dup_n)) if spec["file"] is not None else None
        tasks.append(_task(task, root, run, spec, cfg, selected, seed))

    # one pass over the pool for every text the page needs (shown examples, selections without
    # their records, random baselines)
    need: set[str] = set()
    for t in tasks:
        need.update(r["id"] for r in t["selected"][: cfg.examples])
        need.update(i for i, _ in t["st"]["bottom"])
        if cfg.dedup_threshold is not None:
            need.update(r["id"] for r in t["selected"][:dup_n] if r["messages"] is None)
            need.update(t["random"]["ids"][:dup_n])
    texts, pool_problem = conversation_texts(pool, need)
    dedup = (cfg.dedup_ngram, cfg.dedup_threshold, cfg.dedup_num_perm) if cfg.dedup_threshold is not None else None
    for t in tasks:
        for r in t["selected"]:
            if r["messages"] is None:
                r["messages"] = texts.get(r["id"])
        if dedup is not None:
            t["dup_sel"] = near_duplicates([(r["id"], r["messages"]) for r in t["selected"][:dup_n]],
                                           cfg.dedup_threshold, cfg.dedup_ngram, cfg.dedup_num_perm,
                                           len(t["selected"]))
            t["dup_rnd"] = near_duplicates([(i, texts.get(i)) for i in t["random"]["ids"][:dup_n]],
                                           cfg.dedup_threshold, cfg.dedup_ngram, cfg.dedup_num_perm,
                                           len(t["random"]["ids"]))

    ev = sorted(((p, r) for p in eval_files(run, cfg.eval) for r in eval_rows(p)), key=lambda x: (x[1]["task"], x[0].name))
    page = page_html(summary, meta, tasks, ev, [tables_html(p, tab) for p, tab in tables], texts, pool_problem,
                     cfg.examples, dedup)
    out = Path(cfg.out) if cfg.out else root / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    return out

"""`less-ray report`: one self-contained HTML page (PNG plots inlined) about a selection.

Works on any score folder (`less_ray.scoring.folder`): LESS's and every other selector's
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
"""
from __future__ import annotations

import base64
import datetime as _dt
import functools
import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import path_field, save_config
from ..core.influence import TopK
from ..selection.select import pool_file, pool_records, pool_size

RANDOM_SELECTOR = "random"


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


def _e(x: Any) -> str:
    return html.escape(str(x))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _yaml(path: Path) -> dict[str, Any]:
    import yaml
    text = _read_text(path)
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def run_folder(scores: Path) -> Path | None:
    """The pipeline run folder a score folder belongs to (`<run>/scores`, `<run>/selectors/<name>`)."""
    scores = scores.resolve()
    for cand in (scores.parent, scores.parent.parent):
        if (cand / "pipeline.config.yaml").exists():
            return cand
    return None


def _sha256(path: str | None) -> str | None:
    from ..artifact import sha256_file
    try:
        return sha256_file(path) if path else None
    except OSError:
        return None


def _mtime(path: Path) -> str | None:
    try:
        return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OSError:
        return None


# ---- per task: the selection, the baseline, the statistics ------------------------------------

def selection_spec(task_dir: Path, n: int, top_p: float | None, n_pool=None) -> dict[str, Any]:
    """What selection to describe: p (or n), k, the selection file if `select` wrote it, and the
    size rule `select` recorded (if it records one). `n`: rows scored; `n_pool()`: the pool's N
    (a callable: counted only when no selection records k), as `select` counts k over N."""
    from ..selection.select import SelectConfig, selection_name
    recorded = _yaml(task_dir / "select.config.yaml")
    top_n = None
    if top_p is None:
        top_n = recorded.get("top_n")
        top_p = recorded.get("top_p") if recorded else None
        top_p = 0.05 if top_p is None and top_n is None else top_p
    name = selection_name(SelectConfig(top_p=top_p, top_n=top_n))
    path = task_dir / name
    manifest = _read_json(task_dir / "selection.json")  # select's manifest: file, k, the size rule
    if isinstance(manifest, dict) and manifest.get("file") == name and path.exists() and "k" in manifest:
        return {"top_p": top_p, "top_n": top_n, "k_rule": int(manifest["k"]), "file": path, "name": name,
                "rule": manifest.get("rule"), "N": n, "N_is": "examples scored for this task"}
    # no selection of this size: describe what select would pick (its rule, over the pool's N,
    # at most the rows scored)
    from ..selection.select import selection_count
    pool_n = n_pool() if n_pool is not None else None
    k_rule = selection_count(top_p, top_n, n if pool_n is None else pool_n, n,
                             recorded.get("count_rule") or "floor")
    rule = manifest.get("rule") if isinstance(manifest, dict) and manifest.get("file", name) == name else None
    return {"top_p": top_p, "top_n": top_n, "k_rule": k_rule, "file": path if path.exists() else None,
            "name": name, "rule": rule, "N": n if pool_n is None else pool_n,
            "N_is": "examples scored for this task" if pool_n is None else "records in the pool file"}


def read_selection(path: Path, keep_messages: int) -> list[dict[str, Any]]:
    """The selection file's records (id, source, score; messages for the first `keep_messages`), in order."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                out.append({"id": str(r["id"]), "source": str(r.get("source", "")), "score": r.get("score"),
                            "messages": r.get("messages") if len(out) < keep_messages else None})
    return out


def _score_range(pf, block_rows: int) -> tuple[float, float]:
    col = pf.schema_arrow.get_field_index("score")
    stats = [pf.metadata.row_group(i).column(col).statistics for i in range(pf.num_row_groups)]
    if stats and all(s is not None and s.has_min_max for s in stats):
        return float(min(s.min for s in stats)), float(max(s.max for s in stats))
    lo, hi = math.inf, -math.inf
    for b in pf.iter_batches(batch_size=block_rows, columns=["score"]):
        s = b.column("score").to_numpy()
        if len(s):
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    return (lo, hi) if lo <= hi else (0.0, 1.0)


def task_statistics(scores_path: Path, k: int, n_examples: int, bins: int, block_rows: int,
                    random_seed: int | None = None) -> dict[str, Any]:
    """One pass over a task's scores: histogram, sources of the pool and of the top k, best-subtask
    counts, top and bottom examples, and (with `random_seed`) the seeded random k of the scored ids."""
    import pyarrow.parquet as pq

    from ..selection.seeded import seeded_uniform
    pf = pq.ParquetFile(scores_path)
    lo, hi = _score_range(pf, block_rows)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    hist = np.zeros(bins, dtype=np.int64)
    pool_src, wins = Counter(), Counter()
    top, bottom = TopK(k), TopK(n_examples)
    rand = TopK(k) if random_seed is not None else None
    for b in pf.iter_batches(batch_size=block_rows):
        ids = np.asarray(b.column("id").to_pylist(), dtype=str)
        src = np.asarray(b.column("source").to_pylist(), dtype=object)
        score = b.column("score").to_numpy().astype(np.float64)
        hist += np.histogram(score, edges)[0]
        pool_src.update(src.tolist())
        wins.update(b.column("best_subtask").to_pylist())
        top.push(score, ids, source=src)
        bottom.push(-score, ids)
        if rand is not None:
            rand.push(seeded_uniform(ids.tolist(), random_seed), ids, source=src)
    out = {"n": pf.metadata.num_rows, "hist": hist, "edges": edges, "pool_sources": pool_src, "wins": wins,
           "top_ids": top.ids.tolist(), "top_scores": top.scores.tolist(),
           "top_sources": top.extra.get("source", np.empty(0)).tolist(),
           "bottom": list(zip(bottom.ids.tolist(), (-bottom.scores).tolist()))}
    if rand is not None:
        out["random_ids"] = rand.ids.tolist()
        out["random_sources"] = rand.extra.get("source", np.empty(0)).tolist()
    return out


def top_by_score(scores_path: Path, k: int, block_rows: int) -> tuple[list[str], list[str]]:
    """Ids and sources of a score file's top k (score desc, id asc: `select`'s order)."""
    import pyarrow.parquet as pq
    top = TopK(k)
    for b in pq.ParquetFile(scores_path).iter_batches(batch_size=block_rows, columns=["id", "source", "score"]):
        top.push(b.column("score").to_numpy().astype(np.float64), np.asarray(b.column("id").to_pylist(), dtype=str),
                 source=np.asarray(b.column("source").to_pylist(), dtype=object))
    return top.ids.tolist(), top.extra.get("source", np.empty(0)).tolist()


def random_baseline(root: Path, run: Path | None, task: str, k: int, st: dict[str, Any], seed: int,
                    block_rows: int) -> dict[str, Any]:
    """The random selection of the same size k: the run's `random` selector when it has one (its top
    k: the same ids it would select at that k), else the seeded sample computed over the scored ids."""
    rdir = run / "selectors" / RANDOM_SELECTOR if run is not None else None
    if rdir is not None and rdir.resolve() != root.resolve() and (rdir / "score_summary.json").exists():
        rsum = _read_json(rdir / "score_summary.json") or {}
        rtask = task if task in rsum.get("tasks", {}) else next(iter(rsum.get("tasks", {})), None)
        if rtask is not None and (rdir / rtask / "scores.parquet").exists():
            ids, sources = top_by_score(rdir / rtask / "scores.parquet", k, block_rows)
            seed_used = _yaml(rdir / "selector.config.yaml").get("seed", rsum.get("seed"))
            return {"ids": ids, "sources": sources,
                    "how": f"the run's <code>random</code> selector ({_e(rdir)}, seed {_e(seed_used)}): "
                           f"its top {k} by score, the sample it selects at that size"}
    return {"ids": st["random_ids"], "sources": st["random_sources"],
            "how": f"a seeded uniform sample of {k} of the {st['n']} scored examples (seed {seed}: the ids "
                   f"<code>less-ray selector random --seed {seed}</code> selects at that size)"}


def conversation_texts(pool: str | None, ids: set[str]) -> tuple[dict[str, tuple], str | None]:
    """id -> messages for `ids`, in one pass over the pool file (an unreadable pool is reported)."""
    if not pool or not ids:
        return {}, None if pool else "no pool file is recorded or given"
    out = {}
    try:
        for rec in pool_records(pool):
            if rec.id in ids:
                out[rec.id] = rec.messages
    except (OSError, ValueError) as err:
        return out, f"reading the pool file failed: {err}"
    return out, None


def near_duplicates(items: list[tuple[str, Any]], cfg: ReportConfig, of: int | None = None) -> dict[str, Any]:
    """Keep-first MinHash near-duplicates (the `dedup` stage's, in process) among `items` (id,
    messages; those without text are left out) in their order: how many duplicate an earlier one,
    and the pairs. `of`: the size of the set `items` begins (default: all of it)."""
    from ..selection.minhash import NearDuplicateIndex, conversation_text, signatures
    items = [(i, m) for i, m in items if m]
    sig = signatures([conversation_text(m) for _, m in items], cfg.dedup_ngram, cfg.dedup_num_perm, seed=1)
    index = NearDuplicateIndex(cfg.dedup_threshold, cfg.dedup_num_perm, seed=1)
    pairs = []
    for (rid, _), h in zip(items, sig):
        hit = index.add(rid, h)
        if hit is not None:
            pairs.append((rid, hit[0], hit[1]))
    return {"checked": len(items), "of": len(items) if of is None else of, "duplicates": len(pairs), "pairs": pairs,
            "groups": len({p[1] for p in pairs})}


# ---- metadata and evals -----------------------------------------------------------------------

def run_metadata(root: Path, run: Path | None, summary: dict[str, Any], pool: str | None) -> dict[str, Any]:
    """Selector, model, files and hashes, configs, dates and versions, from what the folder records."""
    from ..store import library_versions
    manifests = root / "manifests"
    pool_mans = sorted(manifests.glob("pool_ckpt*.json"), key=lambda p: int(p.stem.rsplit("ckpt", 1)[1] or 0))
    pool_mans = [m for m in (_read_json(p) for p in pool_mans) if isinstance(m, dict)]
    sel_cfg = _yaml(root / "selector.config.yaml")
    pipe_cfg = _yaml(run / "pipeline.config.yaml") if run else {}
    selector = summary.get("selector") or ("less" if "checkpoints" in summary else "unknown")
    rows: list[tuple[str, str]] = [("selector", _e(selector)), ("score folder", f"<code>{_e(root.resolve())}</code>")]
    if run is not None:
        rows.append(("pipeline run folder", f"<code>{_e(run)}</code>"))
    rows.append(("scored", _e(_mtime(root / "score_summary.json"))))
    rows.append(("report written", _e(_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))))

    model = (pool_mans[0].get("model") if pool_mans else None) or sel_cfg.get("model") or sel_cfg.get("base_model") \
        or pipe_cfg.get("base_model")
    if model:
        rows.append(("model", f"<code>{_e(model)}</code>"))
    if sel_cfg.get("encoder") or summary.get("encoder"):
        rows.append(("encoder", _e(summary.get("encoder") or sel_cfg.get("encoder"))))
    if sel_cfg.get("checkpoint"):
        rows.append(("warmup checkpoint", f"<code>{_e(sel_cfg['checkpoint'])}</code>"))
    if pool_mans:
        m0 = pool_mans[0]
        proj = m0.get("projection") or {}
        rows.append(("gradient features", _e(f"{m0.get('kind')} (pool) / sgd (targets), {proj.get('type')} projection "
                                             f"to d={proj.get('dim')} (seed {proj.get('seed')}), "
                                             f"normalised {m0.get('normalized')}, {m0.get('dtype')}")))
        ck = "".join(f"<tr><td>{i}</td><td><code>{_e(m.get('checkpoint'))}</code></td>"
                     f"<td><code>{_e(m.get('checkpoint_hash'))}</code></td><td>{_e(_num(m.get('avg_lr'), '.4g'))}</td>"
                     f"<td>{_e(round(w, 4) if isinstance(w, (int, float)) else w)}</td></tr>"
                     for i, (m, w) in enumerate(zip(pool_mans, summary.get("weights") or [None] * len(pool_mans))))
        rows.append(("checkpoints", "<table><tr><th>#</th><th>checkpoint</th><th>content hash</th><th>avg lr</th>"
                                    f"<th>weight</th></tr>{ck}</table>"))

    # the files: the hash recorded when they were read, beside their hash now
    files: list[tuple[str, str | None, str | None]] = []  # (role, path, recorded sha256)
    pool_recorded = (pool_mans[0].get("input") or {}).get("sha256") if pool_mans else summary.get("pool_sha256")
    if isinstance(pool, list):  # a store grown by `extract --append`: its files in order
        appended = ((pool_mans[0].get("input") or {}).get("appended") or []) if pool_mans else []
        recorded = [pool_recorded] + [a.get("sha256") for a in appended]
        files += [("pool" if i == 0 else f"pool (appended {i})", p, recorded[i] if i < len(recorded) else None)
                  for i, p in enumerate(pool)]
    else:
        files.append(("pool", pool, pool_recorded))
    targets: dict[str, tuple[str | None, str | None]] = {}
    for p in sorted(manifests.glob("*_ckpt0.json")):
        if p.name.startswith("pool_"):
            continue
        m = _read_json(p) or {}
        targets[p.name[: -len("_ckpt0.json")]] = ((m.get("input") or {}).get("path"), (m.get("input") or {}).get("sha256"))
    for t, path in (sel_cfg.get("targets") or {}).items():
        targets.setdefault(t, (path, None))
    if not targets:  # a task-agnostic selector: the run's targets, for the record
        targets = {t: (path, None) for t, path in (pipe_cfg.get("targets") or {}).items()}
    files += [(f"targets: {t}", path, rec) for t, (path, rec) in sorted(targets.items())]
    frows = []
    for role, path, rec in files:
        now = _sha256(path)
        if rec and now:
            state = "unchanged since scoring" if rec == now else "<b>CHANGED since scoring</b>"
        elif now:
            state = "hash now (none recorded)"
        elif path:
            state = "<b>file not readable now</b>"
        else:
            state = "not recorded"
        frows.append(f"<tr><td>{_e(role)}</td><td><code>{_e(path or '')}</code></td>"
                     f"<td><code>{_e(rec or now or '')}</code></td><td>{state}</td></tr>")
    rows.append(("data files", "<table><tr><th>role</th><th>file</th><th>sha256</th><th></th></tr>"
                               f"{''.join(frows)}</table>"))

    versions = {k: v for m in pool_mans[:1] for k, v in (m.get("versions") or {}).items()}
    now_versions = library_versions()
    vrow = ", ".join(f"{_e(k)} {_e(v)}" for k, v in now_versions.items())
    if versions and versions != now_versions:
        vrow = (f"at extraction: {', '.join(f'{_e(k)} {_e(v)}' for k, v in versions.items())}<br>"
                f"at report: {vrow}")
    rows.append(("library versions", vrow))

    configs = []
    for label, path in ((("pipeline.config.yaml", run / "pipeline.config.yaml") if run else (None, None)),
                        ("score.config.yaml", root / "score.config.yaml"),
                        ("selector.config.yaml", root / "selector.config.yaml")):
        text = _read_text(path) if path is not None else None
        if text:
            configs.append((label, str(path), text))
    for task in summary.get("tasks", {}):
        text = _read_text(root / task / "select.config.yaml")
        if text:
            configs.append((f"{task}/select.config.yaml", str(root / task / "select.config.yaml"), text))
    extra = {k: v for k, v in summary.items() if k not in ("tasks", "actor_peak_rss_mb", "seconds", "select")
             and not isinstance(v, (dict, list)) and k not in ("checkpoints", "weights")}
    if extra:
        rows.append(("score summary", _e(", ".join(f"{k}: {v}" for k, v in extra.items()))))
    return {"selector": selector, "rows": rows, "configs": configs}


def eval_files(run: Path | None, given: list[str]) -> list[Path]:
    out: list[Path] = []
    if run is not None and (run / "eval").is_dir():
        out += sorted((run / "eval").rglob("*.json"))
    for g in given:
        p = Path(g)
        out += sorted(p.glob("*.json")) if p.is_dir() else [p]
    seen, uniq = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            uniq.append(p)
    return uniq


def eval_rows(path: Path) -> list[dict[str, Any]]:
    """Rows (model, task, metric, score, n, more) of one eval JSON: `less-ray eval`'s {model, tasks},
    a mapping of label -> such results, or any mapping of numbers."""
    data = _read_json(path)
    if data is None:
        return [{"model": "", "task": "", "metric": "unreadable JSON", "score": None, "n": None, "more": ""}]

    def one(label: str, d: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for task, r in (d.get("tasks") or {}).items():
            if not isinstance(r, dict):
                rows.append({"model": label, "task": task, "metric": "", "score": r, "n": None, "more": ""})
                continue
            more = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k not in ("score", "n", "seconds")}
            metric = str(r.get("metric", "")) + (" (lower is better)" if r.get("lower_is_better") else "")
            rows.append({"model": label, "task": task, "metric": metric, "score": r.get("score"),
                         "n": r.get("n"), "more": ", ".join(f"{k} {_num(v)}" for k, v in more.items())})
        return rows

    if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
        return one(str(data.get("model", path.stem)), data)
    if isinstance(data, dict) and data and all(isinstance(v, dict) and isinstance(v.get("tasks"), dict)
                                               for v in data.values()):
        return [r for label, d in data.items() for r in one(str(d.get("model", label)), d)]
    flat = []

    def walk(prefix: str, x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            flat.append({"model": path.stem, "task": prefix, "metric": "", "score": x, "n": None, "more": ""})
    walk("", data)
    return flat


def result_tables(path: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """The title, note and tables of one `ReportConfig.tables` file; a file of another shape is an error
    naming the file and the key, not a page with a silently missing section."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a tables file: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise ValueError(f"{path}: key 'tables': expected a list of {{caption, columns, rows}}")
    for i, t in enumerate(data["tables"]):
        cols, rows = (t.get("columns"), t.get("rows")) if isinstance(t, dict) else (None, None)
        if not isinstance(cols, list) or not isinstance(rows, list):
            raise ValueError(f"{path}: tables[{i}]: expected 'columns' and 'rows' lists")
        for j, r in enumerate(rows):
            if not isinstance(r, list) or len(r) != len(cols):
                raise ValueError(f"{path}: tables[{i}].rows[{j}]: expected a list of {len(cols)} cells")
    return str(data.get("title") or path.name), str(data.get("note") or ""), data["tables"]


def _tables_html(path: Path) -> str:
    title, note, tables = result_tables(path)
    parts = [f"<h2>{_e(title)}</h2>" + (f"<p>{_e(note)}</p>" if note else "")
             + f"<p class='sub'>From <code>{_e(path)}</code></p>"]
    for t in tables:
        num = lambda c: isinstance(c, (int, float)) and not isinstance(c, bool)  # noqa: E731
        parts.append(f"<h3>{_e(t.get('caption', ''))}</h3><table><tr>"
                     + "".join(f"<th>{_e(c)}</th>" for c in t["columns"]) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td class='num'>{_e(_num(c))}</td>" if num(c) else
                                                f"<td>{_e('—' if c is None else c)}</td>" for c in r) + "</tr>"
                               for r in t["rows"]) + "</table>")
        if t.get("note"):
            parts.append(f"<p class='sub'>{_e(t['note'])}</p>")
    return "".join(parts)


def _eval_label(path: Path, run: Path | None) -> str:
    try:
        return str(path.resolve().relative_to(run / "eval")) if run is not None else path.name
    except ValueError:
        return path.name


def _eval_role(path: Path, run: Path | None) -> str:
    """In a run folder: eval/<task>.json is the model trained on the task's selection;
    eval/<task>.base.json (or eval/base/<task>.json) the base model on the same eval."""
    try:
        rel = path.resolve().relative_to(run / "eval") if run is not None else None
    except ValueError:
        rel = None
    if rel is None:
        return "given"
    if (len(rel.parts) > 1 and rel.parts[0] == "base") or rel.name.endswith(".base.json"):
        return "base model"
    if len(rel.parts) == 1:
        return f"trained on the {rel.name[:-len('.json')]} selection"
    return str(rel.parent)


def _conversation(messages: Any) -> str:
    return "\n".join(f"[{m['role']}] {m['content']}" for m in (messages or []))


def _num(x: Any, fmt: str = ".4f") -> str:
    if isinstance(x, float):
        return format(x, fmt)
    return "" if x is None else str(x)


# ---- plots ------------------------------------------------------------------------------------

def _plots(task: str, st: dict[str, Any], sel: Counter, rnd: Counter, selector: str = "less") -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_sel, n_rnd = max(1, sum(sel.values())), max(1, sum(rnd.values()))
    share = {s: max(st["pool_sources"][s] / st["n"], sel[s] / n_sel) for s in st["pool_sources"]}
    sources = sorted(share, key=lambda s: (-share[s], s))[:30]
    x = np.arange(len(sources))
    fig, ax = plt.subplots(figsize=(max(5.6, 0.45 * len(sources)), 3.4))
    ax.bar(x - 0.27, [st["pool_sources"][s] / st["n"] for s in sources], 0.27, label="pool", color="#9e9e9e")
    ax.bar(x, [rnd[s] / n_rnd for s in sources], 0.27, label="random baseline", color="#f2a541")
    ax.bar(x + 0.27, [sel[s] / n_sel for s in sources], 0.27, label="selected", color="#2a6fb0")
    ax.set_xticks(x, sources, rotation=50, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(f"{task}: share per source")
    ax.legend(fontsize=8)
    out = [_png(fig)]
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    ax.stairs(st["hist"], st["edges"], fill=True, color="#2a6fb0")
    if st.get("cut") is not None:
        ax.axvline(st["cut"], color="#c0392b", ls="--", lw=1, label="lowest selected score")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{task}: score histogram over the pool")
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    out.append(_png(fig))
    wins = st["wins"].most_common(30)
    if len(wins) > 1:
        fig, ax = plt.subplots(figsize=(max(5.2, 0.4 * len(wins)), 3.0))
        ax.bar(range(len(wins)), [c for _, c in wins], color="#7a5195")
        ax.set_xticks(range(len(wins)), [w or "(none)" for w, _ in wins], rotation=50, ha="right", fontsize=8)
        what = "K-Means cluster" if selector.startswith("kcenter") else "best-matching target subtask"
        ax.set_title(f"{task}: {what}, count over the pool")
        out.append(_png(fig))
    return out


# ---- the page ---------------------------------------------------------------------------------

HOW_TO_READ = (
    "<p class='how'><b>How to read this.</b> A selector scored every example of the candidate pool for "
    "each task; the top <i>k</i> by score is the training selection. <b>Composition</b> puts, per source "
    "(the data set an example came from), its share of the pool, of a <b>random</b> sample of the same "
    "size and of the <b>selection</b> side by side: a targeted selector that works lifts the sources that "
    "resemble the task's targets well above their pool and random shares; a selection that looks like the "
    "random column found nothing task-specific. <b>Near-duplicates</b> are selected examples whose text "
    "almost repeats a higher-ranked selected one (MinHash word 5-gram Jaccard): many of them waste the "
    "budget (try <code>less-ray dedup</code> or <code>select --diverse</code>). The <b>histogram</b> "
    "shows where the cut falls, the top and bottom examples what the selector likes most and least. "
    "<b>Eval</b> scores mean something only against another model on the same eval (the base model, or one "
    "trained on the random selection). <b>Metadata</b> says what produced the selection; a file whose hash "
    "changed since scoring is no longer the one the selection describes.</p>")


STYLE = ("<style>body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1150px;"
         "margin:16px auto;padding:0 12px;color:#222;line-height:1.35}"
         "h1{font-size:24px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #2a6fb0;"
         "padding-bottom:2px;margin-top:28px}h3{font-size:16px;margin:16px 0 6px}"
         "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 7px;"
         "font-size:13px;vertical-align:top;text-align:left}th{background:#eef3f8}"
         "td.num{text-align:right;font-variant-numeric:tabular-nums}"
         "table.meta>tbody>tr>th{width:160px}code{font-size:12px;word-break:break-all}"
         "pre{white-space:pre-wrap;font-size:12px;background:#f6f6f6;padding:4px;margin:2px 0;max-height:260px;"
         "overflow:auto}img{display:block;margin:8px 0;max-width:100%}.plots{display:flex;flex-wrap:wrap;gap:8px;"
         "align-items:flex-start}"
         ".how{background:#f3f7fb;border-left:4px solid #2a6fb0;padding:8px 12px;font-size:14px}"
         ".sub{color:#555;font-size:13px}.up{color:#1a7f37;font-weight:bold}.down{color:#b42318}"
         "details{margin:4px 0}summary{cursor:pointer;font-size:14px}</style>")


def _composition_table(st: dict[str, Any], sel: Counter, rnd: Counter) -> str:
    n_sel, n_rnd = max(1, sum(sel.values())), max(1, sum(rnd.values()))
    order = sorted(st["pool_sources"], key=lambda s: (-sel[s], -st["pool_sources"][s], s))
    rows = []
    for s in order:
        pool_share, sel_share = st["pool_sources"][s] / st["n"], sel[s] / n_sel
        lift = sel_share / pool_share if pool_share else math.inf
        cls = "up" if lift >= 1.5 and sel[s] else ("down" if lift <= 0.5 else "")
        rows.append(f"<tr><td>{_e(s)}</td><td class='num'>{st['pool_sources'][s]}</td>"
                    f"<td class='num'>{pool_share:.1%}</td><td class='num'>{rnd[s]}</td>"
                    f"<td class='num'>{rnd[s] / n_rnd:.1%}</td><td class='num'>{sel[s]}</td>"
                    f"<td class='num'>{sel_share:.1%}</td><td class='num {cls}'>{lift:.2f}×</td></tr>")
    return ("<table class='composition'><tr><th>source</th><th>pool</th><th>pool share</th><th>random</th>"
            "<th>random share</th><th>selected</th><th>selected share</th><th>selected / pool share</th></tr>"
            f"{''.join(rows)}<tr><th>total</th><td class='num'>{st['n']}</td><td class='num'>100%</td>"
            f"<td class='num'>{sum(rnd.values())}</td><td></td><td class='num'>{sum(sel.values())}</td><td></td>"
            "<td></td></tr></table>")


def _dup_text(d: dict[str, Any] | None, what: str) -> str:
    if d is None:
        return ""
    if not d["checked"]:
        return f"{what}: not checked (no example texts)"
    frac = d["duplicates"] / d["checked"] if d["checked"] else 0.0
    return (f"{what}: <b>{d['duplicates']}</b> of {d['checked']} ({frac:.1%}) duplicate a higher-ranked one "
            f"({d['groups']} distinct originals)" + (f" <i>(only {d['checked']} of {d['of']} checked: dedup_max, or texts missing)</i>"
                                                     if d["checked"] < d["of"] else ""))


def _rule_text(spec: dict[str, Any], k: int, n: int, from_file: bool) -> str:
    big_n, what = spec.get("N", n), spec.get("N_is", "examples scored for this task")
    if spec["top_n"] is not None:
        base = f"k = min(n, N) = min({spec['top_n']}, {big_n}) = {spec['k_rule']}"
    else:
        base = f"k = floor(p·N) = floor({spec['top_p']:g} · {big_n}) = {spec['k_rule']}"
    base += f", with N = {big_n} {what} (the denominator)"
    if big_n != n:
        base += f", at most the {n} examples scored"
    if from_file and k != spec["k_rule"]:
        base += f"; the selection file holds k = {k}"
    rec = spec["rule"]
    if rec is None:
        return base
    if isinstance(rec, dict) and "formula" in rec:
        shown = _e(rec["formula"])
        given = [f"{a} = {rec[a]:g}" if isinstance(rec[a], float) else f"{a} = {rec[a]}"
                 for a in ("p", "n", "N") if rec.get(a) is not None]
        if given:
            shown += " with " + _e(", ".join(given))
        if rec.get("N_is"):
            shown += f" (N: {_e(rec['N_is'])})"
        if rec.get("scored") is not None:
            shown += f"; {_e(rec['scored'])} examples scored"
        if rec.get("k") is not None:
            shown += f"; k = {_e(rec['k'])}"
        rest = {a: b for a, b in rec.items() if a not in ("formula", "p", "n", "N", "N_is", "scored", "k")}
        if rest:
            shown += " <span class='sub'>(" + _e(", ".join(f"{a}: {b}" for a, b in rest.items())) + ")</span>"
    elif isinstance(rec, dict):
        shown = _e(", ".join(f"{a} = {b}" for a, b in rec.items()))
    else:
        shown = _e(rec)
    if from_file and isinstance(rec, dict) and rec.get("k") is not None and rec["k"] != k:
        shown += f"; <b>the selection file holds {k}</b>"
    return f"as <code>select</code> recorded it: {shown}"


def render_task(task: str, root: Path, run: Path | None, spec: dict[str, Any], cfg: ReportConfig,
                selected_records: list[dict[str, Any]] | None, seed: int) -> dict[str, Any]:
    k = len(selected_records) if selected_records is not None else spec["k_rule"]
    need_random = not (run is not None and (run / "selectors" / RANDOM_SELECTOR / "score_summary.json").exists()
                       and (run / "selectors" / RANDOM_SELECTOR).resolve() != root.resolve())
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

    from ..storage import require_local
    require_local(cfg.scores, "report: scores")
    root = Path(cfg.scores)
    extra_tables = [_tables_html(Path(p)) for p in cfg.tables]  # a malformed file fails before the work
    summary = json.loads((root / "score_summary.json").read_text())
    run = run_folder(root)
    try:
        pool = pool_file(cfg.scores, cfg.pool)
    except ValueError:
        pool = None
    if pool is None and run is not None:
        pool = _yaml(run / "pipeline.config.yaml").get("pool")
    meta = run_metadata(root, run, summary, pool)

    seed = cfg.random_seed  # the computed baseline's; for the random selector itself, another draw
    if meta["selector"] == RANDOM_SELECTOR and _yaml(root / "selector.config.yaml").get("seed", summary.get("seed")) == seed:
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
        tasks.append(render_task(task, root, run, spec, cfg, selected, seed))

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
    for t in tasks:
        for r in t["selected"]:
            if r["messages"] is None:
                r["messages"] = texts.get(r["id"])
        if cfg.dedup_threshold is not None:
            t["dup_sel"] = near_duplicates([(r["id"], r["messages"]) for r in t["selected"][:dup_n]], cfg,
                                           len(t["selected"]))
            t["dup_rnd"] = near_duplicates([(i, texts.get(i)) for i in t["random"]["ids"][:dup_n]], cfg,
                                           len(t["random"]["ids"]))

    title = f"Selection report: {meta['selector']}"
    parts = [f"<h1>{_e(title)}</h1>"
             f"<p class='sub'>{summary.get('pool_rows', '?')} pool examples scored, "
             f"{len(tasks)} task(s): {_e(', '.join(t['task'] for t in tasks))}"
             + (f"; {summary['checkpoints']} checkpoints, weights "
                f"{_e([round(w, 4) for w in summary.get('weights', [])])}" if "checkpoints" in summary else "")
             + "</p>", HOW_TO_READ]
    if pool_problem:
        parts.append(f"<p><b>Note:</b> {_e(pool_problem)}: example texts and near-duplicate counts are "
                     "incomplete.</p>")

    # summary of every task's selection, one line each
    rows = []
    for t in tasks:
        sel = Counter(r["source"] for r in t["selected"])
        top_src = ", ".join(f"{_e(s)} {c / max(1, t['k']):.0%}" for s, c in sel.most_common(3))
        f = t["spec"]["file"]
        rows.append(f"<tr><td>{_e(t['task'])}</td><td class='num'>{t['k']}</td><td class='num'>{t['st']['n']}</td>"
                    f"<td>{top_src}</td><td><code>{_e(f.resolve() if f else '(not written: run select)')}</code></td></tr>")
    parts.append("<h2>Selections</h2><table><tr><th>task</th><th>k</th><th>N scored</th><th>top sources</th>"
                 f"<th>selection file</th></tr>{''.join(rows)}</table>")

    # evals
    ev = sorted(((p, r) for p in eval_files(run, cfg.eval) for r in eval_rows(p)), key=lambda x: (x[1]["task"], x[0].name))
    parts.append("<h2>Eval results</h2>")
    if ev:
        parts.append("<table class='eval'><tr><th>result file</th><th>which model</th><th>model</th><th>eval task</th>"
                     "<th>metric</th><th>score</th><th>n</th><th>more</th></tr>" + "".join(
                         f"<tr><td><code>{_e(_eval_label(p, run))}</code></td><td>{_e(_eval_role(p, run))}</td>"
                         f"<td><code>{_e(r['model'])}</code></td>"
                         f"<td>{_e(r['task'])}</td><td>{_e(r['metric'])}</td><td class='num'>{_e(_num(r['score']))}</td>"
                         f"<td class='num'>{_e(_num(r['n']))}</td><td>{_e(r['more'])}</td></tr>" for p, r in ev)
                     + "</table><p class='sub'>From: " + ", ".join(f"<code>{_e(p)}</code>" for p in
                                                                  dict.fromkeys(p for p, _ in ev)) + "</p>")
    else:
        parts.append("<p class='sub'>No eval results: none under <code>&lt;run&gt;/eval/</code> and none given "
                     "(<code>ReportConfig.eval</code>).</p>")

    parts += extra_tables

    parts.append("<h2>Run metadata</h2><table class='meta'>" + "".join(
        f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in meta["rows"]) + "</table>")
    for label, path, text in meta["configs"]:
        parts.append(f"<details><summary>{_e(label)} <span class='sub'>{_e(path)}</span></summary>"
                     f"<pre>{_e(text)}</pre></details>")
    for t in tasks:
        st, spec = t["st"], t["spec"]
        sel = Counter(r["source"] for r in t["selected"])
        rnd = Counter(t["random"]["sources"])
        parts.append(f"<h2>Task: {_e(t['task'])}</h2>")
        f = spec["file"]
        parts.append("<table class='meta'>"
                     f"<tr><th>selection file</th><td><code>{_e(f.resolve() if f else '')}</code>"
                     + ("" if f else f"(no <code>{_e(spec['name'])}</code>: <code>less-ray select</code> has not "
                        "written it; the top k by score is described)") + "</td></tr>"
                     f"<tr><th>selection size</th><td>{_rule_text(spec, t['k'], st['n'], f is not None)}</td></tr>"
                     f"<tr><th>random baseline</th><td>{t['random']['how']}</td></tr>")
        if "dup_sel" in t:
            parts.append(f"<tr><th>near-duplicates</th><td>{_dup_text(t['dup_sel'], 'selection')}; "
                         f"{_dup_text(t['dup_rnd'], 'random baseline')} <span class='sub'>(MinHash, word "
                         f"{cfg.dedup_ngram}-grams, estimated Jaccard ≥ {cfg.dedup_threshold:g}, "
                         f"{cfg.dedup_num_perm} permutations)</span></td></tr>")
        parts.append("</table>")
        parts.append("<h3>Composition by source</h3>" + _composition_table(st, sel, rnd))
        parts.append("<div class='plots'>" + "".join(f'<img alt="{_e(t["task"])} plot" src="data:image/png;base64,{p}">'
                                                     for p in _plots(t["task"], st, sel, rnd, meta["selector"])) + "</div>")
        if t.get("dup_sel") and t["dup_sel"]["pairs"]:
            parts.append("<details><summary>near-duplicate pairs in the selection (first 10)</summary><table>"
                         "<tr><th>selected id</th><th>duplicates (kept, higher-ranked)</th><th>est. Jaccard</th></tr>"
                         + "".join(f"<tr><td><code>{_e(a)}</code></td><td><code>{_e(b)}</code></td>"
                                   f"<td class='num'>{j:.2f}</td></tr>" for a, b, j in t["dup_sel"]["pairs"][:10])
                         + "</table></details>")
        shown_top = [(r["id"], r["score"], r["messages"]) for r in t["selected"][: cfg.examples]]
        shown_bottom = [(i, s, texts.get(i)) for i, s in st["bottom"]]
        for title_, items in (("Top examples (selected)", shown_top), ("Bottom examples", shown_bottom)):
            parts.append(f"<h3>{title_}</h3><ol>" + "".join(
                f"<li><b>{_e(_num(score))}</b> <code>{_e(i)}</code><pre>{_e(_conversation(msgs)[:1500])}</pre></li>"
                for i, score, msgs in items) + "</ol>")


    out = Path(cfg.out) if cfg.out else root / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>{STYLE}</head>"
                   f"<body>{''.join(parts)}</body></html>", encoding="utf-8")
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    return out

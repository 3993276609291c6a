"""What the report reads: the score folder's files, its selection, its run folder, the pool's texts,
the eval results and result tables, as plain data (no HTML: that is `render`'s)."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from ..select import SelectConfig, pool_records, selection_count, selection_name


def read_json(path: Path) -> Any:
    """The file's JSON, or None if it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def read_yaml(path: Path) -> dict[str, Any]:
    """The file's YAML mapping, or {} if it is missing, not YAML or not a mapping."""
    import yaml
    text = read_text(path)
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
    from ...artifact import sha256_file
    try:
        return sha256_file(path) if path else None
    except OSError:
        return None


def _utc(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _mtime(path: Path) -> str | None:
    try:
        return _utc(_dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc))
    except OSError:
        return None


# ---- per task: which selection, its records, the pool's texts -----------------------------------

def selection_spec(task_dir: Path, n: int, top_p: float | None, n_pool=None) -> dict[str, Any]:
    """What selection to describe: p (or n), k, the selection file if `select` wrote it, and the
    size rule `select` recorded (if it records one). `n`: rows scored; `n_pool()`: the pool's N
    (a callable: counted only when no selection records k), as `select` counts k over N."""
    recorded = read_yaml(task_dir / "select.config.yaml")
    top_n = None
    if top_p is None:
        top_n = recorded.get("top_n")
        top_p = recorded.get("top_p") if recorded else None
        top_p = 0.05 if top_p is None and top_n is None else top_p
    name = selection_name(SelectConfig(top_p=top_p, top_n=top_n))
    path = task_dir / name
    manifest = read_json(task_dir / "selection.json")  # select's manifest: file, k, the size rule
    if isinstance(manifest, dict) and manifest.get("file") == name and path.exists() and "k" in manifest:
        return {"top_p": top_p, "top_n": top_n, "k_rule": int(manifest["k"]), "file": path, "name": name,
                "rule": manifest.get("rule"), "N": n, "N_is": "examples scored for this task"}
    # no selection of this size: describe what select would pick (its rule, over the pool's N,
    # at most the rows scored)
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


def conversation_texts(pool: str | list[str] | None, ids: set[str]) -> tuple[dict[str, tuple], str | None]:
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


# ---- metadata ---------------------------------------------------------------------------------

def run_metadata(root: Path, run: Path | None, summary: dict[str, Any], pool: str | list[str] | None) -> dict[str, Any]:
    """Selector, model, files and hashes, configs, dates and versions, from what the folder records:
    {selector, root, run, scored, written, model, encoder, checkpoint, pool_manifests, weights,
    files: [(role, path, sha256 recorded, sha256 now)], versions: (at extraction, now),
    configs: [(label, path, text)], extra: the score summary's other scalars}."""
    from ...store import library_versions
    manifests = root / "manifests"
    pool_mans = sorted(manifests.glob("pool_ckpt*.json"), key=lambda p: int(p.stem.rsplit("ckpt", 1)[1] or 0))
    pool_mans = [m for m in (read_json(p) for p in pool_mans) if isinstance(m, dict)]
    sel_cfg = read_yaml(root / "selector.config.yaml")
    pipe_cfg = read_yaml(run / "pipeline.config.yaml") if run else {}
    selector = summary.get("selector") or ("less" if "checkpoints" in summary else "unknown")
    model = (pool_mans[0].get("model") if pool_mans else None) or sel_cfg.get("model") or sel_cfg.get("base_model") \
        or pipe_cfg.get("base_model")

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
        m = read_json(p) or {}
        targets[p.name[: -len("_ckpt0.json")]] = ((m.get("input") or {}).get("path"), (m.get("input") or {}).get("sha256"))
    for t, path in (sel_cfg.get("targets") or {}).items():
        targets.setdefault(t, (path, None))
    if not targets:  # a task-agnostic selector: the run's targets, for the record
        targets = {t: (path, None) for t, path in (pipe_cfg.get("targets") or {}).items()}
    files += [(f"targets: {t}", path, rec) for t, (path, rec) in sorted(targets.items())]

    configs = []
    for label, path in ((("pipeline.config.yaml", run / "pipeline.config.yaml") if run else (None, None)),
                        ("score.config.yaml", root / "score.config.yaml"),
                        ("selector.config.yaml", root / "selector.config.yaml")):
        text = read_text(path) if path is not None else None
        if text:
            configs.append((label, str(path), text))
    for task in summary.get("tasks", {}):
        text = read_text(root / task / "select.config.yaml")
        if text:
            configs.append((f"{task}/select.config.yaml", str(root / task / "select.config.yaml"), text))
    extra = {k: v for k, v in summary.items() if k not in ("tasks", "actor_peak_rss_mb", "seconds", "select")
             and not isinstance(v, (dict, list)) and k not in ("checkpoints", "weights")}
    return {"selector": selector, "root": root.resolve(), "run": run, "scored": _mtime(root / "score_summary.json"),
            "written": _utc(_dt.datetime.now(_dt.timezone.utc)), "model": model,
            "encoder": summary.get("encoder") or sel_cfg.get("encoder"), "checkpoint": sel_cfg.get("checkpoint"),
            "pool_manifests": pool_mans, "weights": summary.get("weights"),
            "files": [(role, path, rec, _sha256(path)) for role, path, rec in files],
            "versions": ({k: v for m in pool_mans[:1] for k, v in (m.get("versions") or {}).items()},
                         library_versions()),
            "configs": configs, "extra": extra}


# ---- evals and result tables ------------------------------------------------------------------

def eval_files(run: Path | None, given: list[str]) -> list[Path]:
    """The eval JSON files: `<run>/eval/**/*.json`, then the given files and folders' `*.json`, each once."""
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
    """Rows (model, task, metric, score, n, more: {name: number}) of one eval JSON: `less-ray eval`'s
    {model, tasks}, a mapping of label -> such results, or any mapping of numbers."""
    data = read_json(path)
    if data is None:
        return [{"model": "", "task": "", "metric": "unreadable JSON", "score": None, "n": None, "more": {}}]

    def one(label: str, d: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for task, r in (d.get("tasks") or {}).items():
            if not isinstance(r, dict):
                rows.append({"model": label, "task": task, "metric": "", "score": r, "n": None, "more": {}})
                continue
            more = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k not in ("score", "n", "seconds")}
            metric = str(r.get("metric", "")) + (" (lower is better)" if r.get("lower_is_better") else "")
            rows.append({"model": label, "task": task, "metric": metric, "score": r.get("score"),
                         "n": r.get("n"), "more": more})
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
            flat.append({"model": path.stem, "task": prefix, "metric": "", "score": x, "n": None, "more": {}})
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

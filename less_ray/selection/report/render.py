"""The report's HTML: one self-contained page (styles inline, PNG plots as data URLs, nothing
fetched from outside) from what `collect` read and `statistics` computed."""
from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .collect import result_tables


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, fmt: str = ".4f") -> str:
    if isinstance(x, float):
        return format(x, fmt)
    return "" if x is None else str(x)


def _conversation(messages: Any) -> str:
    return "\n".join(f"[{m['role']}] {m['content']}" for m in (messages or []))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


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


# ---- metadata, evals, result tables -----------------------------------------------------------

def metadata_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, HTML) rows of the run metadata table (`collect.run_metadata`'s data)."""
    run, pool_mans = meta["run"], meta["pool_manifests"]
    rows: list[tuple[str, str]] = [("selector", _e(meta["selector"])), ("score folder", f"<code>{_e(meta['root'])}</code>")]
    if run is not None:
        rows.append(("pipeline run folder", f"<code>{_e(run)}</code>"))
    rows.append(("scored", _e(meta["scored"])))
    rows.append(("report written", _e(meta["written"])))
    if meta["model"]:
        rows.append(("model", f"<code>{_e(meta['model'])}</code>"))
    if meta["encoder"]:
        rows.append(("encoder", _e(meta["encoder"])))
    if meta["checkpoint"]:
        rows.append(("warmup checkpoint", f"<code>{_e(meta['checkpoint'])}</code>"))
    if pool_mans:
        m0 = pool_mans[0]
        proj = m0.get("projection") or {}
        rows.append(("gradient features", _e(f"{m0.get('kind')} (pool) / sgd (targets), {proj.get('type')} projection "
                                             f"to d={proj.get('dim')} (seed {proj.get('seed')}), "
                                             f"normalised {m0.get('normalized')}, {m0.get('dtype')}")))
        ck = "".join(f"<tr><td>{i}</td><td><code>{_e(m.get('checkpoint'))}</code></td>"
                     f"<td><code>{_e(m.get('checkpoint_hash'))}</code></td><td>{_e(_num(m.get('avg_lr'), '.4g'))}</td>"
                     f"<td>{_e(round(w, 4) if isinstance(w, (int, float)) else w)}</td></tr>"
                     for i, (m, w) in enumerate(zip(pool_mans, meta["weights"] or [None] * len(pool_mans))))
        rows.append(("checkpoints", "<table><tr><th>#</th><th>checkpoint</th><th>content hash</th><th>avg lr</th>"
                                    f"<th>weight</th></tr>{ck}</table>"))
    frows = []
    for role, path, rec, now in meta["files"]:
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
    versions, now_versions = meta["versions"]
    vrow = ", ".join(f"{_e(k)} {_e(v)}" for k, v in now_versions.items())
    if versions and versions != now_versions:
        vrow = (f"at extraction: {', '.join(f'{_e(k)} {_e(v)}' for k, v in versions.items())}<br>"
                f"at report: {vrow}")
    rows.append(("library versions", vrow))
    if meta["extra"]:
        rows.append(("score summary", _e(", ".join(f"{k}: {v}" for k, v in meta["extra"].items()))))
    return rows


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


def evals_html(ev: list[tuple[Path, dict[str, Any]]], run: Path | None) -> str:
    """The eval results section: (file, `collect.eval_rows` row) pairs."""
    out = "<h2>Eval results</h2>"
    if not ev:
        return out + ("<p class='sub'>No eval results: none under <code>&lt;run&gt;/eval/</code> and none given "
                      "(<code>ReportConfig.eval</code>).</p>")
    return out + ("<table class='eval'><tr><th>result file</th><th>which model</th><th>model</th><th>eval task</th>"
                  "<th>metric</th><th>score</th><th>n</th><th>more</th></tr>" + "".join(
                      f"<tr><td><code>{_e(_eval_label(p, run))}</code></td><td>{_e(_eval_role(p, run))}</td>"
                      f"<td><code>{_e(r['model'])}</code></td>"
                      f"<td>{_e(r['task'])}</td><td>{_e(r['metric'])}</td><td class='num'>{_e(_num(r['score']))}</td>"
                      f"<td class='num'>{_e(_num(r['n']))}</td>"
                      f"<td>{_e(', '.join(f'{k} {_num(v)}' for k, v in r['more'].items()))}</td></tr>"
                      for p, r in ev)
                  + "</table><p class='sub'>From: " + ", ".join(f"<code>{_e(p)}</code>" for p in
                                                               dict.fromkeys(p for p, _ in ev)) + "</p>")


def tables_html(path: Path, tables: tuple[str, str, list[dict[str, Any]]] | None = None) -> str:
    """One `ReportConfig.tables` file's section (`tables`: its `collect.result_tables`, read if not given)."""
    title, note, tables = tables if tables is not None else result_tables(path)
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


# ---- per task ---------------------------------------------------------------------------------

def baseline_text(base: dict[str, Any]) -> str:
    """Where the random baseline (`statistics.random_baseline`) comes from."""
    k, seed = base["k"], base["seed"]
    if base["selector"] is not None:
        return (f"the run's <code>random</code> selector ({_e(base['selector'])}, seed {_e(seed)}): "
                f"its top {k} by score, the sample it selects at that size")
    return (f"a seeded uniform sample of {k} of the {base['n']} scored examples (seed {seed}: the ids "
            f"<code>less-ray selector random --seed {seed}</code> selects at that size)")


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


def task_html(t: dict[str, Any], texts: dict[str, Any], selector: str, examples: int,
              dedup: tuple[int, float, int] | None) -> str:
    """One task's section: its selection, size rule, baseline, near-duplicates (`dedup`: ngram,
    threshold, num_perm, when checked), composition, plots, duplicate pairs and examples."""
    st, spec = t["st"], t["spec"]
    sel = Counter(r["source"] for r in t["selected"])
    rnd = Counter(t["random"]["sources"])
    parts = [f"<h2>Task: {_e(t['task'])}</h2>"]
    f = spec["file"]
    parts.append("<table class='meta'>"
                 f"<tr><th>selection file</th><td><code>{_e(f.resolve() if f else '')}</code>"
                 + ("" if f else f"(no <code>{_e(spec['name'])}</code>: <code>less-ray select</code> has not "
                    "written it; the top k by score is described)") + "</td></tr>"
                 f"<tr><th>selection size</th><td>{_rule_text(spec, t['k'], st['n'], f is not None)}</td></tr>"
                 f"<tr><th>random baseline</th><td>{baseline_text(t['random'])}</td></tr>")
    if "dup_sel" in t:
        ngram, threshold, num_perm = dedup
        parts.append(f"<tr><th>near-duplicates</th><td>{_dup_text(t['dup_sel'], 'selection')}; "
                     f"{_dup_text(t['dup_rnd'], 'random baseline')} <span class='sub'>(MinHash, word "
                     f"{ngram}-grams, estimated Jaccard ≥ {threshold:g}, "
                     f"{num_perm} permutations)</span></td></tr>")
    parts.append("</table>")
    parts.append("<h3>Composition by source</h3>" + _composition_table(st, sel, rnd))
    parts.append("<div class='plots'>" + "".join(f'<img alt="{_e(t["task"])} plot" src="data:image/png;base64,{p}">'
                                                 for p in _plots(t["task"], st, sel, rnd, selector)) + "</div>")
    if t.get("dup_sel") and t["dup_sel"]["pairs"]:
        parts.append("<details><summary>near-duplicate pairs in the selection (first 10)</summary><table>"
                     "<tr><th>selected id</th><th>duplicates (kept, higher-ranked)</th><th>est. Jaccard</th></tr>"
                     + "".join(f"<tr><td><code>{_e(a)}</code></td><td><code>{_e(b)}</code></td>"
                               f"<td class='num'>{j:.2f}</td></tr>" for a, b, j in t["dup_sel"]["pairs"][:10])
                     + "</table></details>")
    shown_top = [(r["id"], r["score"], r["messages"]) for r in t["selected"][:examples]]
    shown_bottom = [(i, s, texts.get(i)) for i, s in st["bottom"]]
    for title_, items in (("Top examples (selected)", shown_top), ("Bottom examples", shown_bottom)):
        parts.append(f"<h3>{title_}</h3><ol>" + "".join(
            f"<li><b>{_e(_num(score))}</b> <code>{_e(i)}</code><pre>{_e(_conversation(msgs)[:1500])}</pre></li>"
            for i, score, msgs in items) + "</ol>")
    return "".join(parts)


def page_html(summary: dict[str, Any], meta: dict[str, Any], tasks: list[dict[str, Any]],
              ev: list[tuple[Path, dict[str, Any]]], extra_tables: list[str], texts: dict[str, Any],
              pool_problem: str | None, examples: int, dedup: tuple[int, float, int] | None) -> str:
    """The whole page: title, how to read it, the selections, evals, result tables, metadata, tasks."""
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
    parts.append(evals_html(ev, meta["run"]))
    parts += extra_tables
    parts.append("<h2>Run metadata</h2><table class='meta'>" + "".join(
        f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in metadata_rows(meta)) + "</table>")
    for label, path, text in meta["configs"]:
        parts.append(f"<details><summary>{_e(label)} <span class='sub'>{_e(path)}</span></summary>"
                     f"<pre>{_e(text)}</pre></details>")
    parts += [task_html(t, texts, meta["selector"], examples, dedup) for t in tasks]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>{STYLE}</head>"
            f"<body>{''.join(parts)}</body></html>")

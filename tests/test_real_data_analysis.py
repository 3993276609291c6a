"""The analysis half of experiments/real_data.py (issue #19) on a fabricated finished run.

The experiment's analysis runs only after hours of extraction and training; a bug there (one was a
dict key swallowed by a comment) would surface only then. This builds the files a finished run
leaves (selections, score tables, evals, states, the ledger) from known numbers and checks the
summary and the rendered tables against numbers computed here independently."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rd():
    spec = importlib.util.spec_from_file_location("real_data_under_test", ROOT / "experiments" / "real_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SOURCES = ["flan_v2_cot", "gpteacher", "code_alpaca", "p3"]
N = 200


def _pool(rng):
    # every 20th example is the planted task: a 5% share
    return [{"id": f"ex{i:03d}", "source": ("code_alpaca" if i % 20 == 0 else rng.choice(SOURCES[:2] + SOURCES[3:])) + "/x",
             "messages": []} for i in range(N)]


def _scored(folder: Path, pool, scores, k):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [r["id"] for r in pool], "source": [r["source"] for r in pool],
                             "score": pa.array(scores, pa.float32())}), folder / "scores.parquet")
    order = sorted(range(len(pool)), key=lambda i: (-scores[i], pool[i]["id"]))
    (folder / "top_p0.05.jsonl").write_text("".join(json.dumps(pool[i]) + "\n" for i in order[:k]))
    return [pool[i]["id"] for i in order[:k]]


def test_summary_and_tables_of_a_fabricated_run(rd, tmp_path):
    rng = random.Random(0)
    pool = _pool(rng)
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    (out / "data" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    args = rd.parse_args(["--out", str(out), "--bootstrap", "2000"])
    k = 10
    planted = np.array([r["source"].startswith("code_alpaca") for r in pool])
    # LESS's planted scores: planted examples high, with some overlap; random: noise
    g = np.random.default_rng(1)
    less_planted = (planted * 1.0 + g.normal(0, 0.6, N)).astype(np.float32)
    tops = {}
    for t in (*rd.TARGETS, rd.PLANTED):
        sc = less_planted if t == rd.PLANTED else g.normal(0, 1, N).astype(np.float32)
        tops[f"less_{t}"] = _scored(out / "less" / "scores" / t, pool, list(map(float, sc)), k)
        _scored(out / "less" / "selectors" / "rds" / t, pool, list(map(float, g.normal(0, 1, N))), k)
        _scored(out / "less" / "selectors" / "kcenter" / t, pool, list(map(float, g.normal(0, 1, N))), k)
    for s in args.seeds:
        _scored(out / "random" / f"seed{s}" / "all", pool, list(map(float, g.random(N))), k)
    # the second warmup's run scored a sample of 120 of the 200 (--stability-pool)
    bbh_scores = pq.read_table(out / "less" / "scores" / "bbh" / "scores.parquet").column("score").to_pylist()
    sample = sorted(random.Random(5).sample(range(N), 120))
    second = [bbh_scores[i] + float(g.normal(0, 0.5)) for i in sample]
    _scored(out / "less_stability" / "scores" / "bbh", [pool[i] for i in sample], second, 6)
    # the projection check: exact (unprojected) scores of a 100-example sample = the run's + noise
    chk = sorted(random.Random(7).sample(range(N), 100))
    exact_bbh = [bbh_scores[i] + float(g.normal(0, 0.3)) for i in chk]
    _scored(out / "projection_check" / "scores" / "bbh", [pool[i] for i in chk], exact_bbh, 5)
    (out / "less" / "stages.json").write_text(json.dumps({"warmup": {"seconds": 10.0}, "score": {"seconds": 2.0}}))
    st = out / "models" / "less_bbh" / "state.json"
    st.parent.mkdir(parents=True)
    st.write_text(json.dumps({"epoch": 2, "global_step": 50, "steps_per_epoch": 25, "n_examples": 200,
                              "train": {"loss": 1.5}}))
    # held-out losses: LESS lower than every random seed by 0.1 on each example, plus noise
    ids = {t: [f"{t}{i}" for i in range(30)] for t in rd.TARGETS}
    base = {t: {i: 2.0 + 0.01 * j for j, i in enumerate(ids[t])} for t in rd.TARGETS}

    def ev(shift, noise):
        tasks = {}
        for t in rd.TARGETS:
            per = {i: base[t][i] + shift + float(noise.normal(0, 0.02)) for i in ids[t]}
            tasks[t] = {"metric": "answer_loss", "mean": float(np.mean(list(per.values()))), "n": len(per),
                        "skipped": [], "per_example": per, "per_subtask": {}}
        return {"model": "m", "tasks": tasks}
    losses = {"base": ev(0.0, g)}
    for t in rd.TARGETS:
        losses[f"less_{t}"] = ev(-0.3, g)
        losses[f"rds_{t}"] = ev(-0.2, g)
    for s in args.seeds:
        losses[f"random_seed{s}"] = ev(-0.2, g)
    losses["full"] = ev(-0.25, g)
    facts = {"pool": N, "heldout": {t: 30 for t in rd.TARGETS}}
    timings = rd.Timings(out / "timings.json")
    timings.data = {"train/less_bbh": 12.0}
    paths = {"pool": str(out / "data" / "pool.jsonl")}

    # the target_loss phase's files: BBH only; less_bbh 0.2 below each random seed on every target
    (out / "evals").mkdir()
    tids = [f"bbh/task{j}:{shot}" for j in range(4) for shot in range(3)]  # LESS's ids: <task>:<shot>
    tl = {}
    for m, shift in [("base", 0.0), ("less_bbh", -0.4)] + [(f"random_seed{x}", -0.2) for x in args.seeds]:
        tl[m] = {i: 1.5 + 0.05 * j + shift + float(g.normal(0, 0.01)) for j, i in enumerate(tids)}
        (out / "evals" / f"{m}.target_loss.json").write_text(json.dumps({"model": m, "tasks": {"bbh": {
            "metric": "answer_loss", "mean": float(np.mean(list(tl[m].values()))), "n": 12, "skipped": [],
            "per_example": tl[m], "per_subtask": {}}}}))

    # cot_folds: the fold-f model (its selection saw the other shots) is 0.1 below random seed 0 on
    # the shot-f exemplars and 0.3 above it on the others, which must not count
    fold = {}
    for f in range(3):
        fold[f] = {i: tl["random_seed0"][i] + (-0.1 if rd.shot_of(i) == f else 0.3) for i in tids}
        p_ = out / "cot_folds" / "evals" / f"less_bbh_fold{f}.target_loss.json"
        p_.parent.mkdir(parents=True, exist_ok=True)
        p_.write_text(json.dumps({"tasks": {"bbh": {"mean": 0.0, "n": 12, "per_example": fold[f]}}}))
        sel_ = out / "cot_folds" / f"fold{f}" / "top_p0.05.jsonl"
        sel_.parent.mkdir(parents=True, exist_ok=True)
        sel_.write_text("".join(json.dumps({"id": i}) + "\n" for i in tops["less_bbh"][: 10 - f]))

    s = rd.summarize(args, out, paths, losses, {}, timings, facts, {}, {"x": 1})

    assert s["k"] == 10
    cf = s["cot_folds"]
    cross = {i: fold[rd.shot_of(i)][i] for i in tids}
    assert cf["n"] == 12 and cf["mean"]["less_bbh cross-fitted"] == pytest.approx(np.mean(list(cross.values())))
    c0 = cf["paired"]["less_bbh cross-fitted - random_seed0"]
    assert c0["mean_diff"] == pytest.approx(-0.1) and c0["frac_lower"] == 1.0
    assert cf["paired"]["less_bbh cross-fitted - base"]["mean_diff"] == pytest.approx(
        np.mean([cross[i] - tl["base"][i] for i in tids]))
    assert cf["shared_with_all_shots"] == {0: 10, 1: 9, 2: 8}
    tls = s["target_loss"]
    assert tls["tasks"] == ["bbh"] and tls["n"] == {"bbh": 12}
    assert tls["mean"]["less_bbh"]["bbh"] == pytest.approx(np.mean(list(tl["less_bbh"].values())))
    assert set(tls["paired"]["bbh"]) == {f"less_bbh - random_seed{x}" for x in args.seeds} | {"less_bbh - base"}
    d = [tl["less_bbh"][i] - tl["random_seed1"][i] for i in tids]
    p1 = tls["paired"]["bbh"]["less_bbh - random_seed1"]
    assert p1["mean_diff"] == pytest.approx(np.mean(d)) and p1["ci95"][1] < 0 and p1["frac_lower"] == 1.0
    for t in rd.TARGETS:
        row = s["loss_table"][t]
        assert row["less"] == pytest.approx(losses[f"less_{t}"]["tasks"][t]["mean"])
        vals = [losses[f"random_seed{x}"]["tasks"][t]["mean"] for x in args.seeds]
        assert row["random"]["mean"] == pytest.approx(np.mean(vals))
        assert row["random"]["std"] == pytest.approx(np.std(vals, ddof=1))
        assert row["full"] == pytest.approx(losses["full"]["tasks"][t]["mean"])
        p = s["paired"][t][f"less_{t} - random_seed0"]
        d = [losses[f"less_{t}"]["tasks"][t]["per_example"][i] - losses["random_seed0"]["tasks"][t]["per_example"][i]
             for i in ids[t]]
        assert p["n"] == 30 and p["mean_diff"] == pytest.approx(np.mean(d))
        assert p["ci95"][0] < np.mean(d) < p["ci95"][1] < 0  # a 0.1 shift with 0.03 noise: clearly below 0
        assert p["frac_lower"] == pytest.approx(np.mean(np.array(d) < 0))
        pf = s["paired"][t][f"less_{t} - full"]  # LESS's 5% against the whole pool's model
        assert pf["mean_diff"] == pytest.approx(np.mean([losses[f"less_{t}"]["tasks"][t]["per_example"][i]
                                                         - losses["full"]["tasks"][t]["per_example"][i] for i in ids[t]]))
        assert list(s["paired"][t]).index(f"less_{t} - full") == len(args.seeds)  # after the seeds, before base
    assert s["matrix"]["less_bbh"]["mmlu"] == pytest.approx(losses["less_bbh"]["tasks"]["mmlu"]["mean"])

    # planted table: top-k share and AUC against a direct count / the Mann-Whitney statistic
    pl = s["planted"]["LESS"]
    assert pl["pool_share"] == pytest.approx(planted.mean())
    order = np.lexsort((np.array([r["id"] for r in pool]), -less_planted.astype(np.float64)))
    assert pl["top5%"] == pytest.approx(planted[order[:10]].mean())
    assert pl["top10%"] == pytest.approx(planted[order[:20]].mean())
    pos, neg = less_planted[planted].astype(np.float64), less_planted[~planted].astype(np.float64)
    mw = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert pl["auc"] == pytest.approx(mw)
    assert set(s["planted"]) >= {"LESS", "RDS (MiniLM)", "k-center", "random seed 0"}
    # a later invocation with other phases (here only gen) summarises the same planted table
    only_gen = rd.parse_args(["--out", str(out), "--bootstrap", "2000", "--phases", "gen"])
    assert rd.summarize(only_gen, out, paths, losses, {}, timings, facts, {}, {"x": 1})["planted"] == s["planted"]

    # stability over the 120 both runs scored: each run's top 6 of those, counted here
    stab = s["stability"]
    a_scores = {pool[i]["id"]: bbh_scores[i] for i in sample}
    a = set(sorted(a_scores, key=lambda i: (-np.float32(a_scores[i]), i))[:6])
    b = {json.loads(x)["id"] for x in (out / "less_stability" / "scores" / "bbh" / "top_p0.05.jsonl").read_text().splitlines()}
    row = stab[next(k_ for k_ in stab if k_.startswith("LESS"))]
    assert (row["n"], row["k"]) == (120, 6)
    assert row["shared_top"] == len(a & b) and row["jaccard_top"] == pytest.approx(len(a & b) / len(a | b))
    from scipy.stats import spearmanr
    assert row["spearman"] == pytest.approx(spearmanr([a_scores[pool[i]["id"]] for i in sample],
                                                      [np.float32(v) for v in second]).statistic, abs=1e-6)
    assert stab[next(k_ for k_ in stab if k_.startswith("random"))]["n"] == 120

    # composition: LESS's planted selection's code_alpaca share, counted here
    sel = s["selection_shares"]["less_code_alpaca"] if "less_code_alpaca" in s["selection_shares"] else None
    assert s["selection_shares"]["pool"]["code_alpaca"] == pytest.approx(planted.mean())
    assert sel is None or sel["code_alpaca"] == pytest.approx(planted[order[:10]].mean())

    # projection table: over the 100 checked, against scipy and a direct top-5 count
    from scipy.stats import spearmanr
    pr = s["projection"]["bbh"]
    run_chk = [np.float32(bbh_scores[i]) for i in chk]
    ex32 = [np.float32(v) for v in exact_bbh]
    assert (pr["n"], pr["k"]) == (100, 5) and set(s["projection"]) == {"bbh"}
    assert pr["spearman"] == pytest.approx(spearmanr(ex32, run_chk).statistic, abs=1e-4)
    top5 = lambda v: {pool[chk[j]]["id"] for j in sorted(range(100), key=lambda j: (-v[j], pool[chk[j]]["id"]))[:5]}  # noqa: E731
    assert pr["shared_top"] == len(top5(ex32) & top5(run_chk))
    ex, rn = np.array(ex32, dtype=np.float64), np.array(run_chk, dtype=np.float64)
    assert pr["rmse_over_sd"] == pytest.approx(np.sqrt(np.mean((ex - rn) ** 2)) / ex.std(), abs=1e-4)

    md = rd.render_markdown(s)
    for needle in ("Projection check", "Held-out answer-token loss", "Loss on the targets LESS scored against", "each held out from its LESS selection", "Paired per-example", "Cross-target matrix", "Planted task",
                   "Stability", "Source composition", "Trainings", "Wall time"):
        assert needle in md, needle
    # what a run writes: results.json (-> the docs section), results.md, and the tables file the
    # report page takes (checked by the report's own reader)
    rd.write_results(args, out, paths, losses, {}, timings, facts, {}, {"x": 1})
    assert "Real data, issue #19" in rd.render_docs_section(out / "results.json")
    from less_ray.selection.report.collect import result_tables
    title, note, tables = result_tables(out / "results.tables.json")
    assert "SmolLM2" in note and [t["caption"] for t in tables if t["caption"].startswith("Held-out")]
    assert (out / "results.md").read_text().count("### ") == len(tables)

    # after the first training only (write_results runs after every model): the tables render
    part = {m: losses[m] for m in ("base", "less_bbh")}
    s1 = rd.summarize(args, out, paths, part, {}, timings, facts, {}, {"x": 1})
    assert "random" not in s1["loss_table"]["bbh"] and list(s1["paired"]["bbh"]) == ["less_bbh - base"]
    assert "| bbh (30) |" in rd.render_markdown(s1)


def test_stability_sample_and_its_warmup_draw(rd, tmp_path):
    """The second run's pool: a seeded sample of the pool file, and a warmup percentage with which the
    product's own draw takes as many examples from it as the first run's took from the pool."""
    from less_ray.train.runner import draw_warmup
    for n_pool, n_sample, pct in ((4000, 1000, 0.05), (3953, 1000, 0.05), (1000, 290, 0.029), (300, 1000, 0.05)):
        out = tmp_path / f"o{n_pool}_{n_sample}"
        (out / "data").mkdir(parents=True)
        pool = out / "data" / "pool.jsonl"
        pool.write_text("".join(json.dumps({"id": f"e{i}"}) + "\n" for i in range(n_pool)))
        args = rd.parse_args(["--out", str(out), "--stability-pool", str(n_sample), "--warmup-percentage", str(pct)])
        path, p = rd.stability_pool(args, out, {"pool": str(pool)})
        lines = Path(path).read_text().splitlines()
        assert len(lines) == min(n_sample, n_pool) and len(set(lines)) == len(lines)
        assert set(lines) <= set(pool.read_text().splitlines())
        first = len(draw_warmup(list(range(n_pool)), pct, 3))
        assert len(draw_warmup(lines, p, 4)) == first
        assert rd.stability_pool(args, out, {"pool": str(pool)}) == (path, p)  # the same sample again
    args = rd.parse_args(["--out", str(out), "--stability-pool", "0"])
    assert rd.stability_pool(args, out, {"pool": str(pool)}) == (str(pool), 0.05)

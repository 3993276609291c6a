"""experiments/projection_fidelity.py (issue #19's projection diagnostic) on synthetic stores: its
LESS formula against a brute-force loop, its reading of the run's stores (reproduced exactly from
the exact features), and the agreement numbers against a direct count."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from less_ray.testing.synthetic_store import write_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pf():
    spec = importlib.util.spec_from_file_location("projection_fidelity_under_test",
                                                  ROOT / "experiments" / "projection_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_less_scores_is_the_mean_cosine_per_subtask_then_the_max(pf):
    rng = np.random.default_rng(0)
    pool, targets = _unit(rng.standard_normal((7, 20))), _unit(rng.standard_normal((5, 20)))
    sub = np.array(["a", "b", "a", "c", "b"])
    want = [max(np.mean([float(p @ t) for t, s in zip(targets, sub) if s == g]) for g in "abc") for p in pool]
    assert pf.less_scores(pool, targets, sub) == pytest.approx(want, abs=1e-6)


def test_fidelity_on_synthetic_stores(pf, tmp_path, capsys):
    rng = np.random.default_rng(1)
    P, d, n_pool = 300, 64, 60
    out = tmp_path / "run"
    weights = [0.7, 0.3]
    exact_scores, run_scores = {}, {}
    for e in (1, 2):
        ids = [f"p{i:02d}" for i in range(n_pool)]
        pool = _unit(rng.standard_normal((n_pool, P)))
        check = out / "projection_check" / "datastore" / f"epoch_{e}"
        # the check scored a sample (every other example); the run scored all
        write_store(check / "pool" / f"dim{P}", ids[::2], pool[::2], kind="adam", checkpoint=f"c{e}", proj_type="identity")
        proj_pool = pf.project(pool, "rademacher", d)
        write_store(out / "less" / "datastore" / f"epoch_{e}" / "pool" / f"dim{d}", ids, proj_pool.astype(np.float32),
                    kind="adam", checkpoint=f"c{e}")
        for t in pf.TARGETS:
            n_t = 6
            tg = _unit(rng.standard_normal((n_t, P)) + 2 * pool[:1])  # targets near one pool example
            sub = ["x", "y"] * (n_t // 2)
            tid = [f"{t}{j}" for j in range(n_t)]
            write_store(check / t / f"dim{P}", tid, tg, kind="sgd", checkpoint=f"c{e}", subtasks=sub, task=t,
                        proj_type="identity")
            proj_t = pf.project(tg, "rademacher", d).astype(np.float32)
            write_store(out / "less" / "datastore" / f"epoch_{e}" / t / f"dim{d}", tid, proj_t, kind="sgd",
                        checkpoint=f"c{e}", subtasks=sub, task=t)
            run_scores[t] = run_scores.get(t, 0) + weights[e - 1] * pf.less_scores(
                proj_pool[::2].astype(np.float32), proj_t, np.array(sub))
            ex = pf.less_scores(pool[::2], tg, np.array(sub))
            exact_scores[t] = exact_scores.get(t, 0) + weights[e - 1] * ex
    (out / "less" / "scores").mkdir(parents=True)
    (out / "less" / "scores" / "score_summary.json").write_text(json.dumps({"weights": weights}))
    assert pf.main(["--out", str(out), "--run", f"rademacher:{d}", "--also", "sjlt-s1:64", "sjlt-s1:4096"]) == 0
    res = json.loads(capsys.readouterr().out)
    for e in ("epoch_1", "epoch_2"):
        c = res["consistency"][e]
        assert c["max_abs_diff_run_vs_reprojected_pool"] < 1e-5 and c["max_abs_diff_run_vs_reprojected_targets"] < 1e-5
    from scipy.stats import spearmanr
    for t in pf.TARGETS:
        r = res["targets"][t]
        assert r["n"] == n_pool // 2 and r["exact_sd"] == pytest.approx(exact_scores[t].std(), rel=1e-5)
        run = r[f"run (rademacher:{d})"]
        assert run["k"] == 1 and 0 <= run["shared_top"] <= 1
        # the run's scores of the sample from its own stores, recomputed here
        assert run["spearman"] == pytest.approx(spearmanr(exact_scores[t], run_scores[t]).statistic, abs=1e-4)
        rmse = np.sqrt(np.mean((exact_scores[t] - run_scores[t]) ** 2)) / exact_scores[t].std()
        assert run["rmse_over_sd"] == pytest.approx(rmse, rel=1e-3)
        # a far larger sketch agrees better than the run's 64 dims (JL error ~ 1/sqrt(d))
        assert r["sjlt-s1:4096"]["rmse_over_sd"] < r["sjlt-s1:64"]["rmse_over_sd"]
        assert r["sjlt-s1:4096"]["spearman"] > 0.9
    # agreement() against a direct count
    ex, ap = np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.0, 2.5, 1.0, 3.0])
    a = pf.agreement(ex, ap, np.array(["a", "b", "c", "d"]), 0.5)
    assert a["k"] == 2 and a["shared_top"] == 1 and a["spearman"] == pytest.approx(spearmanr(ex, ap).statistic, abs=1e-4)

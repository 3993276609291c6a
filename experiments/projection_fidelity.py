"""How much of LESS's score survives the random projection? (issue #19's diagnostic)

    python experiments/projection_fidelity.py --out /work/runs/real19 [--epochs 1 2 3 4]

Reads, for a seeded pool sample and every target set, the unprojected gradient features (the
`projection` phase of experiments/real_data.py: identity projection, L2-normalised) and the run's
projected ones (its datastore), and scores both with LESS's formula written out here in numpy
(per checkpoint: cos = dot of unit vectors; mean over each subtask's targets; max over subtasks;
summed over checkpoints with the weights the run's score stage recorded). Beside the run's own
projection it projects the exact features again with the product's projectors at other dims
(Rademacher and sparse JL) to show how the agreement grows with d. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from less_ray.store import read_store

TARGETS = ("bbh", "mmlu", "tydiqa")


def one_store(folder: Path) -> Path:
    found = sorted(folder.glob("dim*/manifest.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one store (dim*/manifest.json), found {len(found)}")
    return found[0].parent


def read(folder: Path, subtasks: bool = False) -> dict:
    cols = ("id", "features", "subtask") if subtasks else ("id", "features")
    return read_store(one_store(folder), cols)


def less_scores(pool: np.ndarray, targets: np.ndarray, subtask: np.ndarray) -> np.ndarray:
    """One checkpoint's LESS score of each pool row: max over subtasks of the mean cosine to that
    subtask's targets (rows are unit vectors, so the mean cosine is the dot with the mean target)."""
    names = sorted(set(subtask.tolist()))
    means = np.stack([targets[subtask == s].astype(np.float64).mean(0) for s in names])
    return (pool.astype(np.float64) @ means.T).max(1)


def project(x: np.ndarray, kind: str, dim: int, seed: int = 0) -> np.ndarray:
    """x (unit rows) projected by the product's projector and L2-normalised again, as extract does."""
    import torch

    from less_ray.core.projection import RademacherProjector
    from less_ray.core.sparse_projection import SparseJLProjector
    p = (RademacherProjector(x.shape[1], [dim], seed=seed) if kind == "rademacher"
         else SparseJLProjector(x.shape[1], [dim], seed=seed, s=int(kind.removeprefix("sjlt-s"))))
    y = p.project(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[dim].double()
    return (y / y.norm(dim=1, keepdim=True)).numpy()


def agreement(exact: np.ndarray, approx: np.ndarray, ids: np.ndarray, top_p: float) -> dict:
    from scipy.stats import pearsonr, spearmanr
    k = max(1, int(top_p * len(ids)))
    top = lambda v: set(np.lexsort((ids, -v))[:k].tolist())  # noqa: E731 (score desc, id asc: select's order)
    a, b = top(exact), top(approx)
    return {"n": len(ids), "spearman": round(float(spearmanr(exact, approx).statistic), 4),
            "pearson": round(float(pearsonr(exact, approx).statistic), 4),
            "shared_top": len(a & b), "k": k, "jaccard_top": round(len(a & b) / len(a | b), 4),
            "exact_score_sd": float(exact.std()),
            "rmse_over_sd": round(float(np.sqrt(np.mean((exact - approx) ** 2)) / exact.std()), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the run folder of experiments/real_data.py")
    ap.add_argument("--epochs", type=int, nargs="+", default=None, help="checkpoints (default: every one checked)")
    ap.add_argument("--run", default="sjlt-s1:65536", help="KIND:DIM of the run's datastore (its dim<DIM> stores)")
    ap.add_argument("--top-p", type=float, default=0.05)
    ap.add_argument("--also", nargs="+", default=["sjlt-s1:2048", "sjlt-s1:8192", "sjlt-s1:32768", "sjlt-s4:8192",
                                                    "rademacher:8192"],
                    help="KIND:DIM projections of the exact features to compare too")
    args = ap.parse_args(argv)
    _, run_dim = _kd(args.run)
    out = Path(args.out)
    check = out / "projection_check" / "datastore"
    epochs = args.epochs or sorted(int(p.name.split("_")[1]) for p in check.glob("epoch_*"))
    weights = json.loads((out / "less" / "scores" / "score_summary.json").read_text()).get("weights") \
        if (out / "less" / "scores" / "score_summary.json").exists() else None
    res = {"epochs": epochs, "weights": weights, "targets": {}, "consistency": {}}
    totals: dict[str, dict[str, np.ndarray]] = {}
    ids = None
    for e in epochs:
        w = 1.0 if weights is None else weights[e - 1]
        ex_pool = read(check / f"epoch_{e}" / "pool")
        run_pool_all = read_store(out / "less" / "datastore" / f"epoch_{e}" / "pool" / f"dim{run_dim}")
        pos = {i: n for n, i in enumerate(run_pool_all["id"].tolist())}
        run_pool = run_pool_all["features"][np.array([pos[i] for i in ex_pool["id"].tolist()])]
        ids = ex_pool["id"]
        ex_t, run_t = {}, {}
        for t in TARGETS:
            ex_t[t] = read(check / f"epoch_{e}" / t, subtasks=True)
            run_t[t] = read_store(out / "less" / "datastore" / f"epoch_{e}" / t / f"dim{run_dim}",
                                  ("id", "features", "subtask"))
            if ex_t[t]["id"].tolist() != run_t[t]["id"].tolist():
                raise ValueError(f"epoch {e} {t}: the check's target rows differ from the run's")
        # every row of this checkpoint projected in one pass per projection (a dense projection
        # generates its matrix once per pass)
        bounds = np.cumsum([0, len(ids)] + [len(ex_t[t]["id"]) for t in TARGETS])
        x_all = np.concatenate([ex_pool["features"]] + [ex_t[t]["features"] for t in TARGETS])
        t0 = time.time()
        projected = {a: project(x_all, *_kd(a)) for a in dict.fromkeys([args.run, *args.also])}
        again = projected[args.run]
        # the run's own projection, reproduced from the exact features: equal up to rounding
        res["consistency"][f"epoch_{e}"] = {
            "max_abs_diff_run_vs_reprojected_pool": float(np.abs(again[:len(ids)] - run_pool).max()),
            "max_abs_diff_run_vs_reprojected_targets": max(float(np.abs(again[bounds[i + 1]:bounds[i + 2]]
                                                                       - run_t[t]["features"]).max())
                                                           for i, t in enumerate(TARGETS)),
            "seconds_projecting": round(time.time() - t0, 1)}
        for i, t in enumerate(TARGETS):
            sub = ex_t[t]["subtask"]
            sl = slice(bounds[i + 1], bounds[i + 2])
            acc = totals.setdefault(t, {})
            for name, s in [("exact", less_scores(ex_pool["features"], ex_t[t]["features"], sub)),
                            (f"run ({args.run})", less_scores(run_pool, run_t[t]["features"], sub))] + [
                    (a, less_scores(projected[a][:len(ids)], projected[a][sl], sub)) for a in args.also
                    if a != args.run]:
                acc[name] = acc.get(name, 0) + w * s
    for t, acc in totals.items():
        ex = acc.pop("exact")
        res["targets"][t] = {"n": len(ex), "exact_sd": float(ex.std()),
                             **{name: agreement(ex, v, ids, args.top_p) for name, v in acc.items()}}
    print(json.dumps(res, indent=1))
    return 0


def _kd(a: str) -> tuple[str, int]:
    kind, dim = a.split(":")
    return kind, int(dim)


if __name__ == "__main__":
    sys.exit(main())

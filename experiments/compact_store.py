"""Compact stores on real data (issue #27, item 2): how much selection each stored dtype loses.

#19's pool (4,000 real examples, code_alpaca planted at 5%) and targets (bbh, mmlu, tydiqa and the
planted task), built by experiments/real_data.py's own `build_data` with its defaults (the same
records). #19's four-checkpoint store is gone, so this makes one checkpoint again: a one-epoch
warmup on #19's warmup draw (5%, seed 3), then one extraction pass in float32 at two dims
(sjlt d=8192 and d=65536). Every other store is `less-ray recode` of that float32 store,
which writes what extract would have written with that dtype (tests/test_compact_store.py checks
the bytes are equal). The pool store is recoded; the target stores stay float32 as extracted
(`--code-targets`: recoded too). Each is scored as usual; per target, against the same d's float16
scores and against d=65536 float32's: top-5% overlap and Spearman, plus bytes per candidate and
score time, and the planted task's share of its own top 5%.

    PYTHONPATH=. nice -n 19 python experiments/compact_store.py --out /work/compact_run --phases extract
    PYTHONPATH=. python experiments/compact_store.py --out /work/compact_run --phases compare
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (the #19 experiment: its data and settings)

log = logging.getLogger("compact")
DIMS = (8192, 65536)
DTYPES = ("float32", "float16", "int8", "int4", "sign")
TASKS = (*real_data.TARGETS, real_data.PLANTED)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--phases", nargs="+", default=["extract", "compare"], choices=["extract", "compare"])
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--code-targets", action="store_true",
                   help="compare: recode the target stores too (default: only the pool; targets as extracted)")
    p.add_argument("--results", default=None, help="compare: also write the table here (JSON)")
    p.add_argument("--render", default=None, metavar="JSON", help="print the docs table of a --results file")
    return p.parse_args(argv)


def setup(out: Path):
    """#19's data and settings (real_data's defaults) and the model folder."""
    args = real_data.parse_args(["--out", str(out), "--warmup-epochs", "1"])
    from less_ray.data.sources import default_data_root
    model_dir = out / "smollm2"
    if not (model_dir / "config.json").exists():
        from less_ray.models import materialize_smollm2
        materialize_smollm2(model_dir)
    paths = real_data.build_data(args, out, default_data_root(), model_dir)
    return args, model_dir, paths


def extract(out: Path, opts) -> None:
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.pipeline import run_pipeline
    args, model_dir, paths = setup(out)
    args.warmup_epochs = opts.warmup_epochs
    cfg = real_data.pipeline_config(args, out, paths, model_dir, "less", args.warmup_seed, TASKS, False)
    t0 = time.time()
    run_pipeline(dataclasses.replace(cfg, stages=["warmup"]))
    log.info("warmup: %.0f s", time.time() - t0)
    ckpts = sorted((out / "less" / "warmup" / "checkpoints").glob("epoch_*"), key=lambda p: int(p.name.split("_")[-1]))
    ckpt = ckpts[-1]
    common = dict(checkpoint=str(ckpt), base_model=str(model_dir), dims=list(DIMS), projection="sjlt", sjlt_s=1,
                  dtype="float32", chat_format=args.chat_format, max_seq_length=args.max_seq_length,
                  batch_size=args.extract_batch, shard_rows=args.shard_rows, min_actors=2, max_actors=2,
                  actor_memory_gb=args.extract_memory_gb, num_cpus=opts.num_cpus)
    for name, data, kind in [("pool", paths["pool"], "adam"), *[(t, paths[f"targets_{t}"], "sgd") for t in TASKS]]:
        t0 = time.time()
        run_extract(ExtractConfig(data=data, out=str(out / "store" / "float32" / name), kind=kind, **common))
        log.info("extract %s: %.0f s", name, time.time() - t0)
        timing = out / "extract_seconds.json"
        seen = json.loads(timing.read_text()) if timing.exists() else {}
        seen.setdefault(name, round(time.time() - t0, 1))
        timing.write_text(json.dumps(seen, indent=1))


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "shards").glob("part-*.arrow"))


def agreement(a, b, k: int) -> tuple[float, float]:
    """(top-k overlap share, Spearman) of two score vectors over the same ids."""
    import numpy as np
    from scipy.stats import spearmanr
    top = lambda v: set(np.argsort(-v, kind="stable")[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k, float(spearmanr(a, b).statistic)


def compare(out: Path, opts) -> dict:
    """Every (dim, dtype) store scored; agreement per target with the same dim's float16 store (the
    issue's reference: LESS's stored dtype) and with d=65536 float32 (the closest to exact here)."""
    import numpy as np
    import pyarrow.parquet as pq

    from less_ray.recode import RecodeConfig, run_recode
    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    src = out / "store" / "float32"
    n_pool = json.loads((src / "pool" / f"dim{DIMS[0]}" / "manifest.json").read_text())["count"]
    k = max(1, round(0.05 * n_pool))
    scores, rows = {}, []
    for d in DIMS:
        for dtype in DTYPES:
            stores = {}
            t0 = time.time()
            for name in ("pool", *TASKS):
                s = src / name / f"dim{d}"
                if dtype != "float32" and (name == "pool" or opts.code_targets):
                    dst = out / "store" / dtype / name / f"dim{d}"
                    run_recode(RecodeConfig(store=str(s), out=str(dst), dtype=dtype))
                    s = dst
                stores[name] = s
            recode_s = time.time() - t0
            sc = out / ("scores" if opts.code_targets else "scores_pool_coded") / dtype / f"dim{d}"
            t0 = time.time()
            run_score(ScoreConfig(pool_stores=[str(stores["pool"])], out=str(sc), num_cpus=opts.num_cpus,
                                  max_actors=1, tasks=[TaskSpec(t, [str(stores[t])]) for t in TASKS]))
            score_s = time.time() - t0
            for t in TASKS:
                tab = pq.read_table(sc / t / "scores.parquet", columns=["id", "source", "score"]).sort_by("id")
                scores[d, dtype, t] = tab.column("score").to_numpy()
                planted = np.array([x.split("/")[0] == real_data.PLANTED for x in tab.column("source").to_pylist()])
            pool_bytes = store_bytes(stores["pool"])
            top = np.argsort(-scores[d, dtype, real_data.PLANTED], kind="stable")[:k]
            rows.append({"dim": d, "dtype": dtype, "bytes_per_candidate": round(pool_bytes / n_pool, 1),
                         "pool_store_mb": round(pool_bytes / 1e6, 2), "recode_s": round(recode_s, 1),
                         "score_s": round(score_s, 1),
                         # the planted task's own pool examples among its top 5% (5% of the pool is planted)
                         "planted_share_top5": round(float(planted[top].mean()), 4)})
            log.info("%s", json.dumps(rows[-1]))
    ref_exact = (max(DIMS), "float32")
    for row in rows:
        for t in TASKS:
            got = scores[row["dim"], row["dtype"], t]
            row[f"{t}_top5_vs_f16"], row[f"{t}_spearman_vs_f16"] = agreement(scores[row["dim"], "float16", t], got, k)
            row[f"{t}_top5_vs_d{ref_exact[0]}_f32"], row[f"{t}_spearman_vs_d{ref_exact[0]}_f32"] = agreement(
                scores[(*ref_exact, t)], got, k)
    result = {"pool": n_pool, "tasks": list(TASKS), "targets_coded": bool(opts.code_targets), "top_k": k, "dims": list(DIMS), "dtypes": list(DTYPES),
              "extract_seconds": json.loads((out / "extract_seconds.json").read_text()), "rows": rows}
    if opts.results:
        Path(opts.results).write_text(json.dumps(result, indent=1))
    return result


def render(result: dict) -> str:
    """The docs/results.md table: one row per (dim, dtype)."""
    tasks, ref = result["tasks"], f"d{max(result['dims'])}_f32"
    head = ["d", "dtype", "bytes / candidate", f"score s ({result['pool']:,} pool rows)", "planted share in top 5%",
            *[f"{t}: top-5% overlap / Spearman vs same-d float16" for t in tasks],
            f"mean top-5% overlap vs d={max(result['dims'])} float32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        vs = [f"{r[f'{t}_top5_vs_f16']:.3f} / {r[f'{t}_spearman_vs_f16']:.4f}" for t in tasks]
        mean_exact = sum(r[f"{t}_top5_vs_{ref}"] for t in tasks) / len(tasks)
        lines.append("| " + " | ".join([str(r["dim"]), r["dtype"], f"{r['bytes_per_candidate']:,.0f}",
                                         f"{r['score_s']:.1f}", f"{r['planted_share_top5']:.3f}", *vs,
                                         f"{mean_exact:.3f}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.render:
        print(render(json.loads(Path(opts.render).read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from less_ray.ray_runtime import ensure_ray
    ensure_ray(None, opts.num_cpus)
    if "extract" in opts.phases:
        extract(out, opts)
    if "compare" in opts.phases:
        print(json.dumps(compare(out, opts), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

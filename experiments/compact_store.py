"""Compact stores on real data (issue #27, item 2): how much selection each stored dtype loses.

#19's pool (4,000 real examples, code_alpaca planted at 5%) and targets (bbh, mmlu, tydiqa and the
planted task), built by experiments/real_data.py's own `build_data` with its defaults (the same
records). #19's four-checkpoint store is gone, so this makes one checkpoint again: a one-epoch
warmup on #19's warmup draw (5%, seed 3), then one extraction pass in float32 at two dims
(sjlt d=8192 and d=65536). Every other store is `less-ray recode` of that float32 store,
which writes what extract would have written with that dtype (tests/test_compact_store.py checks
the bytes are equal). Each is scored as usual; per target, against the float16 store's scores:
top-5% overlap and Spearman, plus bytes per candidate and score time.

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
    p.add_argument("--results", default=None, help="compare: also write the table here (JSON)")
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


def compare(out: Path, opts) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    from scipy.stats import spearmanr

    from less_ray.scoring import ScoreConfig, TaskSpec, run_score
    from less_ray.recode import RecodeConfig, run_recode
    src = out / "store" / "float32"
    n_pool = json.loads((src / "pool" / f"dim{DIMS[0]}" / "manifest.json").read_text())["count"]
    rows = []
    for d in DIMS:
        scores, seconds = {}, {}
        for dtype in DTYPES:
            stores = {}
            for name in ("pool", *TASKS):
                s = src / name / f"dim{d}"
                if dtype != "float32":
                    dst = out / "store" / dtype / name / f"dim{d}"
                    run_recode(RecodeConfig(store=str(s), out=str(dst), dtype=dtype))
                    s = dst
                stores[name] = s
            sc = out / "scores" / dtype / f"dim{d}"
            t0 = time.time()
            run_score(ScoreConfig(pool_stores=[str(stores["pool"])], out=str(sc), num_cpus=opts.num_cpus,
                                  max_actors=1, tasks=[TaskSpec(t, [str(stores[t])]) for t in TASKS]))
            seconds[dtype] = time.time() - t0
            scores[dtype] = {}
            for t in TASKS:
                tab = pq.read_table(sc / t / "scores.parquet", columns=["id", "score"]).sort_by("id")
                scores[dtype][t] = tab.column("score").to_numpy()
            pool_bytes = store_bytes(stores["pool"])
            row = {"dim": d, "dtype": dtype, "bytes_per_candidate": pool_bytes / n_pool,
                   "store_mb": pool_bytes / 1e6, "score_s": round(seconds[dtype], 1)}
            ref = scores.get("float16")
            k = max(1, round(0.05 * n_pool))
            for t in TASKS:
                if ref is None:
                    continue
                a, b = ref[t], scores[dtype][t]
                top_a, top_b = set(np.argsort(-a, kind="stable")[:k]), set(np.argsort(-b, kind="stable")[:k])
                row[f"{t}_top5_overlap"] = len(top_a & top_b) / k
                row[f"{t}_spearman"] = float(spearmanr(a, b).statistic)
            rows.append(row)
            log.info("%s", json.dumps(row))
    # float32 was scored before float16 existed as the reference: fill its columns now
    for row in rows:
        if row["dtype"] == "float32":
            d = row["dim"]
            for t in TASKS:
                a = pq.read_table(out / "scores" / "float16" / f"dim{d}" / t / "scores.parquet",
                                  columns=["id", "score"]).sort_by("id").column("score").to_numpy()
                b = pq.read_table(out / "scores" / "float32" / f"dim{d}" / t / "scores.parquet",
                                  columns=["id", "score"]).sort_by("id").column("score").to_numpy()
                k = max(1, round(0.05 * n_pool))
                row[f"{t}_top5_overlap"] = len(set(np.argsort(-a, kind="stable")[:k])
                                               & set(np.argsort(-b, kind="stable")[:k])) / k
                row[f"{t}_spearman"] = float(spearmanr(a, b).statistic)
    result = {"pool": n_pool, "tasks": list(TASKS), "top_k": max(1, round(0.05 * n_pool)), "rows": rows}
    if opts.results:
        Path(opts.results).write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    opts = parse_args(argv)
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

"""Benchmark: `less-ray score` + `select` over a synthetic store of 1,000,000 candidates x 1024 dims
x 4 checkpoints with 3 target tasks of ~100 examples, against one in-memory GEMM on the same data.

Prints wall time, throughput as a ratio to the in-memory GEMM (LESS's G_c V_cᵀ, all targets,
float32, numpy), and peak RSS of the driver and of each scoring actor. The timed window of
`score_wall_s` is one `run_score` call in a fresh process (libraries already imported): store
matching, target queries, the embedded Ray's start, the actor pool, scoring, the id uniqueness
check and writing the three scores.parquet; its parts are printed beside it. How much of the pool
store sat in the page cache when scoring began is printed too (fincore).
`--verify on|off` (default on): score's verify-on-read (shard sha256, row norms, score range);
`--verify both` scores twice on the same store, off then on, and prints both (`both-on-first`: on, then off);
`--cold` evicts the pool shards from the page cache before each run.
Run: flock /tmp/less_ray_bench.lock nice -n 5 python bench/bench_score.py [--n 1000000] [--keep] [--verify both]

Side by side with an earlier version of less_ray (e.g. the Parquet store layout before Arrow IPC):
`--baseline-code DIR` is a checkout of that version (`git archive REV | tar -x -C DIR`) and
`--baseline-dir STORE_DIR` the store its own bench wrote (`PYTHONPATH=DIR python DIR/bench/bench_score.py
--write-only --dir STORE_DIR`: same seeds, so the same features). Each score run is a fresh process
whose PYTHONPATH (inherited by the embedded Ray's workers) selects the code; runs alternate as
`--order` says (default old,new,new,old), every one against the one in-memory GEMM reference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from less_ray.data.io import write_jsonl
from less_ray.data.schema import make_record
from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
from less_ray.selection.select import SelectConfig, run_select
from less_ray.testing.synthetic_store import write_store

TASKS = {"bbh_like": 27 * 3 + 18, "mmlu_like": 100, "tydiqa_like": 9 * 11}  # ~100 targets each


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ckpts", type=int, default=4)
    ap.add_argument("--shard-rows", type=int, default=50_000)
    ap.add_argument("--block-rows", type=int, default=16_384)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--actor-cpus", type=float, default=1.0, help="per actor; also its torch threads")
    ap.add_argument("--dir", default="/tmp/less_ray_bench_score")
    ap.add_argument("--keep", action="store_true", help="reuse a store written by an earlier run")
    ap.add_argument("--verify", choices=["on", "off", "both", "both-on-first"], default="on")
    ap.add_argument("--write-only", action="store_true", help="write the store and stop")
    ap.add_argument("--cold", action="store_true",
                    help="evict the pool stores' shards from the page cache before each score run (posix_fadvise "
                         "DONTNEED on these files only), so runs side by side start equally cold")
    ap.add_argument("--baseline-code", help="a checkout of the earlier less_ray to score side by side with")
    ap.add_argument("--baseline-dir", help="the store written by --baseline-code's own bench (--write-only)")
    ap.add_argument("--order", default="old,new,new,old", help="with --baseline-code: the runs, in order")
    args = ap.parse_args()
    root = Path(args.dir)
    ids = [f"cand{i:07d}" for i in range(args.n)]
    sources = [f"source{i % 10}" for i in range(args.n)]
    pool_file = root / "pool.jsonl"
    t0 = time.time()
    if not (args.keep and (root / f"pool_c{args.ckpts - 1}" / "manifest.json").exists()):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        write_jsonl((make_record(s, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], id=i)
                     for i, s in zip(ids, sources)), pool_file)
        for c in range(args.ckpts):
            rng = np.random.default_rng(c)
            for t, m in TASKS.items():
                subtasks = [f"{t}_s{j % 9}" for j in range(m)]
                write_store(root / f"{t}_c{c}", [f"{t}{j}" for j in range(m)], unit_rows(rng, m, args.dim),
                            kind="sgd", checkpoint=f"c{c}", subtasks=subtasks, task=t, dtype="float16")
            feats = np.empty((args.n, args.dim), dtype=np.float32)
            for lo in range(0, args.n, 100_000):  # bounded temporary memory while generating
                feats[lo:lo + 100_000] = unit_rows(rng, min(100_000, args.n - lo), args.dim)
            write_store(root / f"pool_c{c}", ids, feats, kind="adam", checkpoint=f"c{c}", sources=sources,
                        shard_rows=args.shard_rows, dtype="float16", avg_lr=2e-5 * (1 - c / args.ckpts),
                        input_path=str(pool_file))
            del feats
    t_write = time.time() - t0
    size_gb = store_gb(root)
    if args.write_only:
        print(f"store written in {t_write:.1f}s: {size_gb:.2f} GiB")
        return
    if args.baseline_code:
        compare(args, root)
        return
    t_gemm = None
    order = {"both": [False, True], "both-on-first": [True, False]}.get(args.verify, [args.verify == "on"])
    for verify in order:
        t_gemm = run_once(args, root, size_gb, t_write, verify, t_gemm)


def run_once(args, root, size_gb, t_write, verify, t_gemm):

    # score + select run in a fresh process, so its peak RSS is theirs, not the store writer's
    if args.cold:
        evict(root, args.ckpts)
    cached_gb = page_cache_gb(root, args.ckpts)
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        res = pool.apply(score_and_select, (str(root), args.ckpts, args.block_rows, args.actors, args.actor_cpus,
                                            verify))
    t_score, t_select, summary, driver_rss = res["score_s"], res["select_s"], res["summary"], res["rss_mb"]
    return _reference_and_print(args, root, size_gb, cached_gb, t_write, t_score, t_select, summary, driver_rss,
                                verify, t_gemm)


def shard_files(root: Path, ckpts: int | None = None) -> list[Path]:
    """The shard files (Arrow IPC, or Parquet of the earlier layout) of the pool stores, or of
    every store when `ckpts` is None."""
    stores = [root / f"pool_c{c}" for c in range(ckpts)] if ckpts is not None else sorted(root.iterdir())
    return [f for s in stores for ext in ("arrow", "parquet") for f in sorted((s / "shards").glob(f"part-*.{ext}"))]


def store_gb(root: Path) -> float:
    return sum(f.stat().st_size for f in shard_files(root)) / 2**30


def compare(args, root: Path) -> None:
    """Score the current store with this code and the baseline store with the baseline code,
    alternately, each in a fresh process; print each run and a summary."""
    here = Path(__file__).resolve().parents[1]
    code = {"new": (here, root), "old": (Path(args.baseline_code).resolve(), Path(args.baseline_dir))}
    t_gemm, rows = None, []
    for label in args.order.split(","):
        src, store = code[label]
        if args.cold:
            evict(root, args.ckpts)
            evict(Path(args.baseline_dir), args.ckpts)
        cached_gb = page_cache_gb(store, args.ckpts)
        print(f"## {label}: code {src}, store {store} ({store_gb(store):.2f} GiB); uptime:{uptime()}", flush=True)
        res = score_in_process(src, store, args)
        t_gemm = _reference_and_print(args, root, store_gb(store), cached_gb, 0.0, res["score_s"], res["select_s"],
                                      res["summary"], res["rss_mb"], True, t_gemm, {"layout": label,
                                                                                     "code": str(src)})
        sec = res["summary"]["seconds"]
        rows.append((label, t_gemm / res["score_s"], t_gemm / (res["score_s"] - sec["ray_start"]),
                     sec["score_actors"], res["rss_mb"], max(res["summary"]["actor_peak_rss_mb"].values())))
    print(f"## summary (uptime:{uptime()}); ratio = in-memory GEMM {t_gemm:.1f} s / score wall")
    print(f"{'run':>4} {'layout':>6} {'ratio':>7} {'ratio w/o ray start':>20} {'actors s':>9} "
          f"{'driver peak MB':>15} {'max actor peak MB':>18}")
    for i, (label, r, r2, act, drv, actor) in enumerate(rows, 1):
        print(f"{i:>4} {label:>6} {r:>7.3f} {r2:>20.3f} {act:>9.2f} {drv:>15.0f} {actor:>18.1f}")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.rstrip().split("load", 1)[1]
    except (OSError, IndexError):
        return " ?"


def score_in_process(src: Path, store: Path, args) -> dict:
    """`score_and_select` of the bench in `src`, in a fresh interpreter importing less_ray from `src`."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1] + '/bench'); from bench_score import score_and_select; "
            "r = score_and_select(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), "
            "float(sys.argv[6]), True); import less_ray; r['less_ray'] = less_ray.__file__; "
            "print('RESULT ' + json.dumps(r, default=float))")
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code, str(src), str(store), str(args.ckpts), str(args.block_rows),
                          str(args.actors), str(args.actor_cpus)], env=env, capture_output=True, text=True, cwd=src)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        raise RuntimeError(f"score run with {src} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    res = json.loads(line[-1][len("RESULT "):])
    if not res["less_ray"].startswith(str(src)):
        raise RuntimeError(f"the run meant for {src} imported less_ray from {res['less_ray']}")
    return res


def evict(root: Path, ckpts: int) -> None:
    for f in shard_files(root, ckpts):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def page_cache_gb(root: Path, ckpts: int) -> float | None:
    """GiB of the pool stores' shards resident in the page cache (None without util-linux fincore)."""
    import subprocess
    files = [str(f) for f in shard_files(root, ckpts)]
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return round(sum(int(x) for x in out.split()) / 2**30, 2)


def score_and_select(root: str, ckpts: int, block_rows: int, actors: int, actor_cpus: float, verify: bool = True) -> dict:
    # peak RSS sampled while this process works (ru_maxrss can carry the parent's high-water
    # mark across fork+exec)
    import threading

    import psutil
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.1)
    threading.Thread(target=sample, daemon=True).start()
    root = Path(root)
    t1 = time.time()
    summary = run_score(ScoreConfig(
        pool_stores=[str(root / f"pool_c{c}") for c in range(ckpts)],
        tasks=[TaskSpec(t, [str(root / f"{t}_c{c}") for c in range(ckpts)]) for t in TASKS],
        out=str(root / "scores"), block_rows=block_rows, min_actors=actors, max_actors=actors, actor_num_cpus=actor_cpus,
        num_cpus=2, verify=verify))
    t_score = time.time() - t1
    t2 = time.time()
    run_select(SelectConfig(scores=str(root / "scores"), top_p=0.05, sorted_csv=True, block_rows=block_rows))
    t_select = time.time() - t2
    import ray
    ray.shutdown()
    stop.set()
    return {"score_s": t_score, "select_s": t_select, "summary": summary, "rss_mb": peak[0] / 2**20}


def _reference_and_print(args, root, size_gb, cached_gb, t_write, t_score, t_select, summary, driver_rss, verify,
                         t_gemm=None, label=None) -> float:

    # Reference: one in-memory GEMM per checkpoint on the same data (features already decoded to
    # float32 in memory, all ~300 target rows, as LESS computes G_c V_cᵀ), timed on the same machine.
    from less_ray.store import iter_blocks, read_store
    if t_gemm is None:  # measured once per invocation
        t_gemm = 0.0
        for c in range(args.ckpts):
            v = np.concatenate([read_store(root / f"{t}_c{c}", verify=False)["features"] for t in TASKS])
            g = np.concatenate([b["features"] for b in iter_blocks(root / f"pool_c{c}", ("features",), 200_000,
                                                                   verify=False)])
            t = time.time()
            _ = g @ v.T
            t_gemm += time.time() - t
            del g, _
    rows = args.n * args.ckpts
    print(json.dumps({
        **(label or {}),
        "verify_on_read": verify,
        "actors": f"{args.actors} x {args.actor_cpus:g} CPU", "block_rows": args.block_rows, "pool": args.n, "dim": args.dim, "checkpoints": args.ckpts, "targets": TASKS, "store_gib": round(size_gb, 2),
        "pool_store_in_page_cache_gib": cached_gb,
        "store_write_s": round(t_write, 1),
        "score_wall_s": round(t_score, 1),
        "score_parts_s": summary["seconds"], "select_wall_s (top 5% + sorted.csv, 3 tasks)": round(t_select, 1),
        "score_rows_per_s": round(rows / t_score), "in_memory_gemm_s": round(t_gemm, 1),
        "in_memory_gemm_rows_per_s": round(rows / t_gemm),
        "throughput_ratio_score_vs_gemm": round(t_gemm / t_score, 3),
        "throughput_ratio_without_ray_start": round(t_gemm / (t_score - summary["seconds"]["ray_start"]), 3),
        "peak_rss_mb": {"driver": round(driver_rss), **{f"actor {k}": v for k, v in summary["actor_peak_rss_mb"].items()}},
        "note": "ratio > 1 is possible: score multiplies by per-subtask mean targets (ΣS=27 columns), "
                "the reference GEMM by all ~300 targets; the store is read from disk, the GEMM's input is in memory",
    }, indent=2))
    return t_gemm


if __name__ == "__main__":
    main()

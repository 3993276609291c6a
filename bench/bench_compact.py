"""Benchmark: scoring speed and bytes per stored dtype (float32, float16, int8, int4, sign).

One synthetic pool store per dtype (the same unit rows, N x d, one checkpoint, `recode`-equivalent
codes written by the store's own writer) and 3 target tasks of 32 subtask columns in all. Each
round times `ShardScorer.score_shard` (what a score actor does per shard: read, sha256 check,
decode, matmul, norm check, write the part) over every shard of each store, in-process, one
thread, page cache warm, dtypes interleaved; the best round is kept. Prints rows/s and the ratio
to float16 (LESS's stored dtype).

    nice python bench/bench_compact.py --n 20000 --dim 8192 --rounds 3 | tee bench/results/compact_score_cpu.txt
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import host_header  # noqa: E402

from less_ray.core.quantize import DTYPES, row_bytes  # noqa: E402
from less_ray.scoring.job import ShardScorer  # noqa: E402
from less_ray.testing.synthetic_store import write_store  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--shard-rows", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    print(host_header())
    print(f"# pool {args.n} x d={args.dim}, shards of {args.shard_rows}, 32 subtask columns, verify on, 1 thread")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = rng.standard_normal((32, args.dim)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_compact_"))
    ids = [f"e{i:07d}" for i in range(args.n)]
    stores = {}
    for dtype in DTYPES:
        t0 = time.perf_counter()
        stores[dtype] = write_store(root / dtype, ids, x, kind="adam", checkpoint="c", shard_rows=args.shard_rows,
                                    dtype=dtype)
        print(f"# wrote {dtype} store in {time.perf_counter() - t0:.1f} s", flush=True)
    tasks = [("a", slice(0, 10)), ("b", slice(10, 20)), ("c", slice(20, 32))]
    best = {d: float("inf") for d in DTYPES}
    for r in range(args.rounds):
        for dtype in DTYPES:
            scorer = ShardScorer([str(stores[dtype])], [m], tasks, str(root / f"parts_{dtype}"), block_rows=4096)
            (root / f"parts_{dtype}").mkdir(exist_ok=True)
            n_shards = len(list((stores[dtype] / "shards").glob("part-*.arrow")))
            t0 = time.perf_counter()
            for s in range(n_shards):
                scorer.score_shard(s)
            best[dtype] = min(best[dtype], time.perf_counter() - t0)
        print(f"# round {r + 1}: " + ", ".join(f"{d} {best[d]:.2f} s" for d in DTYPES), flush=True)
    ref = args.n / best["float16"]
    for dtype in DTYPES:
        on_disk = sum(f.stat().st_size for f in (stores[dtype] / "shards").glob("part-*.arrow")) / args.n
        rate = args.n / best[dtype]
        print(f"dtype={dtype} bytes_per_row={row_bytes(dtype, args.dim)} on_disk_per_row={on_disk:.0f} "
              f"score_rows_per_s={rate:.0f} vs_float16={rate / ref:.2f}x")


if __name__ == "__main__":
    main()

"""CPU kernels of the sparse JL projection, side by side (not a test).

SmolLM2-135M's LoRA r=128 q/k/v/o blocks (P = 14.7M: per layer q/o lora_A 128x576, lora_B 576x128,
k/v lora_B 192x128), a batch of --batch examples, d = 8192, one thread. Per s: the hash (index
computation, paid once per actor while the index cache holds) and each scatter kernel (warm
cache), interleaved over --rounds; s/example and ns per (example, coordinate, nonzero).

    python bench/bench_sparse_kernels.py > bench/results/sparse_kernels_cpu.txt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    import torch

    from less_ray.core.sparse_projection import SparseJLProjector
    torch.set_num_threads(1)
    sizes = []
    for _ in range(args.layers):
        sizes += [128 * 576, 576 * 128, 128 * 576, 192 * 128, 128 * 576, 192 * 128, 128 * 576, 576 * 128]
    P = sum(sizes)
    x = torch.randn(args.batch, max(sizes))
    print(f"# P = {P:,} in {len(sizes)} blocks, batch {args.batch}, d = 8192, one thread")
    kernels = ("scatter", "rows", "index_add")
    res = {}
    for s in (1, 2, 4):
        projs = {k: SparseJLProjector(P, 8192, seed=0, s=s, kernel=k) for k in kernels}
        t0 = time.perf_counter()
        projs["scatter"].indices(0, P)  # cold: the hash of every coordinate (then cached)
        res[(s, "hash (once per actor)")] = [(time.perf_counter() - t0)]
        for k in kernels[1:]:
            projs[k]._cache, projs[k]._cache_left = projs["scatter"]._cache, 0
        for r in range(args.rounds):
            for k in (kernels if r % 2 == 0 else kernels[::-1]):
                p = projs[k]
                acc = p.new_accumulator(args.batch, "cpu")
                t0 = time.perf_counter()
                off = 0
                for n in sizes:
                    p.accumulate(acc, x[:, :n], off)
                    off += n
                p.finish(acc)
                res.setdefault((s, k), []).append(time.perf_counter() - t0)
        del projs
    print(f"{'s':>2} {'kernel':<22} {'s/example (hash: s total)':<30} {'best ns/elem':>12}")
    for (s, k), ts in res.items():
        hashing = "hash" in k  # a one-off for the whole P: its total seconds
        per = ts if hashing else [t / args.batch for t in ts]
        ns = min(ts) / ((1 if hashing else args.batch) * P * s) * 1e9
        print(f"{s:>2} {k:<22} {' '.join(f'{t:.4f}' for t in per):<30} {ns:>12.2f}")


if __name__ == "__main__":
    main()

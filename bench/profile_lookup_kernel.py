"""Where one CPU projection pass of the sign-lookup kernel spends its time (not a test).

Times each stage of `SignLookup` by wrapping it: the hash words (`_words_np`), the 64x64 bit
transposes (`_patterns`), the [256, 8] table fills, the `embedding_bag` gathers, and the rest
(index building, accumulator adds, copies). Hash and transposes are paid once per pass;
tables and gathers grow with the number of examples, so the per-example cost at large batch
is the floor that a bigger projection batch cannot go under.

    python bench/profile_lookup_kernel.py --batches 16 64 128 --rows 131072
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import less_ray.core.projection as projection  # noqa: E402
import less_ray.core.sign_lookup as sign_lookup  # noqa: E402

STAGES: dict[str, float] = {}


def timed(fn, stage):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        STAGES[stage] = STAGES.get(stage, 0.0) + time.perf_counter() - t
        return out
    return wrapper


class _TimedF:
    """torch.nn.functional with embedding_bag timed (sign_lookup calls it as F.embedding_bag)."""

    embedding_bag = staticmethod(timed(torch.nn.functional.embedding_bag, "gather"))

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ab", action="store_true", help="sub-batched tables vs one table, side by side")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.ab:
        return compare_sub_batches(args)
    projection._words_np = timed(projection._words_np, "hash")
    sign_lookup.SignLookup._patterns = timed(sign_lookup.SignLookup._patterns, "transpose")
    sign_lookup.SignLookup._fill_table = timed(sign_lookup.SignLookup._fill_table, "table")
    sign_lookup.F = _TimedF()
    entries = args.rows * args.dim
    print(f"{args.rows:,} rows x {args.dim} columns, {args.threads} thread(s): wall ns per matrix entry "
          f"of one pass, by stage, then per example")
    for batch in args.batches:
        x = torch.randn(batch, args.rows)
        proj = projection.RademacherProjector(args.rows, args.dim)
        proj.project(x[:, :4096])  # buffers
        STAGES.clear()
        t = time.perf_counter()
        proj.project(x)
        total = time.perf_counter() - t
        parts = {k: v / entries * 1e9 for k, v in STAGES.items()}
        parts["rest"] = total / entries * 1e9 - sum(parts.values())
        print(f"batch {batch:4d}: pass {total / entries * 1e9:.3f} ns/entry ("
              + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
              + f"); per example {total / entries * 1e9 / batch:.4f} ns/entry")


def compare_sub_batches(args) -> None:
    sub = sign_lookup.SUB_BATCH
    print(f"{args.rows:,} rows x {args.dim} columns, {args.threads} thread(s): CPU ns per matrix entry and "
          f"example; tables of {sub} examples (as shipped) vs one table for the whole batch, interleaved")
    for batch in args.batches:
        x = torch.randn(batch, args.rows)
        for rep in range(args.reps):
            cost = {}
            for label, size in ((f"sub-batches of {sub}", sub), ("whole batch", 1 << 30)):
                sign_lookup.SUB_BATCH = size
                proj = projection.RademacherProjector(args.rows, args.dim)
                proj.project(x[:, :4096])  # buffers
                t = time.process_time()
                proj.project(x)
                cost[label] = (time.process_time() - t) / (args.rows * args.dim) * 1e9 / batch
            sign_lookup.SUB_BATCH = sub
            a, b = cost.values()
            print(f"batch {batch:4d} rep {rep}: " + ", ".join(f"{k} {v:.4f}" for k, v in cost.items())
                  + f" -> {b / a:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: each selector on a 10,000-example sample of the real pool (../shared/data), with
BBH's 81 CoT exemplars as the targets of the targeted selectors; prints seconds per 10,000 examples.

The pool: every candidate adapter except the GSM8K train file (its problems are inside Flan-v2
CoT), then a seeded sample of --n. Timed per selector: one `run_selector` call (score folder +
top 5% selection + sorted.csv) in this process, the embedded Ray already started. The embedding
job (MiniLM, pool + targets, one Ray Data job) is timed on its own first; RDS, k-center and
task-agnostic k-center then reuse its stores, so their lines are the cost beyond embedding
(the `embed+` line adds it back). With --model-dir, RDS on the model's last-layer embeddings
runs on a --model-n subsample and is scaled to 10,000.

Run: flock /tmp/less_ray_bench.lock nice -n 5 python bench/bench_selectors.py [--n 10000]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

SELECTORS = ["random", "full", "rds", "kcenter", "kcenter_all"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--selectors", nargs="+", default=SELECTORS)
    p.add_argument("--model-dir", default=None, help="a causal LM folder: also time RDS on its embeddings")
    p.add_argument("--model-n", type=int, default=500)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder, removed)")
    args = p.parse_args()

    from less_ray.data.io import write_jsonl
    from less_ray.data.sources import CANDIDATE_SOURCES, load_candidates
    from less_ray.data.targets import build_targets
    from less_ray.ray_runtime import ensure_ray
    from less_ray.selectors import get_selector, load_selector_config, run_selector
    from less_ray.selectors.embeddings import embed_pool_and_targets

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_selectors_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    names = [n for n in CANDIDATE_SOURCES if n != "gsm8k"]
    records = load_candidates(None, names).records
    sample = random.Random(args.seed).sample(records, min(args.n, len(records)))
    pool = work / "pool.jsonl"
    write_jsonl(sample, pool)
    targets = work / "bbh.jsonl"
    write_jsonl(build_targets("bbh"), targets)
    n = len(sample)
    per10k = 10000 / n
    print(f"pool: {n} of {len(records)} candidates ({', '.join(names)}), seed {args.seed}; targets: bbh (81); "
          f"data prep {time.time() - t:.1f}s", flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load avg "
          f"{os.getloadavg()[0]:.1f}; embedded Ray num_cpus={args.num_cpus}", flush=True)
    ensure_ray(None, args.num_cpus)

    # top_p: each selector's default (5%; full: 100%)
    common = {"pool": str(pool), "num_cpus": args.num_cpus, "max_actors": args.num_cpus, "shard_rows": 1000}
    emb = str(work / "embeddings")
    if {"rds", "kcenter", "kcenter_all"} & set(args.selectors):
        cfg = load_selector_config("rds", None, {**common, "targets": {"bbh": str(targets)}, "out": str(work / "x"),
                                                 "embeddings": emb, "embed_max_tokens": 256})
        t = time.time()
        embed_pool_and_targets(cfg)
        embed_s = time.time() - t
        print(f"{'embed (MiniLM)':24s} {embed_s:8.1f} s  {embed_s * per10k:8.1f} s / 10k examples", flush=True)
    for name in args.selectors:
        sel = get_selector(name)
        opts = {**common, "out": str(work / name)}
        if sel.targeted:
            opts["targets"] = {"bbh": str(targets)}
        if "embeddings" in {f for f in sel.config_cls.__dataclass_fields__}:
            opts.update({"embeddings": emb, "embed_max_tokens": 256})
        t = time.time()
        s = run_selector(name, load_selector_config(name, None, opts))
        secs = time.time() - t
        extra = f"   embed+{name}: {(secs + embed_s) * per10k:.1f} s / 10k" if "embeddings" in opts else ""
        print(f"{name:24s} {secs:8.1f} s  {secs * per10k:8.1f} s / 10k examples  "
              f"(selected {sum(v['selected'] for v in s['select'].values())}){extra}", flush=True)
    if args.model_dir:
        small = work / "pool_small.jsonl"
        write_jsonl(sample[: args.model_n], small)
        cfg = load_selector_config("rds", None, {
            **common, "pool": str(small), "targets": {"bbh": str(targets)}, "out": str(work / "rds_model"),
            "encoder": "model", "model": args.model_dir, "embed_max_tokens": 256, "shard_rows": 100})
        t = time.time()
        run_selector("rds", cfg)
        secs = time.time() - t
        print(f"{'rds (model embeddings)':24s} {secs:8.1f} s  {secs * 10000 / args.model_n:8.1f} s / 10k examples "
              f"(on {args.model_n} examples + 81 targets, {Path(args.model_dir).name})", flush=True)
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

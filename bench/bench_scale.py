"""Benchmark: the pipeline's selection half end to end at growing N (extract -> score -> select),
one checkpoint, the tiny demo model (`less_ray.demo.build_demo_model`, LoRA r=4 over it), the demo
pool generator's records, d=1024 fp16, 24 demo targets; one line per N:

    N=<n> extract_s=<s> score_s=<s> select_s=<s> peak_rss_gb=<g> store_gb=<g> per_candidate_ms=<ms>

peak_rss_gb: the largest resident set of any one process of the run (the stage's driver, Ray's
processes, every actor), sampled every 0.5 s; store_gb: the pool store's bytes on disk.
Each stage runs in its own process (`python bench/bench_scale.py --stage ...`) with the embedded
Ray the stage starts, as `less-ray extract/score/select` would.

Resumable: a finished N's line is kept in `--log` and skipped on a rerun; an extraction killed
half-way resumes from its verified shards (the store's own resume). Run in the background:
    nice -n 10 python bench/bench_scale.py --work /work/scale_run --sizes 10000 100000 1000000 \
        --log bench/results/scale_cpu.txt
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

DIM = 1024
TOP_P = 0.05


def host_header() -> str:
    from less_ray.core.precision import cpu_flags, cpu_model, matmul_gflops
    import torch
    torch.set_num_threads(1)
    flags = cpu_flags()
    return (f"# host: {cpu_model()}, {os.cpu_count()} cores, amx_bf16={'amx_bf16' in flags}, "
            f"avx512_bf16={'avx512_bf16' in flags}; one-thread 2048^2 matmul fp32 "
            f"{matmul_gflops(torch.float32, 2048):.0f} / bf16 {matmul_gflops(torch.bfloat16, 2048):.0f} GFLOP/s")


def peak_rss_watch(stop: threading.Event, out: list) -> None:
    """Max RSS of any single process of this user's run (this process's descendants)."""
    import psutil
    me = psutil.Process()
    best = 0
    while not stop.is_set():
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        for p in procs:
            try:
                best = max(best, p.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(0.5)
    out.append(best)


def timed_stage(args: list[str], ledger: Path) -> tuple[float, int]:
    """Run `bench_scale.py --stage ...` in its own process: (seconds, peak single-process RSS).
    `ledger` keeps the seconds and peak of earlier attempts, updated every 10 s while it runs, so
    a stage killed with the session and resumed later is timed whole (its store resumes too)."""
    before = json.loads(ledger.read_text()) if ledger.exists() else {"seconds": 0.0, "peak": 0, "attempts": 0}
    stop, peak = threading.Event(), []
    t = threading.Thread(target=peak_rss_watch, args=(stop, peak), daemon=True)
    t.start()
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, __file__, *args])
    while proc.poll() is None:
        time.sleep(1)
        if int(time.time() - t0) % 10 == 0:
            ledger.write_text(json.dumps({**before, "seconds": before["seconds"] + time.time() - t0,
                                          "attempts": before["attempts"] + 1}))
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"stage {args[-1]} failed ({proc.returncode})")
    total = {"seconds": before["seconds"] + time.time() - t0, "peak": max(before["peak"], peak[0]),
             "attempts": before["attempts"] + 1}
    ledger.write_text(json.dumps(total))
    return total["seconds"], total["peak"]


def prepare(work: Path, n: int) -> dict[str, Path]:
    from less_ray.data.demo import generate_pool, write_demo_data
    from less_ray.demo import build_demo_model
    from less_ray.data.io import write_jsonl
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    model, ckpt = work / "model", work / "ckpt"
    if not (model / "config.json").exists():
        build_demo_model(model, n_pool=400)
    if not (ckpt / "adapter_model.safetensors").exists():
        make_lora_checkpoint(model, ckpt, r=4)
    targets = work / "targets" / "targets.jsonl"
    if not targets.exists():
        info = write_demo_data(work / "targets", n_pool=200, target_family="arithmetic", n_targets=24, seed=1)
        Path(info["targets"]["path"]).rename(targets)
    pool = work / f"n{n}" / "pool.jsonl"
    if not pool.exists():
        pool.parent.mkdir(parents=True, exist_ok=True)
        tmp = pool.with_suffix(".tmp")
        write_jsonl(generate_pool(n, seed=n), tmp)
        tmp.rename(pool)
    return {"model": model, "ckpt": ckpt, "targets": targets, "pool": pool}


def stage(name: str, work: Path, n: int) -> None:
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    from less_ray.selection.select import SelectConfig, run_select
    f = prepare(work, n)
    run = work / f"n{n}"
    common = dict(checkpoint=str(f["ckpt"]), dims=[DIM], max_actors=2, actor_num_cpus=1)
    if name == "extract":
        run_extract(ExtractConfig(data=str(f["pool"]), out=str(run / "pool_store"), kind="adam", **common))
    elif name == "targets":
        run_extract(ExtractConfig(data=str(f["targets"]), out=str(run / "target_store"), kind="sgd", **common))
    elif name == "score":
        run_score(ScoreConfig(pool_stores=[str(run / "pool_store" / f"dim{DIM}")],
                              tasks=[TaskSpec("arithmetic", [str(run / "target_store" / f"dim{DIM}")])],
                              out=str(run / "scores"), max_actors=2, actor_num_cpus=1))
    elif name == "select":
        run_select(SelectConfig(scores=str(run / "scores"), top_p=TOP_P))


def du_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/work/scale_run"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--log", type=Path, default=Path("bench/results/scale_cpu.txt"))
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        stage(args.stage, args.work, args.n)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.log.exists():
        done = {line.split()[0] for line in args.log.read_text().splitlines() if line.startswith("N=")}
    else:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(host_header() + f"\n# d={DIM} fp16, 1 checkpoint, tiny demo model, 2 actors x 1 CPU, "
                            f"top {TOP_P:.0%}; bench/bench_scale.py\n")
    for n in args.sizes:
        if f"N={n}" in done:
            continue
        prepare(args.work, n)  # the pool file and model: outside the timed stages
        base = ["--work", str(args.work), "--n", str(n), "--stage"]
        run = args.work / f"n{n}"
        ext_s, ext_rss = timed_stage([*base, "extract"], run / "extract.time.json")
        timed_stage([*base, "targets"], run / "targets.time.json")
        score_s, score_rss = timed_stage([*base, "score"], run / "score.time.json")
        sel_s, sel_rss = timed_stage([*base, "select"], run / "select.time.json")
        attempts = json.loads((run / "extract.time.json").read_text())["attempts"]
        store = du_gb(args.work / f"n{n}" / "pool_store" / f"dim{DIM}")
        per = 1000 * (ext_s + score_s + sel_s) / n
        line = (f"N={n} extract_s={ext_s:.1f} score_s={score_s:.1f} select_s={sel_s:.1f} "
                f"peak_rss_gb={max(ext_rss, score_rss, sel_rss) / 2**30:.2f} store_gb={store:.3f} "
                f"per_candidate_ms={per:.3f}" + (f" extract_attempts={attempts}" if attempts > 1 else ""))
        print(line, flush=True)
        with open(args.log, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()

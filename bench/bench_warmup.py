"""Tokens/s of the Ray Train + DeepSpeed warmup beside plain single-process training, one run.

Both train the same LoRA on the same warmup examples in the same micro-batches (the plan of
less_ray.train.plan), for the same epochs: the plain loop runs every rank's micro-batches
in one process with all cores as torch threads; the Ray run spreads them over workers of
`--cpus-per-worker` CPUs each. Tokens are non-padding input tokens.
Reported: training throughput (the epochs' loop time, rank 0's clock) and end to end
(run_warmup wall time: worker start-up, model load, DeepSpeed init, checkpoints, export).

    python bench/bench_warmup.py            # ~2-5 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path


def plain_training(model_dir: str, data: Path, args, accumulation: int) -> tuple[int, float, float, str]:
    """(tokens, train seconds, total seconds incl. load, note) of a single-process LoRA run;
    stops after --plain-max-seconds (tokens/s then covers the steps done)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from less_ray.core.formatting import FormatConfig, collate, tokenize_records
    from less_ray.data.io import read_records
    from less_ray.models import load_model_and_tokenizer
    from less_ray.train.plan import lr_factor, micro_batches, steps_per_epoch, warmup_steps

    t_start = time.perf_counter()
    model, tok = load_model_and_tokenizer(model_dir)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=2 * args.lora_r,
                                             lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    ex, _ = tokenize_records(read_records(data).records, tok, FormatConfig("tulu", args.max_len))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    n, w = len(ex), args.workers
    total = steps_per_epoch(n, args.per_device * accumulation * w) * args.epochs
    warm = warmup_steps(total, 0.03)
    model.train()
    tokens, step, t0, note = 0, 0, time.perf_counter(), ""
    for epoch in range(1, args.epochs + 1):
        if note:
            break
        ranks = [micro_batches(n, 0, epoch, args.per_device, accumulation, w, r) for r in range(w)]
        for s in range(len(ranks[0]) // accumulation):
            for g in opt.param_groups:
                g["lr"] = args.lr * lr_factor(step, total, warm)
            opt.zero_grad()
            for a in range(accumulation):
                for r in range(w):
                    b = collate([ex[i] for i in ranks[r][s * accumulation + a]], tok.pad_token_id)
                    (model(**b).loss / (accumulation * w)).backward()
                    tokens += int(b["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if time.perf_counter() - t0 > args.plain_max_seconds:
                note = f"  [stopped at the time cap after {step}/{total} steps]"
                break
    t1 = time.perf_counter()
    return tokens, t1 - t0, t1 - t_start, note


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-pool", type=int, default=2000)
    p.add_argument("--percentage", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--per-device", type=int, default=4)
    p.add_argument("--effective-batch", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--plain-threads", default=f"1,{os.cpu_count()}",
                   help="torch threads of the plain baseline, comma-separated; the ratio uses the fastest")
    p.add_argument("--plain-max-seconds", type=float, default=120,
                   help="stop a plain run after this long (on a shared machine, torch threads that "
                        "outnumber free cores can slow down many-fold)")
    p.add_argument("--model", help="HF model folder (default: a tiny Llama built here)")
    p.add_argument("--work-dir", help="default: a temp folder")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from less_ray.config import load_config
    from less_ray.data.demo import generate_pool
    from less_ray.data.io import write_jsonl
    from less_ray.demo import TinyModelConfig, build_demo_model
    from less_ray.train import WarmupConfig, read_warmup_manifest, run_warmup
    from less_ray.train.plan import accumulation_steps

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_warmup_"))
    model_dir = args.model or str(build_demo_model(
        work / "model", n_pool=args.n_pool,
        model=TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=2 * args.hidden)))
    pool = work / "pool.jsonl"
    write_jsonl(generate_pool(args.n_pool, seed=0), pool)
    acc = accumulation_steps(args.effective_batch, args.per_device, args.workers)
    cfg = load_config(WarmupConfig, None, {
        "pool": str(pool), "out": str(work / "warmup"), "base_model": model_dir, "percentage": args.percentage,
        "max_seq_length": args.max_len, "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0},
        "optim": {"epochs": args.epochs, "lr": args.lr},
        "scaling": {"num_workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                    "effective_batch_size": args.effective_batch, "per_device_batch_size": args.per_device},
        "deepspeed": {"zero_stage": args.zero_stage}, "ray": {"controller_failure_limit": 0}})

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = run_warmup(cfg)  # starts (and stops) an embedded Ray
    ray_wall = time.perf_counter() - t0
    states = [json.loads((Path(c["path"]) / "state.json").read_text())
              for c in read_warmup_manifest(out)["checkpoints"]]
    ray_tokens = sum(s["train"]["tokens"] for s in states)
    ray_train_s = sum(s["train"]["seconds"] for s in states)

    plain = {}
    for threads in sorted({int(t) for t in args.plain_threads.split(",")}):
        torch.set_num_threads(threads)
        plain[threads] = plain_training(model_dir, out / "warmup_data.jsonl", args, acc)
        assert plain[threads][3] or plain[threads][0] == ray_tokens, (plain[threads][0], ray_tokens)
    load1 = os.getloadavg()[0]

    n = states[0]["n_examples"]
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}; 1-min load average {load0:.1f} before, {load1:.1f} after")
    print(f"model: {model_dir if args.model else f'tiny Llama hidden {args.hidden}, {args.layers} layers'}, "
          f"LoRA r={args.lora_r} on q/k/v/o, fp32")
    print(f"data: {n} warmup examples ({args.percentage:.0%} of {args.n_pool}), {args.epochs} epochs, "
          f"{ray_tokens} tokens, micro-batch {args.per_device}, accumulation {acc}, "
          f"{math.ceil(n / args.effective_batch)} steps/epoch")
    for threads, (tokens, train_s, wall, note) in plain.items():
        print(f"plain torch, 1 process x {threads} threads:   train {tokens / train_s:9.1f} tok/s "
              f"({train_s:.1f} s)   end-to-end {tokens / wall:9.1f} tok/s ({wall:.1f} s){note}")
    best = max(plain, key=lambda t: plain[t][0] / plain[t][1])
    plain_tokens, plain_train_s, plain_wall, _ = plain[best]
    print(f"ray+deepspeed ZeRO {args.zero_stage}, {args.workers} workers x {args.cpus_per_worker:g} CPU: "
          f"train {ray_tokens / ray_train_s:9.1f} tok/s ({ray_train_s:.1f} s)   "
          f"end-to-end {ray_tokens / ray_wall:9.1f} tok/s ({ray_wall:.1f} s)")
    ray_rate, ray_e2e = ray_tokens / ray_train_s, ray_tokens / ray_wall
    print(f"ratio ray/plain tokens/s (vs the fastest plain, {best} threads): "
          f"train {ray_rate / (plain_tokens / plain_train_s):.2f}x, "
          f"end-to-end {ray_e2e / (plain_tokens / plain_wall):.2f}x")


if __name__ == "__main__":
    main()

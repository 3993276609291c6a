"""Training steps/s in fp32 and in bf16 on this host, side by side, and how far bf16's AdamW moments
move from fp32's (not a test).

Both precisions build the model as warmup and target training do (`train.engine.build_model`):
fp32 is the model and LoRA in fp32; bf16 is the frozen base in bf16 with the LoRA parameters, their
gradients and AdamW's state in fp32 (peft keeps adapters fp32 over a bf16 base). Each step is one
micro-batch of real records (bench_peers' tight batches, SmolLM2-135M, LoRA r=128 q/k/v/o): forward,
HF's token-mean loss, backward, clipping at 1.0, torch AdamW. Rounds interleave the precisions
(this machine is shared and noisy); each round restarts both from the same LoRA init, so after the
last round the moments of the same steps can be compared.

    python bench/bench_train_precision.py --rounds 2 > bench/results/train_precision_cpu.txt
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--n", type=int, default=32, help="real records (bench_peers' selection)")
    ap.add_argument("--batch", type=int, default=16, help="most examples per micro-batch (bench_peers' tight cut)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import json

    import torch

    import bench_peers
    from less_ray.core.precision import matmul_gflops
    from less_ray.train.config import LoraSettings
    from less_ray.train.engine import build_model
    torch.set_num_threads(args.threads)
    print(bench_peers.host_header(matmul_gflops(torch.float32, 2048), matmul_gflops(torch.bfloat16, 2048)))
    with tempfile.TemporaryDirectory() as tmp:
        ns = argparse.Namespace(model=args.model, n=args.n, batch=args.batch, max_len=512, seed=0, s=1,
                                dattri_dim=34, batching="tight")
        spec = bench_peers.prepare(ns, Path(tmp))
        data = json.loads(Path(spec["examples"]).read_text())
    def pad(rows, key, value):
        width = max(len(r[key]) for r in rows)
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

    batches = []
    for b in spec["batches"]:
        rows = [data[i] for i in b]
        batches.append({"input_ids": pad(rows, "input_ids", spec["pad"]),
                        "labels": pad(rows, "labels", -100),
                        "attention_mask": pad([{"m": [1] * len(r["input_ids"])} for r in rows], "m", 0)})
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    lora = LoraSettings(dropout=0.0)  # deterministic steps: the two precisions see the same computation
    print(f"# {args.model}: LoRA r={lora.r} alpha={lora.alpha} on {','.join(lora.target_modules)}; "
          f"{len(batches)} steps, one per batch above, its warm-up batch included (sizes "
          f"{[len(b) for b in spec['batches']]}, {tokens} tokens), {args.threads} thread(s), "
          f"torch AdamW lr 2e-5, clip 1.0; {args.rounds} interleaved rounds")
    dtypes = {"fp32": "float32", "bf16": "bfloat16"}
    seconds = {k: [] for k in dtypes}
    state = {}
    for r in range(args.rounds):
        for name, dtype in dtypes.items():
            model, _ = build_model(args.model, dtype, lora, seed=0, gradient_checkpointing=False)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
            t0 = time.perf_counter()
            for b in batches:
                loss = model(**b).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - t0)
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            state[name] = {n: (opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
                           for n, p in zip(names, params)}
            print(f"round {r} {name}: {len(batches) / seconds[name][-1]:.3f} steps/s "
                  f"({tokens / seconds[name][-1]:.0f} tokens/s, {seconds[name][-1]:.1f} s); "
                  f"param dtypes trained {sorted({str(p.dtype) for p in params})}, frozen "
                  f"{sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad})}", flush=True)
            del model, opt
    best = {k: min(v) for k, v in seconds.items()}
    for k in dtypes:
        print(f"{k}: best {len(batches) / best[k]:.3f} steps/s, {tokens / best[k]:.0f} tokens/s")
    # the moments after the same steps: bf16 against fp32, over all LoRA parameters
    for i, what in enumerate(("exp_avg", "exp_avg_sq")):
        a = torch.cat([state["bf16"][n][i].flatten() for n in state["fp32"]])
        b = torch.cat([state["fp32"][n][i].flatten() for n in state["fp32"]])
        rel = ((a - b).norm() / b.norm()).item()
        cos = (torch.dot(a, b) / (a.norm() * b.norm())).item()
        print(f"moments {what} after {len(batches)} steps, bf16 vs fp32: relative L2 {rel:.4f}, cosine {cos:.5f}")
    print(f"bf16 vs fp32 training: {best['fp32'] / best['bf16']:.2f}x steps/s")


if __name__ == "__main__":
    main()

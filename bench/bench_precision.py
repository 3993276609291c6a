"""bf16 vs fp32 extraction on this CPU: feature difference and speed (not a test).

SmolLM2-135M, LoRA r=128 q/k/v/o (seeded random lora_B, Adam moments from real gradient
statistics as in bench_selection_agreement.py), N real pool records from ../shared/data,
d = 8192 sparse JL. Precisions, as ExtractConfig.precision sets them up:
- fp32: model and gradients in fp32;
- bf16: the whole PeftModel in bf16 (LESS's), per-example LoRA gradients formed in fp32;
- less: bf16 and the adam feature rounded to fp16 before the projection (LESS's cast).
Printed: per-example cosine between each precision's (adam and sgd) features and fp32's;
s/example of each, interleaved over rounds; one-thread matmul peaks (2048^2, fp32 and bf16).

    python bench/bench_precision.py > bench/results/precision_cpu.txt
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_peak(dtype, n=2048, reps=5):
    """Best-of-reps GFLOP/s of one n x n x n matmul (the kernel `precision: auto` probes with)."""
    from less_ray.core.precision import matmul_gflops
    return matmul_gflops(dtype, n, reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--s", type=int, default=1)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from less_ray.core.formatting import FormatConfig, collate, tokenize_messages
    from less_ray.core.grads import LoraGradientComputer, Moments
    from less_ray.core.sparse_projection import SparseJLProjector
    from less_ray.data.sources import load_candidates
    from less_ray.models import load_model_and_tokenizer
    torch.set_num_threads(args.threads)

    print(f"# one-thread matmul 2048^2: fp32 {matmul_peak(torch.float32):.0f} GFLOP/s, "
          f"bf16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s", flush=True)

    def build(dtype):
        base, tok = load_model_and_tokenizer(args.model)
        model = get_peft_model(base, LoraConfig(r=128, lora_alpha=512, lora_dropout=0.1,
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        gen = torch.Generator().manual_seed(0)
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.002)
        model.eval()
        return model.to(dtype), tok  # fp32 here; bf16 is a copy of it

    import copy
    m32, tok = build(torch.float32)
    m16 = copy.deepcopy(m32).to(torch.bfloat16)  # the same lora_A (peft draws it from the global RNG)
    fmt = FormatConfig(max_seq_length=args.max_len)
    rng = random.Random(0)
    recs = list(load_candidates().records)
    rng.shuffle(recs)
    ex = []
    for r in recs:
        t = tokenize_messages(r.messages, tok, fmt, example_id=r.id)
        if hasattr(t, "input_ids"):
            ex.append(t)
        if len(ex) == args.n + 16:
            break
    warm, ex = ex[:16], sorted(ex[16:], key=lambda e: len(e.input_ids))
    print(f"# SmolLM2-135M, LoRA r=128, {len(ex)} real records (mean {sum(len(e.input_ids) for e in ex) / len(ex):.0f} "
          f"tokens, max {args.max_len}), batches of {args.batch}, d = 8192 sjlt s={args.s}, {args.threads} thread(s)",
          flush=True)
    c32 = LoraGradientComputer(m32)
    g = c32.per_example_grads(collate(warm, tok.pad_token_id))["grads"]
    m_flat, v_flat = g.mean(0), (g * g).mean(0)
    del g
    mom, off = Moments(c32.names, [], []), 0
    for size, shape in zip(c32.sizes, c32.shapes):
        mom.exp_avg.append(m_flat[off:off + size].reshape(shape).clone())
        mom.exp_avg_sq.append(v_flat[off:off + size].reshape(shape).clone())
        off += size
    proj = SparseJLProjector(c32.num_params, 8192, seed=0, s=args.s)
    computers = {"fp32": c32, "bf16": LoraGradientComputer(m16),
                 "less": LoraGradientComputer(m16, feature_cast=torch.float16)}
    batches = [collate(ex[a:a + args.batch], tok.pad_token_id) for a in range(0, len(ex), args.batch)]

    def run(name, kind):
        return torch.cat([computers[name].features(b, kind, proj, moments=mom)["features"][8192] for b in batches])

    for name in computers:  # warm-up (and the projector's index cache)
        computers[name].features(batches[0], "adam", proj, moments=mom)
    times = {k: [] for k in computers}
    feats = {}
    for r in range(args.rounds):
        names = list(computers) if r % 2 == 0 else list(reversed(list(computers)))
        for name in names:
            t0 = time.perf_counter()
            feats[(name, "adam")] = run(name, "adam")
            times[name].append((time.perf_counter() - t0) / len(ex))
    for name in computers:
        feats[(name, "sgd")] = run(name, "sgd")
    print(f"{'precision':<10} {'s/example (rounds)':<26} {'vs fp32':>8} {'cos adam min/mean':>18} {'cos sgd min/mean':>17}")
    for name in computers:
        ca = (feats[(name, "adam")] * feats[("fp32", "adam")]).sum(1)
        cs = (feats[(name, "sgd")] * feats[("fp32", "sgd")]).sum(1)
        ts = times[name]
        print(f"{name:<10} {' '.join(f'{t:.3f}' for t in ts):<26} {min(times['fp32']) / min(ts):>7.2f}x "
              f"{ca.min():>8.5f}/{ca.mean():.5f} {cs.min():>8.5f}/{cs.mean():.5f}")
    print(f"# one-thread matmul 2048^2 again: fp32 {matmul_peak(torch.float32):.0f} GFLOP/s, "
          f"bf16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s")


if __name__ == "__main__":
    main()

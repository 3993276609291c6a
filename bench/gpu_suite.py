"""The GPU suite (bench/gpu_suite.sh runs it; not a test): pure-torch core only, nothing downloaded.

1. the device and its measured bf16 (and fp32) matmul peak;
2. the extractor on SmolLM2-135M's shapes (random weights, random tokens of mixed lengths), the
   model in bf16 as LESS's, LoRA r=128 q/k/v/o, d = 8192, per projection (Rademacher, sjlt):
   ours (batched backward, per-example blocks, the projector fed as the backward goes) vs a
   LESS-style loop (batch 1, `loss.backward()`, p.grad concatenated, projected every 16 with the
   same projector): examples/s, the ratio, and ours' achieved FLOP rate (torch's flop_registry
   count of the gradient pass) against the measured bf16 peak;
3. the CPU-vs-device equality of both projections (same seed: the same features);
4. scoring: 1M pool rows x d=1024 (bf16) against 3 tasks' subtask-mean targets, mean/max and the
   top 5%, in memory (bench/bench_score.py needs Ray; this is its GEMM part).
--device cpu runs the same code at small sizes (tests/test_gpu_suite.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=512,
                 tie_word_embeddings=True)


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(arch: dict, rank: int, device: str, dtype):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**arch))
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=4 * rank, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    from bench_extract_core import random_lora_state
    moments = random_lora_state(model)
    model.to(device=device, dtype=dtype).eval()
    return model, moments.to(device)


def examples(n: int, vocab: int, min_len: int, max_len: int, seed: int = 0):
    """Random tokens; the first ~40% of each example is the (unlabelled) prompt."""
    from less_ray.core.formatting import IGNORE_INDEX, TokenizedExample
    rng = random.Random(seed)
    out = []
    for i in range(n):
        T = rng.randint(min_len, max_len)
        ids = [rng.randrange(1, vocab) for _ in range(T)]
        cut = max(1, int(0.4 * T))
        out.append(TokenizedExample(str(i), ids, [IGNORE_INDEX] * cut + ids[cut:], False))
    return out


def projector(kind: str, P: int, dim: int):
    from less_ray.core.projection import RademacherProjector
    from less_ray.core.sparse_projection import SparseJLProjector
    return RademacherProjector(P, dim, seed=0) if kind == "rademacher" else SparseJLProjector(P, dim, seed=0, s=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="folder for results.json")
    ap.add_argument("--n", type=int, default=None, help="examples for ours (default: 512 on GPU, 6 on CPU)")
    ap.add_argument("--n-loop", type=int, default=None, help="examples for the batch-1 loop")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--score-rows", type=int, default=None)
    args = ap.parse_args()

    import torch

    from bench_extract_core import BETAS, EPS, PROJECT_INTERVAL, SMOL_ARCH, flop_counter, less_loop, matmul_peak
    from less_ray.core.formatting import collate
    from less_ray.core.grads import LoraGradientComputer
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu for the fallback")
    arch, rank, dim = (SMOL_ARCH, 128, 8192) if gpu else (TINY_ARCH, 8, 256)
    n = args.n or (512 if gpu else 6)
    n_loop = args.n_loop or (48 if gpu else 3)
    batch = args.batch or (32 if gpu else 3)
    proj_batch = 256 if gpu else 6
    dtype = torch.bfloat16 if gpu else torch.float32
    results = {"device": torch.cuda.get_device_name() if gpu else platform.processor() or "cpu",
               "torch": torch.__version__, "arch": "SmolLM2-135M shapes" if gpu else "tiny", "rank": rank,
               "dim": dim, "dtype": str(dtype)}
    print(f"# device: {results['device']}, torch {torch.__version__}, {results['arch']}, LoRA r={rank}, d={dim}, "
          f"model {dtype}", flush=True)

    # 1. peaks
    peak_bf16 = matmul_peak(args.device, torch.bfloat16, n=8192 if gpu else 512)
    peak_fp32 = matmul_peak(args.device, torch.float32, n=8192 if gpu else 512)
    results.update(peak_bf16=peak_bf16, peak_fp32=peak_fp32)
    print(f"matmul peak: bf16 {peak_bf16 / 1e12:.1f} TFLOP/s, fp32 {peak_fp32 / 1e12:.1f} TFLOP/s", flush=True)

    # 2. extraction
    model, moments = build(arch, rank, args.device, dtype)
    computer = LoraGradientComputer(model)
    P = computer.num_params
    ex = examples(n, arch["vocab_size"], 64 if gpu else 8, 512 if gpu else 48)
    order = sorted(range(n), key=lambda i: len(ex[i].input_ids))
    batches = [collate([ex[i] for i in order[a:a + batch]], 0) for a in range(0, n, batch)]
    tokens = sum(len(e.input_ids) for e in ex)
    print(f"P = {P:,} LoRA parameters; {n} examples, {tokens / n:.0f} tokens on average, batches of {batch}; "
          f"the loop: {n_loop} examples, projected every {PROJECT_INTERVAL}", flush=True)
    with flop_counter() as fc:
        for b in batches[:1]:
            computer.run(b, lambda k, g: None)
    grad_flops_per_token = fc.total / sum(int(b["attention_mask"].sum()) for b in batches[:1])
    for kind in ("rademacher", "sjlt"):
        proj = projector(kind, P, dim)
        computer.features(batches[0], "adam", proj, moments=moments, betas=BETAS, eps=EPS)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        # as the extraction stage: the dense projector's passes serve proj_batch examples (one
        # matrix generation each); the sparse one takes each batch as its blocks arrive
        group = max(1, proj_batch // batch)
        for a in range(0, len(batches), group):
            computer.features_grouped(batches[a:a + group], "adam", proj, moments=moments, betas=BETAS, eps=EPS)
        sync(args.device)
        ours = (time.perf_counter() - t0) / n
        loop_ex = [ex[i] for i in order[::max(1, n // n_loop)][:n_loop]]
        less_loop(model, loop_ex[:2], moments, proj, args.device)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        less_loop(model, loop_ex, moments, proj, args.device)
        sync(args.device)
        loop = (time.perf_counter() - t0) / len(loop_ex)
        loop_tokens = sum(len(e.input_ids) for e in loop_ex) / len(loop_ex)
        # the loop's examples are a spread of the same lengths; compare per token as well
        rate = grad_flops_per_token * tokens / n / ours
        r = {"ours_ex_per_s": 1 / ours, "loop_ex_per_s": 1 / loop, "speedup": loop / ours,
             "speedup_per_token": (loop / loop_tokens) / (ours / (tokens / n)),
             "achieved_flops": rate, "fraction_of_bf16_peak": rate / peak_bf16}
        results[kind] = r
        print(f"{kind:<10} ours {1 / ours:8.1f} ex/s | LESS-style loop {1 / loop:7.1f} ex/s | "
              f"{loop / ours:6.1f}x ({r['speedup_per_token']:.1f}x per token) | gradient pass "
              f"{rate / 1e12:.2f} TFLOP/s = {100 * rate / peak_bf16:.1f}% of the bf16 peak", flush=True)
    del model

    # 3. CPU vs device projection
    if gpu:
        x = torch.randn(4, 1 << 21)
        for kind in ("rademacher", "sjlt"):
            a = projector(kind, x.shape[1], 8192).project(x)[8192].double()
            b = projector(kind, x.shape[1], 8192).project(x.to(args.device))[8192].double().cpu()
            err = ((a - b).norm() / a.norm()).item()
            results[f"cpu_vs_gpu_{kind}"] = err
            print(f"CPU vs {args.device} {kind}: relative difference {err:.2e} ({'OK' if err < 1e-5 else 'DIFFERENT'})",
                  flush=True)
    else:
        print("CPU vs GPU projection: skipped (no GPU)", flush=True)

    # 4. scoring GEMM
    rows = args.score_rows or (1_000_000 if gpu else 20_000)
    d = 1024 if gpu else 64
    g = torch.Generator(device="cpu").manual_seed(0)
    pool = torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1).to(args.device, torch.bfloat16)
    subtasks = [27, 57, 9]  # bbh, mmlu, tydiqa
    tgt = [torch.nn.functional.normalize(torch.randn(s, d, generator=g), dim=1).to(args.device, torch.bfloat16)
           for s in subtasks]
    sync(args.device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        tops = []
        for t in tgt:
            s = (pool @ t.T).float().max(dim=1).values  # subtask means precomputed: [subtasks, d]
            tops.append(torch.topk(s, max(1, int(0.05 * rows))).indices)
        sync(args.device)
        best = min(best, time.perf_counter() - t0)
    results["score_seconds"] = best
    print(f"score: {rows:,} x d={d} pool vs {sum(subtasks)} subtask means of 3 tasks, max + top 5%: "
          f"{best:.3f} s ({rows / best / 1e6:.1f} M rows/s)", flush=True)

    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Which projection selects like the exact (unprojected) LESS ranking? (not a test)

Real SmolLM2-135M features of real examples: a pool of N records drawn (seeded) from the
candidate sources in ../shared/data, and BBH targets (3 exemplars each of a few subtasks).
LoRA r=128 on q/k/v/o (P = 14.7M) with a seeded random lora_B; Adam moments built from real
gradient statistics (m = mean, v = mean square of the sgd gradients of 16 other pool records),
so the adam transform is as uneven across coordinates as after a warmup.

Per pool example the full unit adam feature (P floats) is computed once and then
- exact: its cosine with every full unit target (sgd) feature, no projection;
- rademacher: LESS's dense +-1/sqrt(d) projection (d = 8192);
- sjlt s=1,2,4: the sparse JL projection (d = 8192).
LESS's score (mean over a subtask's targets, max over subtasks) ranks the pool per method;
printed: top-5% / top-10% overlap with the exact ranking and with the dense one, Spearman of
the scores against exact, and the mean absolute error of the pool x target cosines.

    python bench/bench_selection_agreement.py --n 160 > bench/results/selection_agreement_cpu.txt
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--subtasks", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--target-max-len", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pass-rows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-dense", action="store_true",
                    help="skip the dense Rademacher projection (on a busy 2-core machine its CPU kernel "
                         "costs ~10 s per example in passes of 8)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from less_ray.core.formatting import FormatConfig, collate, tokenize_messages
    from less_ray.core.grads import LoraGradientComputer, Moments
    from less_ray.core.projection import IdentityProjector, RademacherProjector
    from less_ray.core.sparse_projection import SparseJLProjector
    from less_ray.data.sources import load_candidates
    from less_ray.data.targets import build_targets
    from less_ray.models import load_model_and_tokenizer
    torch.set_num_threads(args.threads)
    t_start = time.time()

    base, tok = load_model_and_tokenizer(args.model)
    model = get_peft_model(base, LoraConfig(r=128, lora_alpha=512, lora_dropout=0.1,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    gen = torch.Generator().manual_seed(args.seed)
    for n, p in model.named_parameters():
        if p.requires_grad and "lora_B" in n:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.002)
    model.eval()
    computer = LoraGradientComputer(model)
    P = computer.num_params
    fmt = FormatConfig(max_seq_length=args.max_len)

    def tokenized(records, fmt=fmt):
        out = []
        for r in records:
            t = tokenize_messages(r.messages, tok, fmt, example_id=r.id)
            if hasattr(t, "input_ids"):
                out.append(t)
        return out

    rng = random.Random(args.seed)
    recs = list(load_candidates().records)
    rng.shuffle(recs)
    pool = tokenized(recs[:args.n + 40])
    warm, pool = pool[:16], pool[16:16 + args.n]
    bbh = build_targets("bbh")
    subtasks = sorted({r.subtask for r in bbh})
    rng.shuffle(subtasks)
    subtasks = subtasks[:args.subtasks]
    targets_r = [r for r in bbh if r.subtask in subtasks]
    targets = tokenized(targets_r, FormatConfig(max_seq_length=args.target_max_len))
    assert len(targets) == len(targets_r), "a target lost its answer to truncation"
    groups = [[i for i, r in enumerate(targets_r) if r.subtask == s] for s in subtasks]
    print(f"# SmolLM2-135M, LoRA r=128 q/k/v/o, P = {P:,}, d = {args.dim}, pool {len(pool)} real records "
          f"(max {args.max_len} tokens), targets: BBH {subtasks} ({len(targets)} exemplars), "
          f"{args.threads} thread(s)", flush=True)
    print("# pool sources:", dict(sorted(__import__("collections").Counter(
        recs[i].source for i in range(args.n + 40)).items())), flush=True)

    # moments from real gradient statistics
    g = computer.per_example_grads(collate(warm, tok.pad_token_id))["grads"]
    m_flat, v_flat = g.mean(0), (g * g).mean(0)
    del g
    mom, off = Moments(computer.names, [], []), 0
    for size, shape in zip(computer.sizes, computer.shapes):
        mom.exp_avg.append(m_flat[off:off + size].reshape(shape).clone())
        mom.exp_avg_sq.append(v_flat[off:off + size].reshape(shape).clone())
        off += size

    ident = IdentityProjector(P)
    projectors = {} if args.no_dense else {"rademacher": RademacherProjector(P, args.dim, seed=args.seed)}
    for s in (1, 2, 4):
        projectors[f"sjlt s={s}"] = SparseJLProjector(P, args.dim, seed=args.seed, s=s)

    def full_features(examples, kind):
        out = torch.empty(len(examples), P)  # filled in place: one [N, P] buffer, no concatenation
        for a in range(0, len(examples), args.batch):
            b = collate(examples[a:a + args.batch], tok.pad_token_id)
            out[a:a + args.batch] = computer.features(b, kind, ident, moments=mom)["features"][P]
        return out

    def unit(x):
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)

    T = full_features(targets, "sgd")
    tproj = {k: unit(p.project(T)[args.dim]) for k, p in projectors.items()}
    cos = {k: [] for k in ["exact", *projectors]}
    proj_time = {k: 0.0 for k in projectors}
    order = sorted(range(len(pool)), key=lambda i: len(pool[i].input_ids))
    t_grad = 0.0
    for a in range(0, len(order), args.pass_rows):
        idx = order[a:a + args.pass_rows]
        t0 = time.perf_counter()
        F = full_features([pool[i] for i in idx], "adam")
        t_grad += time.perf_counter() - t0
        cos["exact"].append((idx, (F @ T.T).double()))
        for k, p in projectors.items():
            t0 = time.perf_counter()
            f = p.project(F)[args.dim]
            proj_time[k] += time.perf_counter() - t0
            cos[k].append((idx, (unit(f) @ tproj[k].T).double()))
        print(f"# {a + len(idx)}/{len(pool)} done, {time.time() - t_start:.0f} s", flush=True)
        del F

    def matrix(parts):
        out = torch.zeros(len(pool), len(targets), dtype=torch.float64)
        for idx, c in parts:
            out[idx] = c
        return out

    C = {k: matrix(v) for k, v in cos.items()}
    score = {k: torch.stack([c[:, gi].mean(1) for gi in groups], 1).max(1).values for k, c in C.items()}

    def top(s, frac):
        k = max(1, int(frac * len(s)))
        return set(torch.argsort(-s, stable=True)[:k].tolist())

    def spearman(a, b):
        ra = torch.argsort(torch.argsort(a)).double()
        rb = torch.argsort(torch.argsort(b)).double()
        return float(np.corrcoef(ra.numpy(), rb.numpy())[0, 1])

    n5, n10 = max(1, int(0.05 * len(pool))), max(1, int(0.10 * len(pool)))
    print(f"\n# gradients (adam, full P, batches of {args.batch}): {t_grad / len(pool):.3f} s/example")
    print(f"# chance overlap: top-5% {n5 / len(pool):.3f}, top-10% {n10 / len(pool):.3f}")
    print(f"{'method':<12} {'top5%_vs_exact':>14} {'top10%_vs_exact':>15} {'top5%_vs_dense':>14} "
          f"{'spearman_exact':>14} {'cos_MAE':>8} {'proj_s/ex':>9}")
    for k in ["exact", *projectors]:
        o5 = len(top(score[k], .05) & top(score["exact"], .05)) / n5
        o10 = len(top(score[k], .10) & top(score["exact"], .10)) / n10
        od = len(top(score[k], .05) & top(score["rademacher"], .05)) / n5 if "rademacher" in score else float("nan")
        mae = (C[k] - C["exact"]).abs().mean().item()
        pt = proj_time.get(k, 0.0) / len(pool)
        print(f"{k:<12} {o5:>14.3f} {o10:>15.3f} {od:>14.3f} {spearman(score[k], score['exact']):>14.3f} "
              f"{mae:>8.4f} {pt:>9.3f}")
    print(f"# total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()

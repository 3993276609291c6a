"""The cost of keeping RDS+'s embedding in LESS's gradient pass, beside a pass of its own (not a test).

Side by side, interleaved, on the same batches (demo-pool conversations, LESS's tokens):
- grads:          `LoraGradientComputer.features` (adam, d=8192 sparse JL projection), as extract runs it;
- grads+embedding: the same with pooling=weighted_mean (the lm_head's input pooled in that forward);
- own pass:       the RDS+ embedding alone (`selectors.embeddings.TextEncoder`, the model's forward
                  with weighted_mean pooling, no gradient), what rds_plus costs without the shared pass.
Prints the host (CPU flags, fp32 and bf16 matmul peaks), seconds per example of each, and the
ratios: added = (grads+embedding) / grads - 1, and own pass / grads.

    python bench/bench_one_pass_embedding.py --model DIR [--n 64] [--batch 8] [--reps 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    from peft import LoraConfig, get_peft_model

    from less_ray.core.formatting import FormatConfig, collate, tokenize_records
    from less_ray.core.grads import LoraGradientComputer, Moments
    from less_ray.core.precision import cpu_flags, cpu_model, matmul_gflops
    from less_ray.core.projectors import make_projector
    from less_ray.data.demo import generate_pool
    from less_ray.models import load_model_and_tokenizer
    from less_ray.selectors.embeddings import TextEncoder
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    print(f"# host: {cpu_model()}; amx_bf16={'amx_bf16' in flags} avx512_bf16={'avx512_bf16' in flags}; "
          f"fp32 {matmul_gflops(torch.float32):.0f} GFLOP/s, bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s "
          f"({args.threads} threads, 1024^2); torch {torch.__version__}", flush=True)
    base, tok = load_model_and_tokenizer(args.model)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"]))
    for n_, w in model.named_parameters():
        if "lora_B" in n_:
            torch.nn.init.normal_(w, std=0.02)
    pool = generate_pool(args.n, seed=1)
    examples, _ = tokenize_records(pool, tok, FormatConfig("less", 2048))
    examples.sort(key=lambda e: len(e.input_ids))
    batches = [collate(examples[i:i + args.batch], tok.pad_token_id) for i in range(0, len(examples), args.batch)]
    plain = LoraGradientComputer(model)
    pooled = LoraGradientComputer(model, pooling="weighted_mean")
    projector = make_projector("sjlt", plain.num_params, [8192], 0, 1)
    named = [(n_, w) for n_, w in model.named_parameters() if w.requires_grad]
    moments = Moments([n_ for n_, _ in named], [torch.zeros_like(w) for _, w in named],
                      [torch.full_like(w, 1e-6) for _, w in named])
    encoder = TextEncoder("model", args.model, 2048, "less", args.batch, pooling="weighted_mean")
    rows = [r.to_dict() for r in pool]
    runs = {"grads": lambda: [plain.features(b, "adam", projector, moments) for b in batches],
            "grads+embedding": lambda: [pooled.features(b, "adam", projector, moments) for b in batches],
            "own pass": lambda: encoder.embed(rows)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    runs["grads"]()  # warm-up
    for _ in range(args.reps):
        for name, fn in runs.items():  # interleaved: the machine's noise falls on all alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tokens = sum(len(e.input_ids) for e in examples)
    print(f"# model {args.model}; {len(examples)} examples, {tokens} tokens, batch {args.batch}, {args.reps} reps")
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:16s} {1e3 * v / len(examples):8.2f} ms/example  (runs: {', '.join(f'{x:.2f}' for x in times[k])} s)")
    print(f"added by the embedding: {100 * (med['grads+embedding'] / med['grads'] - 1):+.1f}% of the gradient pass")
    print(f"a pass of its own: {med['own pass'] / med['grads']:.3f} x the gradient pass")


if __name__ == "__main__":
    main()

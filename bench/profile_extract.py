"""Where our extractor's time goes, per torch op (not a test): bench_peers' setup (SmolLM2-135M, LoRA
r=128 q/k/v/o, the same real records and batches, sjlt s=1, d=8192, adam features, one thread),
one untimed warm-up batch, then torch.profiler over the rest. Prints the op table and the share
of aten::mm with its achieved rate (FLOPs from torch's counter over the same batches) beside a
measured one-thread matmul peak at the same precision. --precision bf16 loads the model and LoRA in
bf16 (as bench_peers does); --attn picks the attention kernel (transformers' "sdpa" or "eager").

    python bench/profile_extract.py --n 32 --batching tight --precision bf16 > bench/results/profile_extract_cpu.txt
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batching", choices=["given", "tight"], default="tight")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    args = ap.parse_args()
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    import bench_peers
    from bench_extract_core import flop_counter
    from bench_precision import matmul_peak
    from less_ray.core.grads import LoraGradientComputer, Moments
    from less_ray.core.sparse_projection import SparseJLProjector
    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    peak = matmul_peak(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        ns = argparse.Namespace(model=args.model, n=args.n, batch=args.batch, max_len=512, seed=0, s=1,
                                dattri_dim=34, batching=args.batching)
        spec = bench_peers.prepare(ns, Path(tmp))
        data = json.loads(Path(spec["examples"]).read_text())
        base = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, attn_implementation=args.attn)
        model = PeftModel.from_pretrained(base, spec["adapter"], is_trainable=True).eval().to(dtype)
        moments = load_file(spec["moments"])
    comp = LoraGradientComputer(model)
    mom = Moments(comp.names, [moments[n + ".exp_avg"] for n in comp.names],
                  [moments[n + ".exp_avg_sq"] for n in comp.names])
    proj = SparseJLProjector(comp.num_params, 8192, seed=0, s=1)

    def pad(rows, key, value):
        width = max(len(r[key]) for r in rows)
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

    def batch(b):
        rows = [data[i] for i in b]
        return {"input_ids": pad(rows, "input_ids", spec["pad"]), "labels": pad(rows, "labels", -100),
                "attention_mask": pad([{"m": [1] * len(r["input_ids"])} for r in rows], "m", 0)}

    batches = [batch(b) for b in spec["batches"]]
    comp.features(batches[0], "adam", proj, moments=mom)
    with flop_counter() as fc:
        for b in batches[1:]:
            comp.features(b, "adam", proj, moments=mom)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:]:
            comp.features(b, "adam", proj, moments=mom)
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    total = sum(e.self_cpu_time_total for e in table) / 1e6
    mm = sum(e.self_cpu_time_total for e in table if e.key == "aten::mm") / 1e6
    mm_flops = fc.by_op.get("mm", 0.0)
    print(f"# {args.precision}, attention {args.attn}: {total / sum(len(b) for b in spec['batches'][1:]):.3f} s/example profiled")
    print(f"# one-thread {args.precision} matmul 2048^2 peak {peak:.0f} GFLOP/s; profiled {total:.1f} s, aten::mm {mm:.1f} s "
          f"({100 * mm / total:.0f}%); mm FLOPs {mm_flops / 1e9:.0f} G -> {mm_flops / mm / 1e9:.0f} GFLOP/s "
          f"in aten::mm ({100 * mm_flops / mm / 1e9 / peak:.0f}% of the peak); all counted FLOPs "
          f"{fc.total / 1e9:.0f} G in {total:.1f} s (profiler overhead included)")


if __name__ == "__main__":
    main()

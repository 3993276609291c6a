"""Examples/s of the batched extractor vs a LESS-style loop (not a test).

LESS-style loop (less/data_selection/collect_grad_reps.py, gradient_type adam): one
example at a time, `model(**batch).loss.backward()`, concatenate `p.grad` of the LoRA
parameters, Adam transform on the full vector, `zero_grad`, and project every 16 examples
(`project_interval`, LESS's own default) with the same RademacherProjector as ours
(`--cpu-kernel`: its lookup or matmul CPU kernel, for both). Ours:
batches of similar length, one forward and one backward per batch; the per-example
(adam) gradients of `--proj-batch` examples (several batches) are kept in one fp32
buffer and projected in one pass (`features_grouped`), so each generation of the matrix
serves proj-batch examples instead of 16. Both see the same examples (demo-pool
conversations of 1-6 turns, up to max_len).

Two timings per method:
- "gradients": everything but the projection (a stand-in projector only sums the vectors);
- "end to end": with the d=8192 projection. Where one projection pass is too slow to run
  (SmolLM2 with r=128: P*d ~ 1.2e11 matrix entries), `--proj sampled` times one pass of 16
  examples (the loop's) and one of proj-batch examples (ours) on a slice of rows, scaled
  to P rows; the gradient CPU time plus pass/16 (loop) or pass/proj-batch (ours) per example.
Each (model, method) runs in its own process so that peak RSS (getrusage) is its own.

    python bench/bench_extract_core.py                   # tiny model, then SmolLM2 if /tmp/smol_model
    python bench/bench_extract_core.py --models tiny --n 64 --threads 2
    python bench/bench_extract_core.py --device cuda --models smol_arch --proj full --n 256 --proj-batch 256
      (SmolLM2-135M's shapes with random weights: the GPU machine cannot take the weights;
       on GPU the model runs in bf16, as LESS's, and FLOPs are counted against a measured
       bf16 matmul peak. Needs torch, transformers, peft, numpy and pyyaml only: no Ray,
       DeepSpeed or dacite, so it runs on the lent GPU machine's image as it is.)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMOL = Path("/tmp/smol_model")
# SmolLM2-135M's architecture (its config.json): "smol_arch" builds it with random weights, so a
# machine without the weights (the GPU machine takes 64 MiB) times the same FLOPs
SMOL_ARCH = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0)
PROJECT_INTERVAL = 16  # LESS's default
BETAS, EPS = (0.9, 0.999), 1e-8


def make_examples(tokenizer, n: int, max_len: int, seed: int = 0):
    """Mixed-length multi-turn conversations: 1-6 demo-pool records joined, up to max_len tokens."""
    from less_ray.core.formatting import FormatConfig, tokenize_messages
    from less_ray.data.demo import generate_pool
    pool = generate_pool(max(400, 8 * n), seed=seed)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        turns = [m for r in rng.sample(pool, rng.randint(1, 6)) for m in r.messages if m["role"] != "system"]
        ex = tokenize_messages(turns, tokenizer, FormatConfig(max_seq_length=max_len), example_id=str(len(out)))
        if hasattr(ex, "input_ids"):
            out.append(ex)
    return out


def random_lora_state(model):
    """Seeded random lora_B (in place; peft starts it at zero, which makes every lora_A gradient
    zero) and random Adam moments of every LoRA parameter, on CPU."""
    import torch

    from less_ray.core.grads import Moments
    gen = torch.Generator().manual_seed(0)
    names, m, v = [], [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            if "lora_B" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            names.append(n)
            m.append(torch.randn(p.shape, generator=gen) * 1e-4)
            v.append(torch.rand(p.shape, generator=gen) * 1e-8)
    return Moments(names, m, v)


def build_model(name: str, rank: int, workdir: Path, device: str, dtype: str = "float32"):
    """PeftModel (eval) with random lora_B and random Adam moments: (model, tokenizer, moments)."""
    from peft import LoraConfig, get_peft_model

    from less_ray.demo import build_demo_model
    from less_ray.models import load_model_and_tokenizer
    if name == "tiny":
        path = build_demo_model(workdir / "tiny", n_pool=400)
    elif name == "smol_arch":  # SmolLM2-135M's shapes, random weights, the demo tokenizer
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        path = workdir / "smol_arch"
        LlamaForCausalLM(LlamaConfig(**SMOL_ARCH)).save_pretrained(path)
        AutoTokenizer.from_pretrained(build_demo_model(workdir / "tiny", n_pool=400)).save_pretrained(path)
    else:
        path = SMOL
    base, tok = load_model_and_tokenizer(path, dtype=dtype)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    moments = random_lora_state(model)
    model.to(device).eval()
    return model, tok, moments.to(device)


class NoProjection:
    """Stand-in projector for the "gradients" timing: only sums each block."""

    def __init__(self, dim_in):
        self.dim_in, self.dims = dim_in, [1]

    def new_accumulator(self, batch, device):
        import torch
        return torch.zeros(batch, 1, device=device)

    def accumulate(self, acc, x_block, row_offset):
        acc[:, 0] += x_block.sum(dim=1)  # uses the block, so nothing before it is skipped

    def finish(self, acc):
        return {1: acc}

    def project(self, x):
        return self.finish(x.sum(dim=1, keepdim=True))


def less_loop(model, examples, moments, projector, device):
    """Faithful to LESS's collect_grads (gradient_type adam), projection every 16 examples."""
    import torch

    from less_ray.core.grads import adam_feature
    params = [p for p in model.parameters() if p.requires_grad]
    m = torch.cat([t.reshape(-1) for t in moments.exp_avg])
    v = torch.cat([t.reshape(-1) for t in moments.exp_avg_sq])
    full, projected = [], []
    for i, e in enumerate(examples):
        loss = model(input_ids=torch.tensor([e.input_ids], device=device),
                     labels=torch.tensor([e.labels], device=device)).loss
        loss.backward()
        g = torch.cat([p.grad.view(-1) for p in params if p.grad is not None])
        full.append(adam_feature(g, m, v, BETAS, EPS))
        model.zero_grad()
        if len(full) == PROJECT_INTERVAL or i == len(examples) - 1:
            out = projector.project(torch.stack(full))
            projected.append({d: f / f.norm(dim=1, keepdim=True) for d, f in out.items()})
            full = []
    return {d: torch.cat([p[d] for p in projected]) for d in projected[0]}


def batched(model, examples, moments, projector, batch_size, proj_batch, pad_id):
    """Batches of similar length, proj_batch examples per projection pass (as the extraction
    stage does), results in input order."""
    import torch

    from less_ray.core.formatting import collate
    from less_ray.core.grads import LoraGradientComputer
    computer = LoraGradientComputer(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    outs = []
    for g in range(0, len(order), proj_batch):
        group = order[g:g + proj_batch]
        batches = [collate([examples[i] for i in group[s:s + batch_size]], pad_id)
                   for s in range(0, len(group), batch_size)]
        for res in computer.features_grouped(batches, "adam", projector, moments=moments, betas=BETAS, eps=EPS):
            outs.append(res["features"])
    inverse = torch.argsort(torch.tensor(order)).to(outs[0][next(iter(outs[0]))].device)
    return {d: torch.cat([o[d] for o in outs])[inverse] for d in outs[0]}


def child(args) -> dict:
    import torch

    from less_ray.core.projection import RademacherProjector
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, moments = build_model(args.model, args.rank, Path(tmp), args.device, args.dtype)
    examples = make_examples(tok, args.n, args.max_len)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def method(projector, batch_size=args.batch_size, proj_batch=args.proj_batch):
        if args.method == "loop":
            return lambda ex: less_loop(model, ex, moments, projector, args.device)
        return lambda ex: batched(model, ex, moments, projector, batch_size, proj_batch, tok.pad_token_id)

    def timed(run):
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        feats = run(examples)
        if cuda:
            torch.cuda.synchronize()
        return feats, time.perf_counter() - wall, time.process_time() - cpu

    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    method(NoProjection(P))(examples[:2])  # warm-up (allocator, lazy init)
    _, wall, cpu = timed(method(NoProjection(P)))
    res = {"model": args.model, "method": args.method, "n": len(examples), "P": P,
           "grad_s": wall, "grad_cpu_s": cpu,
           "mean_len": sum(len(e.input_ids) for e in examples) / len(examples),
           "max_len": max(len(e.input_ids) for e in examples)}
    if args.proj == "full":
        projector = RademacherProjector(P, args.dims, seed=0, cpu_kernel=args.cpu_kernel)
        feats, res["full_s"], res["full_cpu_s"] = timed(method(projector))
    else:
        # agreement on a small real projection (ours: two batches of 4, one pass); the pass
        # time from a slice of rows, in CPU seconds (with one thread: the work done,
        # whatever else runs on the machine)
        small = RademacherProjector(P, 64, seed=0, cpu_kernel=args.cpu_kernel)
        feats = method(small, batch_size=4, proj_batch=8)(examples[:8])
        rows = min(P, args.sample_rows)
        n_pass = PROJECT_INTERVAL if args.method == "loop" else args.proj_batch
        x = torch.randn(n_pass, rows, device=args.device)
        projector = RademacherProjector(rows, args.dims, seed=0, cpu_kernel=args.cpu_kernel)
        projector.project(x[:, :4096])  # warm-up
        t = time.process_time() if not cuda else time.perf_counter()
        projector.project(x)
        if cuda:
            torch.cuda.synchronize()
        res["pass_s"] = ((time.process_time() if not cuda else time.perf_counter()) - t) * P / rows
        res["pass_examples"] = n_pass
    if args.flops and args.method == "batched":
        with flop_counter() as counter:  # matmuls and attention of the gradient pass
            method(NoProjection(P))(examples)
        res["grad_flops"] = counter.total
        res["proj_flops"] = 2 * P * max(args.dims) * len(examples)  # the projection as a dense matmul
        res["matmul_peak_flops"] = matmul_peak(args.device, getattr(torch, args.dtype))
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["rss_after_load_mib"] = rss_loaded
    if cuda:
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    torch.save({d: f.cpu() for d, f in feats.items()}, args.feats_out)
    return res


def flop_counter():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class FlopCountMode(TorchDispatchMode):
        """FLOPs of every op torch's flop_registry knows (matmuls, attention), summed.
        (FlopCounterMode itself tracks modules with backward hooks that autograd.grad on a
        leaf, as the gradient computer does, does not support.)"""

        def __init__(self):
            super().__init__()
            self.total = 0
            self.by_op: dict[str, float] = {}  # "mm", "bmm", ... -> FLOPs

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                n = count(*args, **kwargs, out_val=out)
                self.total += n
                op = func._overloadpacket.__name__
                self.by_op[op] = self.by_op.get(op, 0) + n
            return out

    return FlopCountMode()


def matmul_peak(device: str, dtype, n: int | None = None, reps: int = 10) -> float:
    """Measured FLOP/s of a square matmul in `dtype` on `device` (the peak to compare against)."""
    import torch
    n = n or (8192 if device.startswith("cuda") else 1024)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def kernel_costs(threads: int, trak_ns: float, rows: int = 131072, width: int = 8192) -> list[str]:
    """CPU ns per matrix entry of one projection pass, both CPU kernels side by side (the
    float-tile matmul, the sign lookup), and for scale TRAK's BasicProjector generation, the
    projector LESS falls back to off-GPU (bernoulli_ then *2-1 on a float block)."""
    import torch

    from less_ray.core.projection import RademacherProjector
    torch.set_num_threads(threads)
    lines = []
    for batch in (PROJECT_INTERVAL, 64):
        x, cost = torch.randn(batch, rows), {}
        for kernel in ("matmul", "lookup"):
            p = RademacherProjector(rows, width, seed=0, cpu_kernel=kernel)
            p.project(x[:, :4096])  # warm: buffers
            t = time.process_time()
            p.project(x)
            cost[kernel] = (time.process_time() - t) / (rows * width) * 1e9
        lines.append(f"projection pass of {batch} examples, CPU ns per matrix entry ({rows:,} x {width}): "
                     f"matmul kernel {cost['matmul']:.2f}, lookup kernel {cost['lookup']:.2f} "
                     f"-> {cost['matmul'] / cost['lookup']:.2f}x")
    lines.append(f"for scale, TRAK-style generation alone (bernoulli_): {trak_ns:.2f} ns per entry")
    return lines


def trak_generation_ns(threads: int) -> float:
    """CPU ns per entry to regenerate a Rademacher block as TRAK's BasicProjector does (the
    projector LESS falls back to off-GPU): bernoulli_ then *2-1 on a float block."""
    import torch
    torch.set_num_threads(threads)
    block, gen = torch.empty(1 << 17, 128), torch.Generator().manual_seed(0)
    t = time.process_time()
    block.bernoulli_(0.5, generator=gen).mul_(2.0).sub_(1.0)
    return (time.process_time() - t) / block.numel() * 1e9


def run_child(model, method, cli, feats_out) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--method", method, "--n", str(cli.n),
           "--rank", str(cli.tiny_rank if model == "tiny" else cli.rank), "--max-len", str(cli.max_len),
           "--dtype", cli.dtype, *(["--flops"] if cli.flops else []),
           "--batch-size", str(cli.batch_size), "--proj-batch", str(cli.proj_batch),
           "--threads", str(cli.threads), "--device", cli.device, "--cpu-kernel", cli.cpu_kernel,
           "--proj", "full" if model == "tiny" else cli.proj,
           "--sample-rows", str(cli.sample_rows), "--feats-out", feats_out, "--dims", *map(str, cli.dims)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(model, res, args, agree) -> None:
    lo, ba = res["loop"], res["batched"]
    rank = args.tiny_rank if model == "tiny" else args.rank
    print(f"\n== {model}: LoRA r={rank} q/k/v/o, P={ba['P']:,}, {ba['n']} examples, "
          f"mean length {ba['mean_len']:.0f} (max {ba['max_len']}) ==")

    def line(label, key):
        n, cpu = ba["n"], key.replace("_s", "_cpu_s")
        print(f"{label}: loop {n / lo[key]:.2f} ex/s ({lo[key]:.1f} s wall, {lo[cpu]:.1f} s CPU), "
              f"batched {n / ba[key]:.2f} ex/s ({ba[key]:.1f} s wall, {ba[cpu]:.1f} s CPU) "
              f"-> {lo[key] / ba[key]:.2f}x wall, {lo[cpu] / ba[cpu]:.2f}x CPU time")

    line("gradients + adam, no projection", "grad_s")
    if "full_s" in ba:
        line(f"end to end, d={max(args.dims)}       ", "full_s")
    else:
        # CPU seconds: with one thread they are the work done, whatever else runs on the machine
        per_loop = lo["grad_cpu_s"] / ba["n"] + lo["pass_s"] / lo["pass_examples"]
        per_batched = ba["grad_cpu_s"] / ba["n"] + ba["pass_s"] / ba["pass_examples"]
        print(f"projection, one pass at d={max(args.dims)} (CPU s, timed on {min(ba['P'], args.sample_rows):,} "
              f"rows, scaled to P): loop {lo['pass_s']:.0f} s per {lo['pass_examples']} examples "
              f"({lo['pass_s'] / lo['pass_examples']:.2f} s/ex), batched {ba['pass_s']:.0f} s per "
              f"{ba['pass_examples']} examples ({ba['pass_s'] / ba['pass_examples']:.2f} s/ex)")
        print(f"end to end, per example (gradient CPU time + projection): loop {per_loop:.2f} s "
              f"({1 / per_loop:.3f} ex/s), batched {per_batched:.2f} s ({1 / per_batched:.3f} ex/s) "
              f"-> {per_loop / per_batched:.2f}x")
        # context, not the goal's ratio (that one gives both methods our projector): LESS off-GPU
        # projects with TRAK's BasicProjector, which regenerates the whole matrix every 16
        # examples; its generation alone is a lower bound on that projection's cost
        less_cpu = lo["grad_cpu_s"] / ba["n"] + args.trak_ns * 1e-9 * ba["P"] * max(args.dims) / PROJECT_INTERVAL
        print(f"for context: LESS's own CPU projector (TRAK BasicProjector, bernoulli_ regeneration at "
              f"{args.trak_ns:.1f} ns/entry every {PROJECT_INTERVAL} examples, the matmul not counted) would "
              f"make the loop >= {less_cpu:.0f} s/ex, i.e. ours >= {less_cpu / per_batched:.0f}x faster "
              f"than LESS's code path on this CPU (a different projector: not the same-projection ratio)")
    for m in ("loop", "batched"):
        gpu = f", peak GPU {res[m]['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in res[m] else ""
        x = res[m]
        print(f"peak RSS {m:8s} {x['peak_rss_mib']:.0f} MiB (after load {x['rss_after_load_mib']:.0f}){gpu}")
    d0, detail = agree
    print(f"max relative difference of the two methods' features: {detail} (d={d0})")
    if "grad_flops" in ba:
        per_ex = (ba["grad_flops"] + ba["proj_flops"]) / ba["n"]
        secs = ba["full_s"] if "full_s" in ba else ba["grad_cpu_s"] + ba["pass_s"] / ba["pass_examples"] * ba["n"]
        rate, peak = per_ex * ba["n"] / secs, ba["matmul_peak_flops"]
        print(f"FLOPs per example: {ba['grad_flops'] / ba['n'] / 1e9:.1f} G gradient pass (counted with torch's "
              f"flop_registry) + {ba['proj_flops'] / ba['n'] / 1e9:.1f} G projection (as a dense matmul); ours "
              f"achieved {rate / 1e12:.3f} TFLOP/s = {100 * rate / peak:.1f}% of the measured {args.dtype} matmul "
              f"peak {peak / 1e12:.3f} TFLOP/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "smol"], choices=["tiny", "smol", "smol_arch"])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--proj-batch", type=int, default=64,
                    help="examples per projection pass, ours (buffer proj-batch x P x 4 bytes)")
    ap.add_argument("--rank", type=int, default=128, help="LoRA r for SmolLM2")
    ap.add_argument("--tiny-rank", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--dims", type=int, nargs="+", default=[8192])
    ap.add_argument("--proj", choices=["full", "sampled"], default="sampled", help="SmolLM2 projection timing")
    ap.add_argument("--sample-rows", type=int, default=262144)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: steadier timings on a shared CPU, where OpenMP threads thrash)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on GPU, as LESS; float32 on CPU)")
    ap.add_argument("--flops", action="store_true", help="count FLOPs, measure the matmul peak (default on GPU)")
    ap.add_argument("--cpu-kernel", choices=["lookup", "matmul"], default="lookup",
                    help="the projector's CPU kernel, for both methods")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--method", default="batched")
    ap.add_argument("--feats-out", default="")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.flops = args.flops or args.device.startswith("cuda")
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch
    print(f"{args.device} ({os.cpu_count()} CPU cores, shared), {args.threads} torch thread(s), "
          f"torch {torch.__version__}; n={args.n}, batch {args.batch_size}, projection batch "
          f"{args.proj_batch}, max_len {args.max_len}, d={args.dims}, CPU kernel {args.cpu_kernel}; "
          f"the LESS loop projects every "
          f"{PROJECT_INTERVAL} (LESS's project_interval)")
    print(f"load average {open('/proc/loadavg').read().split()[:3]}")
    args.trak_ns = trak_generation_ns(args.threads) if args.device == "cpu" else float("nan")
    for model in args.models:
        if model == "smol" and not (SMOL / "config.json").exists():  # smol_arch needs no weights
            print(f"\nsmol: skipped ({SMOL} not found)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            res = {m: run_child(model, m, args, f"{tmp}/{m}.pt") for m in ("loop", "batched")}
            fl, fb = torch.load(f"{tmp}/loop.pt"), torch.load(f"{tmp}/batched.pt")
        d0 = next(iter(fl))
        diff = max(((fl[d0][i] - fb[d0][i]).norm() / fl[d0][i].norm()).item() for i in range(len(fl[d0])))
        detail = f"{diff:.1e}" + (f", first {len(fl[d0])} examples" if "pass_s" in res["batched"] else "")
        report(model, res, args, (d0, detail))
    if args.device == "cpu":  # after the children: a child's peak RSS counts its parent's at the fork
        print("\n" + "\n".join(kernel_costs(args.threads, args.trak_ns)))


if __name__ == "__main__":
    main()

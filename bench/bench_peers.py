"""Our extractor vs Bergson 2.5.1 and dattri-llm 0.1.0 (+ dattri 0.3.0) on this CPU (not a test).

Same work for all: SmolLM2-135M (`less-ray model smollm2 /tmp/smollm2`), LoRA r=128 alpha 512 on
q/k/v/o (P = 14.7M) with the same seeded lora_B, the same Adam second moments, the same N real
pool records from ../shared/data (tokenised once here, Tulu format, up to --max-len tokens), the
same batches (sorted by length, --batch examples), one torch thread, per-example gradients of
the mean token loss projected to d ~ 8192:
- ours: core.grads (batched backward, hooks, per-example blocks; a padded batch is cut by length
  into the sub-batches that compute the fewest positions) + the adam transform + sparse JL
  (projection: sjlt, s = --s), d = 8192; the projection's own time is measured inside;
- Bergson: InMemoryCollector (its per-module double-sided Rademacher projection, 6 x 6 per LoRA
  module: 240 modules x 36 = 8,640 dims) with AdamNormalizer (its Adam preconditioning);
- dattri-llm: HookManager + CaptureCallback, per-layer "dense" projection (dattri's rademacher
  projector) to 34 dims per LoRA module (8,160 dims), materialised per batch. No Adam transform
  is applied here (not wired: its capture path would need an optimizer), so dattri does slightly
  less work than ours and Bergson's.
Each peer runs in its own venv (installed here on first use under --cache, torch==2.13.0 pinned;
Bergson's torchvision/torchaudio dependencies break `import transformers` and are removed).
Methods run in separate processes, interleaved over --rounds (order rotated each round); each
process loads the model, runs one untimed warm-up batch, then times all N examples; peak RSS
is the process's own (getrusage). The last lines give our speed ratio against each peer.
--batching given hands every method the sorted sample cut every --batch examples (the padding a
user's batches carry, printed in the header); --batching tight hands every method the batches our
length cut would form, so nobody computes much padding and the ratio is one of compute alone.

    python bench/bench_peers.py --n 64 --rounds 2 | tee bench/results/peers_cpu.txt
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"bergson": ["bergson==2.5.1"], "dattri": ["dattri-llm==0.1.0", "dattri==0.3.0"]}
TORCH = "torch==2.13.0"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def ensure_venv(cache: Path, name: str) -> Path:
    py = cache / name / "bin" / "python"
    marker = cache / name / ".installed"
    if marker.exists():
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(cache / name)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", TORCH, *PEERS[name], "transformers", "peft",
                    "safetensors"], check=True)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)
    subprocess.run([str(py), "-c", "import torch, transformers, peft"], check=True)
    marker.write_text(TORCH + " " + " ".join(PEERS[name]))
    return py


# --- the workers (each runs in its own process; the peers' in their venvs) ------------------

COMMON = r'''
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
W = json.loads(open(sys.argv[1]).read())
base = AutoModelForCausalLM.from_pretrained(W["model"], dtype=getattr(torch, W["dtype"]))
model = PeftModel.from_pretrained(base, W["adapter"], is_trainable=True).eval()
model.to(getattr(torch, W["dtype"]))  # peft upcasts a LoRA on a bf16 base to fp32: the model and LoRA in one dtype
moments = load_file(W["moments"])
data = json.loads(open(W["examples"]).read())
batches = W["batches"]
def pad(rows, key, value):
    T = max(len(r[key]) for r in rows)
    return torch.tensor([r[key] + [value] * (T - len(r[key])) for r in rows])
def report(seconds, dim, extra=None):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print("RESULT " + json.dumps({"seconds": seconds, "n": sum(len(b) for b in batches[1:]), "dim": dim,
                                  "peak_rss_gb": rss, **(extra or {})}), flush=True)
'''

OURS = COMMON + r'''
sys.path.insert(0, W["root"])
from less_ray.core.grads import LoraGradientComputer, Moments
from less_ray.core.sparse_projection import SparseJLProjector
comp = LoraGradientComputer(model)
mom = Moments(comp.names, [moments[n + ".exp_avg"] for n in comp.names], [moments[n + ".exp_avg_sq"] for n in comp.names])
proj = SparseJLProjector(comp.num_params, 8192, seed=0, s=W["s"])
spent = [0.0]
inner = proj.accumulate
def timed(acc, x, off):
    t0 = time.perf_counter(); inner(acc, x, off); spent[0] += time.perf_counter() - t0
proj.accumulate = timed
positions = [0]  # what the model computes: rows x longest row of every (sub-)batch it runs
inner_run = comp.run
def counted(batch, *a, **kw):
    positions[0] += batch["input_ids"].numel(); return inner_run(batch, *a, **kw)
comp.run = counted
def run(b):
    rows = [data[i] for i in b]
    batch = {"input_ids": pad(rows, "input_ids", W["pad"]), "labels": pad(rows, "labels", -100),
             "attention_mask": pad([{"m": [1] * len(r["input_ids"])} for r in rows], "m", 0)}
    return comp.features(batch, "adam", proj, moments=mom)["features"][8192]
sys.path.insert(0, W["root"] + "/bench")
from bench_extract_core import flop_counter
with flop_counter() as fc:  # the warm-up batch, counted (matmuls and attention, torch's flop_registry)
    run(batches[0])
per_token = fc.total / positions[0]
spent[0] = positions[0] = 0.0
t0 = time.perf_counter()
for b in batches[1:]:
    run(b)
flops = per_token * positions[0]  # counts any padding left: computed, if not useful
report(time.perf_counter() - t0, 8192, {"projection_seconds": spent[0], "flops": flops, "positions": positions[0]})
'''

BERGSON = COMMON + r'''
import tempfile
from datasets import Dataset
from bergson import GradientProcessor, IndexConfig, InMemoryCollector
from bergson.collector.collector import CollectorComputer
from bergson.gradients import AdamNormalizer
mods = {n: m for n, m in model.base_model.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" in n}
norms = {}
for n, m in mods.items():
    key = "base_model." + n + ".weight"
    norms[n] = AdamNormalizer(moments[key + ".exp_avg_sq"].clone())
rows_all = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in data]
ds = Dataset.from_list(rows_all)
def run(bs):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = IndexConfig(run_path=tmp + "/run", projection_dim=6, loss_reduction="mean", token_batch_size=10 ** 6)
        os.makedirs(cfg.partial_run_path, exist_ok=True)
        proc = GradientProcessor(normalizers=norms, projection_dim=6, projection_type="rademacher")
        col = InMemoryCollector(model=model.base_model, cfg=cfg, processor=proc, data=ds,
                                target_modules=set(mods))
        CollectorComputer(model=model, data=ds, collector=col, batches=bs, cfg=cfg).run_with_collector_hooks(desc="bergson")
        return col
col = run(batches[:1])
g0 = next(iter(col.gradients.values()))
dim = sum(g[0].numel() for g in col.gradients.values())
t0 = time.perf_counter()
run(batches[1:])
report(time.perf_counter() - t0, dim, {"modules": len(mods)})
'''

DATTRI = COMMON + r'''
from dattri_llm import HookManager, HookManagerConfig
from dattri_llm.gradient.callbacks import CaptureCallback
cap = CaptureCallback()
hm = HookManager(model, config=HookManagerConfig(
    linear_io=[r"\.lora_[AB]\.default$"],
    projection_kwargs={"__default__": {"style": "dense", "proj_dim": W["dattri_dim"], "proj_max_batch_size": 16,
                                       "proj_type": "rademacher", "proj_seed": 0}}), callbacks=[cap])
def run(b):
    rows = [data[i] for i in b]
    ids, labels = pad(rows, "input_ids", W["pad"]), pad(rows, "labels", -100)
    mask = pad([{"m": [1] * len(r["input_ids"])} for r in rows], "m", 0)
    model.zero_grad(set_to_none=True)
    cap.record = None
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    y = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none", ignore_index=-100)
    loss = (tok.sum(1) / (y != -100).sum(1)).sum()
    loss.backward()
    g = cap.record.gradient.materialize()
    return g
with hm.collect():
    g = run(batches[0])
    dim = sum(v.shape[-1] for v in g.data.values())
    t0 = time.perf_counter()
    for b in batches[1:]:
        run(b)
    report(time.perf_counter() - t0, dim, {"modules": len(g.data)})
hm.remove()
'''


def prepare(args, work: Path) -> dict:
    """Examples, adapter and moments shared by every method."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from less_ray.core.formatting import FormatConfig, tokenize_messages
    from less_ray.data.sources import load_candidates
    from less_ray.models import load_model_and_tokenizer
    base, tok = load_model_and_tokenizer(args.model)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=128, lora_alpha=512, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    gen = torch.Generator().manual_seed(0)
    moments = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            if "lora_B" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.002)
            moments[n + ".exp_avg"] = torch.randn(p.shape, generator=gen) * 1e-4
            moments[n + ".exp_avg_sq"] = torch.rand(p.shape, generator=gen) * 1e-8
    model.save_pretrained(work / "adapter")
    save_file(moments, str(work / "moments.safetensors"))
    recs = list(load_candidates().records)
    random.Random(args.seed).shuffle(recs)
    fmt = FormatConfig(max_seq_length=args.max_len)
    ex = []
    for r in recs:
        t = tokenize_messages(r.messages, tok, fmt, example_id=r.id)
        if hasattr(t, "input_ids"):
            ex.append({"input_ids": list(t.input_ids), "labels": list(t.labels)})
        if len(ex) == args.n + args.batch:
            break
    warm, rest = ex[:args.batch], sorted(ex[args.batch:], key=lambda e: len(e["input_ids"]))
    ex = warm + rest
    if args.batching == "given":  # the sorted sample cut every --batch examples, as a user would
        cuts = [list(range(a, min(a + args.batch, len(ex)))) for a in range(args.batch, len(ex), args.batch)]
    else:  # tight: cut where our extractor would cut a batch (length_groups), handed to every method
        from less_ray.core.formatting import length_groups
        cuts = [[args.batch + i for i in g] for g in length_groups([len(e["input_ids"]) for e in rest], 64)]
    batches = [list(range(args.batch))] + cuts
    (work / "examples.json").write_text(json.dumps(ex))
    spec = {"model": str(Path(args.model).resolve()), "adapter": str(work / "adapter"),
            "moments": str(work / "moments.safetensors"), "examples": str(work / "examples.json"),
            "batches": batches, "pad": tok.pad_token_id, "root": str(ROOT), "s": args.s,
            "dattri_dim": args.dattri_dim}
    (work / "spec.json").write_text(json.dumps(spec))
    n_tok = [len(e["input_ids"]) for e in rest]
    padded = sum(len(b) * max(len(ex[i]["input_ids"]) for i in b) for b in batches[1:])
    how = (f"batches of {args.batch} sorted by length" if args.batching == "given" else
           f"'tight' batches of sizes {[len(b) for b in batches[1:]]} (our length cut over the sorted sample)")
    print(f"# {len(rest)} real pool records (seed {args.seed}), tokens mean {sum(n_tok) / len(n_tok):.0f} "
          f"max {max(n_tok)}, {how} (+1 untimed warm-up batch): {sum(n_tok)} tokens in {padded} padded "
          f"positions ({100 * (1 - sum(n_tok) / padded):.0f}% padding as handed to every method); "
          f"SmolLM2-135M, LoRA r=128 q/k/v/o, one thread", flush=True)
    return spec


def run_worker(py: Path, code: str, work: Path, name: str, dtype: str) -> dict:
    script = work / f"worker_{name}.py"
    script.write_text(code)
    spec = work / f"spec_{dtype}.json"
    spec.write_text(json.dumps({**json.loads((work / "spec.json").read_text()), "dtype": dtype}))
    t0 = time.time()
    p = subprocess.run(["nice", str(py), str(script), str(spec)], capture_output=True, text=True, env=ENV)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{name} ({dtype}) failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    out = json.loads(lines[-1][7:])
    out["wall"] = time.time() - t0
    return out


def host_header(fp32_peak: float, bf16_peak: float) -> str:
    """The CPU model, its bf16 matrix flags and both one-thread matmul peaks: which precision can
    be fast here is a property of the host, printed with every result."""
    import torch
    from less_ray.core.precision import MATRIX_FLAGS, cpu_flags, cpu_model
    flags = cpu_flags()
    marks = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in MATRIX_FLAGS)
    return (f"# host: {cpu_model()}; {marks}; torch {torch.__version__}\n"
            f"# one-thread matmul 2048^2 peak: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--cache", default=os.environ.get("LESS_RAY_PEERS_CACHE", "/tmp/less_ray_peers"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--s", type=int, default=1)
    ap.add_argument("--dattri-dim", type=int, default=34)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batching", choices=["given", "tight"], default="given",
                    help="given: every --batch sorted examples (padding as a user's batches carry it); "
                         "tight: the batches our length cut would form, so no method computes much padding")
    ap.add_argument("--only", nargs="*", default=["ours", "bergson", "dattri"])
    ap.add_argument("--precisions", nargs="*", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                    help="the dtype of every method's model and LoRA (Bergson's own `precision` setting is "
                         "the model's dtype; ours: the bf16 fast path of core.grads)")
    args = ap.parse_args()
    import torch
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    from bench_precision import matmul_peak
    torch.set_num_threads(1)
    bf16_peak = matmul_peak(torch.bfloat16)
    print(host_header(matmul_peak(torch.float32), bf16_peak), flush=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    pys = {"ours": Path(sys.executable)}
    for name in ("bergson", "dattri"):
        if name in args.only:
            pys[name] = ensure_venv(cache, name)
    codes = {"ours": OURS, "bergson": BERGSON, "dattri": DATTRI}
    runs = [(m, p) for m in args.only for p in args.precisions]
    short = {"float32": "fp32", "bfloat16": "bf16"}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        prepare(args, work)
        results = {r: [] for r in runs}
        for r in range(args.rounds):
            order = runs[r % len(runs):] + runs[:r % len(runs)]
            for m, prec in order:
                res = run_worker(pys[m], codes[m], work, m, prec)
                results[(m, prec)].append(res)
                extra = (f", projection {res['projection_seconds'] / res['n']:.3f} s/ex "
                         f"({100 * res['projection_seconds'] / res['seconds']:.1f}% of ours), "
                         f"{res['positions']:.0f} positions computed, "
                         f"{res['flops'] / res['seconds'] / 1e9:.0f} GFLOP/s achieved "
                         f"({100 * res['flops'] / res['seconds'] / 1e9 / bf16_peak:.0f}% of the bf16 peak)"
                         if "projection_seconds" in res else "")
                print(f"round {r} {m:<8} {short[prec]} {res['seconds'] / res['n']:.3f} s/example ({res['n']} "
                      f"examples, dim {res['dim']}), peak RSS {res['peak_rss_gb']:.2f} GB{extra}", flush=True)
    per = {k: min(x["seconds"] / x["n"] for x in v) for k, v in results.items()}
    print("\n# best of rounds, s/example: " + ", ".join(f"{m} {short[p]} {t:.3f}" for (m, p), t in per.items()))
    best = {}  # method -> (s/example, precision) at its best precision
    for (m, p), t in per.items():
        if m not in best or t < best[m][0]:
            best[m] = (t, p)
    print("# each method at its best precision: " + ", ".join(f"{m} {short[p]} {t:.3f}" for m, (t, p) in best.items()))
    rss = {m: max(x["peak_rss_gb"] for (mm, _), v in results.items() if mm == m for x in v) for m in best}
    print("# peak RSS over every run, GB: " + ", ".join(f"{m} {g:.2f}" for m, g in rss.items()))
    if "ours" in best:
        for (m, p) in runs:
            if m != "ours" and ("ours", p) in results:
                per_round = [f"{(q['seconds'] / q['n']) / (o['seconds'] / o['n']):.2f}"
                             for o, q in zip(results[("ours", p)], results[(m, p)])]
                print(f"# {m} / ours per round, both {short[p]}: {', '.join(per_round)}")
        for m in best:
            if m != "ours":
                print(f"ours vs {m}: {best[m][0] / best['ours'][0]:.2f}x")


if __name__ == "__main__":
    main()

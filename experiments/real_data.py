"""LESS vs random vs full vs base on the real data in ../shared/data (issue #7's experiment).

    python experiments/real_data.py --out /tmp/less_real [--pool-size N ...]

1. pool: every candidate adapter except the GSM8K train file (its problems also sit inside the
   Flan-v2 CoT data; the issue asks to drop one copy), then a seeded sample of --pool-size;
2. targets: BBH (81 CoT exemplars), MMLU (285 dev shots), TydiQA (9, one per language, from dev);
3. LESS through the product pipeline (`run_pipeline`): warmup on 5% -> one checkpoint per epoch ->
   datastore -> score -> top 5% per target -> train -> eval (every model on every target);
4. random 5% (three seeds), the full pool and the untrained base model: trained / evaluated with
   the same settings (`run_train`, `run_eval`);
5. results.json + results.md (tables, source shares) in --out.

Every step skips what is already done, so a killed run resumes. The defaults are the reduced
CPU version (see --help and docs/results.md); on a GPU raise the sizes to LESS's.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

TARGETS = ("bbh", "mmlu", "tydiqa")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default=None, help="default: $LESS_RAY_DATA_ROOT or ../shared/data")
    p.add_argument("--pool-size", type=int, default=1000, help="sampled from the ~80K-example pool")
    p.add_argument("--top-p", type=float, default=0.05)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--chat-format", default="template", choices=["less", "tulu_stripped", "tulu", "template"])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=4, help="warmup epochs (= checkpoints) and selection training epochs")
    p.add_argument("--full-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="effective batch size")
    p.add_argument("--dim", type=int, default=512, help="projection dim")
    p.add_argument("--extract-batch", type=int, default=32)
    p.add_argument("--shard-rows", type=int, default=64, help="extraction shard size (the unit each actor takes)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="per-device batch of the random/full trainings (default: batch-size / workers); "
                        "the effective batch stays --batch-size")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-selection seeds")
    p.add_argument("--bbh-per-task", type=int, default=3)
    p.add_argument("--bbh-new-tokens", type=int, default=128)
    p.add_argument("--mmlu-per-subject", type=int, default=3)
    p.add_argument("--tydiqa-per-language", type=int, default=10)
    p.add_argument("--eval-prompt-tokens", type=int, default=1024)
    p.add_argument("--targets-per-subtask", type=int, default=None,
                   help="keep the first n target examples of each subtask (BBH task / MMLU subject / TydiQA language)")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--cross-eval", action="store_true",
                   help="also evaluate each LESS model on the other targets (default: its own target only)")
    return p.parse_args(argv)


def build_data(args, out: Path) -> dict[str, str]:
    from less_ray.data.io import write_jsonl
    from less_ray.data.sources import CANDIDATE_SOURCES, default_data_root, load_candidates
    from less_ray.data.targets import build_targets
    data = out / "data"
    paths = {"pool": str(data / "pool.jsonl"), **{t: str(data / f"targets_{t}.jsonl") for t in TARGETS}}
    if all(Path(p).exists() for p in paths.values()):
        return paths
    data.mkdir(parents=True, exist_ok=True)
    root = Path(args.data_root) if args.data_root else default_data_root()
    names = [n for n in CANDIDATE_SOURCES if n != "gsm8k"]
    load = load_candidates(root, names)
    full = load.records
    pool = random.Random(0).sample(full, min(args.pool_size, len(full)))
    pool.sort(key=lambda r: r.id)  # a stable order independent of adapter order
    write_jsonl(pool, paths["pool"])
    for t in TARGETS:
        recs, seen = [], Counter()
        for r in build_targets(t, root):
            seen[r.subtask] += 1
            if args.targets_per_subtask is None or seen[r.subtask] <= args.targets_per_subtask:
                recs.append(r)
        write_jsonl(recs, paths[t])
    facts = {"candidates": len(full), "skipped_rows": len(load.skipped), "adapters": names,
             "pool": len(pool), "pool_sources": dict(Counter(r.source for r in pool)),
             "full_sources": dict(Counter(r.source for r in full))}
    (data / "data_facts.json").write_text(json.dumps(facts, indent=2))
    return paths


def settings(args):
    from less_ray.train.config import DeepSpeedSettings, LoraSettings, OptimSettings, RaySettings, ScalingSettings
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=0.1)
    scaling = ScalingSettings(num_workers=args.workers, cpus_per_worker=1.0, effective_batch_size=args.batch_size,
                              per_device_batch_size=max(1, args.batch_size // args.workers))
    optim = OptimSettings(lr=args.lr, epochs=args.epochs)
    return lora, scaling, optim, DeepSpeedSettings(zero_stage=0), RaySettings(num_cpus=args.num_cpus)


def eval_config(args, model: str, out: Path):
    from less_ray.eval.runner import EvalConfig
    return EvalConfig(model=model, tasks=list(TARGETS), out=str(out), data_root=args.data_root,
                      chat_format=args.chat_format, batch_size=8, max_prompt_tokens=args.eval_prompt_tokens,
                      bbh_max_per_task=args.bbh_per_task, bbh_max_new_tokens=args.bbh_new_tokens,
                      mmlu_max_per_subject=args.mmlu_per_subject, tydiqa_max_per_language=args.tydiqa_per_language)


def run_less(args, out: Path, paths: dict[str, str], model_dir: Path) -> dict:
    from less_ray.pipeline import EvalOptions, ExtractOptions, PipelineConfig, ScoreOptions, TrainOptions, WarmupOptions, run_pipeline
    lora, scaling, optim, ds, ray = settings(args)
    ev = eval_config(args, "", Path("x"))
    cfg = PipelineConfig(
        out=str(out / "less"), base_model=str(model_dir), pool=paths["pool"],
        targets={t: paths[t] for t in TARGETS}, seed=0, chat_format=args.chat_format,
        max_seq_length=args.max_seq_length,
        warmup=WarmupOptions(percentage=0.05, lora=lora, scaling=scaling, deepspeed=ds, optim=optim),
        extract=ExtractOptions(dim=args.dim, batch_size=args.extract_batch, shard_rows=args.shard_rows, max_actors=2),
        score=ScoreOptions(block_rows=4096, max_actors=1, top_p=args.top_p),
        train=TrainOptions(lora=lora, scaling=scaling, deepspeed=ds, optim=optim),
        eval=EvalOptions(tasks={t: list(TARGETS) if args.cross_eval else [t] for t in TARGETS}, batch_size=ev.batch_size,
                         bbh_max_per_task=ev.bbh_max_per_task, bbh_max_new_tokens=ev.bbh_max_new_tokens,
                         mmlu_max_per_subject=ev.mmlu_max_per_subject,
                         tydiqa_max_per_language=ev.tydiqa_max_per_language, max_prompt_tokens=ev.max_prompt_tokens),
        ray=ray)
    return run_pipeline(cfg)


def train_and_eval(args, name: str, data: str, out: Path, model_dir: Path, epochs: int) -> dict:
    from less_ray.train.config import TrainConfig
    from less_ray.train.runner import run_train
    lora, scaling, optim, ds, ray = settings(args)
    optim.epochs = epochs  # the full pool may train for fewer epochs than the selections
    if args.micro_batch_size:
        scaling.per_device_batch_size = args.micro_batch_size
    tcfg = TrainConfig(data=data, out=str(out / "train"), base_model=str(model_dir), seed=0,
                       chat_format=args.chat_format, max_seq_length=args.max_seq_length, lora=lora,
                       optim=optim, scaling=scaling, deepspeed=ds, ray=ray)
    if not (out / "train" / "state.json").exists():
        t0 = time.time()
        run_train(tcfg)
        logging.info("%s: trained in %.0fs", name, time.time() - t0)
    return evaluate(args, str(out / "train" / "model"), out / "eval.json")


def evaluate(args, model: str, out: Path) -> dict:
    from less_ray.eval.runner import run_eval
    if out.exists():
        return json.loads(out.read_text())
    t0 = time.time()
    res = run_eval(eval_config(args, model, out))
    logging.info("eval %s: %s in %.0fs", model, {t: round(r["score"], 4) for t, r in res["tasks"].items()},
                 time.time() - t0)
    return res


def shares(path: str) -> dict[str, float]:
    """Share of each top-level source (flan_v2_cot, p3, ...: the part before '/')."""
    src = [json.loads(line)["source"].split("/")[0] for line in Path(path).read_text().splitlines()]
    c = Counter(src)
    return {k: round(v / len(src), 4) for k, v in c.most_common()}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    t0 = time.time()
    paths = build_data(args, out)
    model_dir = out / "smollm2"
    if not (model_dir / "config.json").exists():
        from less_ray.models import materialize_smollm2
        materialize_smollm2(model_dir)
    from less_ray.ray_runtime import ensure_ray
    ensure_ray(None, args.num_cpus)
    timings = {}

    t = time.time()
    results: dict = {"base": evaluate(args, str(model_dir), out / "base" / "eval.json")}
    timings["base_eval"] = round(time.time() - t)

    t = time.time()
    run_less(args, out, paths, model_dir)
    timings["less_pipeline"] = round(time.time() - t)
    for task in TARGETS:
        results[f"less_{task}"] = json.loads((out / "less" / "eval" / f"{task}.json").read_text())

    n_pool = sum(1 for _ in open(paths["pool"]))
    k = int(math.floor(args.top_p * n_pool + 1e-9))
    pool_lines = Path(paths["pool"]).read_text().splitlines()
    for seed in args.seeds:
        d = out / "random" / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        sel = d / f"top_p{args.top_p:g}.jsonl"
        if not sel.exists():
            sel.write_text("".join(line + "\n" for line in random.Random(seed).sample(pool_lines, k)))
        t = time.time()
        results[f"random_seed{seed}"] = train_and_eval(args, f"random seed {seed}", str(sel), d, model_dir, args.epochs)
        timings[f"random_seed{seed}"] = round(time.time() - t)
    if not args.skip_full:
        t = time.time()
        results["full"] = train_and_eval(args, "full", paths["pool"], out / "full", model_dir, args.full_epochs)
        timings["full"] = round(time.time() - t)
    timings["total"] = round(time.time() - t0)

    sel_shares = {t: shares(str(out / "less" / "scores" / t / f"top_p{args.top_p:g}.jsonl")) for t in TARGETS}
    sel_shares["random_seed0"] = shares(str(out / "random" / f"seed{args.seeds[0]}" / f"top_p{args.top_p:g}.jsonl"))
    sel_shares["pool"] = shares(paths["pool"])
    summary = {"args": vars(args), "k": k, "pool": n_pool, "timings_s": timings, "shares": sel_shares,
               "scores": {m: {t: r["tasks"][t]["score"] for t in TARGETS if t in r["tasks"]} for m, r in results.items()},
               "n_eval": {t: results["base"]["tasks"][t]["n"] for t in TARGETS}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    md = render_markdown(summary, args)
    (out / "results.md").write_text(md)
    print(md)
    return 0


def render_markdown(s: dict, args) -> str:
    sc = s["scores"]
    rnd = [m for m in sc if m.startswith("random_seed")]
    lines = []
    for t in TARGETS:
        metric = {"bbh": "exact match", "mmlu": "accuracy", "tydiqa": "F1"}[t]
        vals = [sc[m][t] for m in rnd]
        mean = statistics.mean(vals) if vals else float("nan")
        spread = (max(vals) - min(vals)) / 2 if vals else float("nan")
        lines += [f"### {t} ({metric}, n={s['n_eval'][t]})", "", "| model | score |", "|---|---|",
                  f"| base (no training) | {100 * sc['base'][t]:.1f} |",
                  f"| LESS-5% (selected for {t}) | {100 * sc[f'less_{t}'][t]:.1f} |"]
        for other in TARGETS:
            if other != t and t in sc[f"less_{other}"]:
                lines.append(f"| LESS-5% selected for {other} | {100 * sc[f'less_{other}'][t]:.1f} |")
        lines.append(f"| random-5% ({len(vals)} seeds: mean ± half-range) | {100 * mean:.1f} ± {100 * spread:.1f} "
                     f"({', '.join(f'{100 * v:.1f}' for v in vals)}) |")
        if "full" in sc:
            lines.append(f"| full pool ({s['pool']} examples, {args.full_epochs} epoch) | {100 * sc['full'][t]:.1f} |")
        lines.append("")
    srcs = sorted(s["shares"]["pool"], key=lambda x: -s["shares"]["pool"][x])
    cols = ["pool"] + list(TARGETS) + ["random_seed0"]
    lines += ["### source shares (%)", "", "| source | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for src in srcs:
        lines.append(f"| {src} | " + " | ".join(f"{100 * s['shares'][c].get(src, 0):.1f}" for c in cols) + " |")
    lines += ["", f"timings (s): {json.dumps(s['timings_s'])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

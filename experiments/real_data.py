"""LESS vs random vs RDS vs full pool vs base on the real data in ../shared/data (issue #19).

    python experiments/real_data.py --out /work/runs/real19            # the CPU run (defaults)
    python experiments/real_data.py --out OUT --phases core planted         # only some phases
    python experiments/real_data.py --out OUT --render-docs              # docs section from OUT
    python experiments/real_data.py --out OUT --report                   # OUT/report.html with the tables

Phases, run in this order (default: all):
  core       data -> base eval -> LESS pipeline (warmup 4 epochs -> 4 checkpoints -> datastore ->
             score -> top 5%; RDS and k-center as the pipeline's `selectors`) -> random 5% (3 seeds,
             the product's `random` selector) -> train every selection from the base model
             (`run_train`, identical settings) -> held-out answer-token loss of every model on every
             target (cross-target matrix) -> statistics (seeds' mean +- spread, paired bootstrap CIs)
  planted    share of the planted task (code_alpaca, ~5% of the pool; disjoint code_alpaca targets)
             in each selector's top 1/5/10% and its AUC (LESS, RDS, k-center, random): no new
             model work, the planted targets ride along in the core pipeline
  projection LESS's scores of --check-pool pool examples from the unprojected gradients (identity
             projection; same checkpoints and targets) beside the run's projected ones: rank
             correlation and top-5% overlap per target (is d=--dim enough?); more projections of
             the same exact features: experiments/projection_fidelity.py
  full       the full pool trained once (--full-epochs, default 1) and evaluated
  stability  a second warmup seed (other warmup subset), LESS for one target: top-5% Jaccard and
             score rank correlation against the first run, beside the same for random seeds; on a
             seeded sample of --stability-pool examples (the first run's scores restricted to it)
             unless 0, as a second datastore of the whole pool costs as much as the first
  gen        secondary metrics through `run_eval` (MMLU accuracy, BBH EM, TydiQA F1; small caps)
  target_loss every model's answer-token loss on the target examples LESS scored against (for BBH,
             the chain-of-thought exemplars: does a selection that follows them lower their loss,
             where the held-out measure is the bare answer's?); held out from training, not from
             selection (--target-loss-tasks)
  cot_folds  the same question held out: BBH's 3 chain-of-thought exemplars per task split by shot;
             for each shot, LESS's selection from the other two (the product's core influence on the
             run's stored features; with all three it must reproduce the run's scores), trained like
             the others, then the loss on the held-out shot: LESS cross-fitted vs every random seed

Resumable: the LESS part is `run_pipeline` (its stage ledger skips finished stages; extraction
resumes per shard); every other piece writes a done-marker last (the selection's score summary,
the training's state.json, an eval's JSON) and is skipped when that exists. Kill it and rerun the
same command: it continues. Per-piece wall times accumulate in <out>/timings.json.

Defaults are the reduced CPU version; on a GPU raise them to LESS's (e.g. --pool-size 80000
--lora-r 128 --lora-alpha 512 --lr 2e-5 --batch-size 128 --max-seq-length 2048
--bbh-target-shots 2 --tydiqa-context-chars 2000 --workers 1 --gpu; LESS's own projection is
--projection rademacher --dim 8192).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

TARGETS = ("bbh", "mmlu", "tydiqa")
PLANTED = "code_alpaca"  # the planted real task (a source; never one of the three targets)
PHASES = ("core", "planted", "full", "gen", "stability", "projection", "target_loss", "cot_folds")
log = logging.getLogger("real19")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--phases", nargs="+", default=["core", "planted", "projection", "full", "stability", "gen",
                                                   "target_loss", "cot_folds"],
                   choices=PHASES)
    p.add_argument("--render-docs", action="store_true", help="print the docs/results.md section from OUT/results.json")
    p.add_argument("--report", action="store_true", help="write OUT/report.html: the LESS run's report page with "
                   "OUT/results.tables.json on it")
    p.add_argument("--data-root", default=None, help="default: $LESS_RAY_DATA_ROOT or ../shared/data")
    p.add_argument("--base-model", default=None, help="a model folder; default: SmolLM2-135M-Instruct written to OUT/smollm2")
    # pool
    p.add_argument("--pool-size", type=int, default=4000)
    p.add_argument("--planted-share", type=float, default=0.05, help="share of the pool that is the planted task")
    p.add_argument("--planted-targets", type=int, default=50, help="planted-task examples held out as its targets")
    p.add_argument("--data-seed", type=int, default=0)
    # model / method
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--chat-format", default="less", choices=["less", "tulu_stripped", "tulu", "template"])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=32)
    # sjlt d=65536: LESS's scores of checkpoint 1 at Spearman 0.98 with the unprojected ones (Rademacher
    # d=2048: 0.55-0.69; LESS's d=8192: 0.73-0.90; docs/logs/real19/projection_epoch1.json)
    p.add_argument("--dim", type=int, default=65536, help="projection dim")
    p.add_argument("--projection", default="sjlt", choices=["rademacher", "sjlt", "identity"])
    p.add_argument("--sjlt-s", type=int, default=1, help="sjlt: hashed nonzeros per gradient coordinate")
    p.add_argument("--top-p", type=float, default=0.05)
    p.add_argument("--warmup-percentage", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=4, help="= checkpoints")
    p.add_argument("--warmup-seed", type=int, default=3, help="the warmup draw (pipeline warmup.data_seed)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=8, help="effective batch size (warmup and trainings)")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=2.0)
    p.add_argument("--gpu", action="store_true", help="train/extract on GPUs (one per worker / actor)")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs of every 5%% selection's training")
    p.add_argument("--full-epochs", type=int, default=1)
    p.add_argument("--extract-batch", type=int, default=4)
    p.add_argument("--extract-memory-gb", type=float, default=6.0,
                   help="memory each extract actor reserves from Ray (the stage's own estimate for sjlt d=65536 "
                        "left room for one actor on this 24 GB machine, so one core idled)")
    p.add_argument("--shard-rows", type=int, default=250, help="extraction shard (unit of work and of resumption)")
    p.add_argument("--extract-actors", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-selection seeds")
    p.add_argument("--num-cpus", type=int, default=2)
    # targets (selection) and held-out (measurement)
    p.add_argument("--bbh-target-shots", type=int, default=0, choices=[0, 2],
                   help="in-context exemplars in each BBH target (LESS: 2; they do not fit in 512 tokens)")
    p.add_argument("--tydiqa-context-chars", type=int, default=600,
                   help="TydiQA targets drawn among passages of at most this many characters (LESS: no bound)")
    p.add_argument("--targets-per-subtask", type=int, default=None, help="(dry runs) first n targets per subtask")
    p.add_argument("--bbh-heldout-per-task", type=int, default=10)
    p.add_argument("--mmlu-heldout-per-subject", type=int, default=5)
    p.add_argument("--tydiqa-heldout-per-language", type=int, default=20)
    p.add_argument("--heldout-context-chars", type=int, default=1500, help="TydiQA held-out passages at most this long")
    p.add_argument("--eval-max-tokens", type=int, default=1024, help="held-out loss: longer examples are cut (right)")
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=10000)
    # gen phase
    p.add_argument("--gen-mmlu-per-subject", type=int, default=5)
    p.add_argument("--gen-bbh-per-task", type=int, default=1)
    p.add_argument("--gen-bbh-new-tokens", type=int, default=128)
    p.add_argument("--gen-tydiqa-per-language", type=int, default=5)
    p.add_argument("--gen-prompt-tokens", type=int, default=1024)
    # stability phase
    p.add_argument("--stability-target", default="bbh", choices=TARGETS)
    p.add_argument("--stability-warmup-seed", type=int, default=4)
    # target_loss phase
    p.add_argument("--target-loss-tasks", nargs="+", default=["bbh", "tydiqa"], choices=TARGETS)
    p.add_argument("--check-pool", type=int, default=300,
                   help="projection phase: pool examples scored from unprojected gradients as well")
    p.add_argument("--check-epochs", type=int, nargs="+", default=None,
                   help="projection phase: extract only these checkpoints, score nothing (an early look; "
                        "then experiments/projection_fidelity.py --epochs ...)")
    p.add_argument("--stability-pool", type=int, default=1000,
                   help="the second run scores a seeded sample of this many pool examples (0: the whole pool); "
                        "its warmup draws as many examples as the first run's, from that sample")
    # measured rates for the estimate (see docs/logs/real19/settings.md)
    p.add_argument("--rate-grad-tok-s", type=float, default=130.0, help="fwd+bwd tokens/s, whole machine")
    p.add_argument("--rate-fwd-tok-s", type=float, default=400.0, help="forward-only tokens/s, whole machine")
    p.add_argument("--overhead-s", type=float, default=60.0, help="per Ray stage start (workers, model load)")
    return p.parse_args(argv)


# --- bookkeeping --------------------------------------------------------------------------------
class Timings:
    """Seconds per finished piece, kept across resumes (a rerun skips a piece, keeps its time)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def piece(self, name: str, done: Path, fn):
        if done.exists():
            log.info("skip %s: %s exists", name, done)
            return
        log.info("start %s", name)
        t0 = time.time()
        fn()
        self.data[name] = round(time.time() - t0, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)
        log.info("done %s in %.0fs", name, self.data[name])


def write_json(path: Path, obj) -> None:
    """Atomic: the file is the done-marker of its piece."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
    tmp.replace(path)


# --- data ---------------------------------------------------------------------------------------
def bbh_targets(root: Path, shots: int):
    from less_ray.data.schema import make_record, validation
    from less_ray.data.targets import _parse_cot_prompt, build_targets
    if shots == 2:
        return build_targets("bbh", root)  # LESS's exact targets
    out = []
    for path in sorted((root / "bbh" / "cot-prompts").glob("*.txt")):
        prompt, exemplars = _parse_cot_prompt(path)
        for k, ex in enumerate(exemplars):
            question, answer = ex.split("\nA:")
            out.append(make_record("bbh", validation(prompt.strip() + "\n\n" + question, "A:", answer),
                                   id=f"bbh/{path.stem}:{k}", task="bbh", subtask=path.stem))
    return out


def heldout_records(args, root: Path) -> dict[str, list]:
    """Held-out examples per target, never a selection target, in the targets' own format."""
    from less_ray.data.schema import make_record, validation
    from less_ray.data.targets import (TYDIQA_LANGUAGES, TYDIQA_TEMPLATES, _parse_cot_prompt, mmlu_example,
                                       mmlu_head, tydiqa_dev_questions, tydiqa_target_question, tydiqa_user)
    from less_ray.eval.prompts import _mmlu_rows, bbh_items
    out = {"bbh": [], "mmlu": [], "tydiqa": []}
    instr = {p.stem: _parse_cot_prompt(p)[0].strip() for p in (root / "bbh" / "cot-prompts").glob("*.txt")}
    for it in bbh_items(root, args.bbh_heldout_per_task):  # task files, minus the CoT exemplars' questions
        q = it.prompt.split("\n\nQ: ")[-1]
        out["bbh"].append(make_record("bbh", validation(instr[it.subtask] + "\n\nQ: " + q, "A:", " " + it.gold[0]),
                                      id=it.id, task="bbh", subtask=it.subtask))
    for dev in sorted((root / "mmlu" / "dev").glob("*_dev.csv")):
        subject = dev.name.removesuffix("_dev.csv")
        rows = _mmlu_rows(root / "mmlu" / "test" / f"{subject}_test.csv")[:args.mmlu_heldout_per_subject]
        for i, row in enumerate(rows):
            out["mmlu"].append(make_record("mmlu", validation(mmlu_head(subject) + mmlu_example(row, False),
                                                              "The answer is:", " " + "ABCD"[int(row[5])]),
                                           id=f"mmlu/{subject}/test:{i}", task="mmlu", subtask=subject))
    for lang in TYDIQA_LANGUAGES:
        qs = [q for q in tydiqa_dev_questions(root, lang)  # the caller drops the targets and what does not fit
              if q["answers"] and len(q["context"]) <= args.heldout_context_chars]
        for q in qs[:args.tydiqa_heldout_per_language + 5]:  # spare: the caller may drop a few
            out["tydiqa"].append(make_record("tydiqa", validation(tydiqa_user(lang, q["context"], q["question"]),
                                                                  TYDIQA_TEMPLATES[lang][3], " " + q["answers"][0]),
                                             id=q["id"], task="tydiqa", subtask=lang))
    return out


def tydiqa_targets(args, root: Path, fits) -> list:
    """LESS's one TydiQA target per language, drawn (seeded) among passages of at most
    --tydiqa-context-chars characters; where that draw does not fit max_seq_length (scripts with
    many tokens per character), the bound is halved until it does."""
    from less_ray.data.schema import make_record, validation
    from less_ray.data.targets import TYDIQA_LANGUAGES, TYDIQA_TEMPLATES, tydiqa_target_question, tydiqa_user
    out = []
    for lang in TYDIQA_LANGUAGES:
        bound = args.tydiqa_context_chars
        while True:
            q, _ = tydiqa_target_question(root, lang, 0, bound)
            rec = make_record("tydiqa", validation(tydiqa_user(lang, q["context"], q["question"]),
                                                   TYDIQA_TEMPLATES[lang][3], " " + q["answers"][0]),
                              id=q["id"], task="tydiqa", subtask=lang)
            if fits(rec) or bound < 100:
                break
            bound //= 2
        out.append(rec)
    return out


def build_data(args, out: Path, root: Path, model_dir: Path) -> dict[str, str]:
    """pool.jsonl, targets_<t>.jsonl, heldout_<t>.jsonl; data_facts.json is the done-marker."""
    from less_ray.data.io import write_jsonl
    from less_ray.data.sources import CANDIDATE_SOURCES, load_candidates
    from less_ray.data.targets import build_targets
    data = out / "data"
    names = [*TARGETS, PLANTED]
    paths = {"pool": data / "pool.jsonl", **{f"targets_{t}": data / f"targets_{t}.jsonl" for t in names},
             **{f"heldout_{t}": data / f"heldout_{t}.jsonl" for t in names}}
    if (data / "data_facts.json").exists():
        return {k: str(v) for k, v in paths.items()}
    data.mkdir(parents=True, exist_ok=True)
    adapters = [n for n in CANDIDATE_SOURCES if n != "gsm8k"]  # GSM8K train is inside Flan-v2 CoT: one copy
    load = load_candidates(root, adapters)
    full = sorted(load.records, key=lambda r: r.id)
    rng = random.Random(args.data_seed)
    planted_all = [r for r in full if r.source.split("/")[0] == PLANTED]
    rest = [r for r in full if r.source.split("/")[0] != PLANTED]
    rng.shuffle(planted_all)
    n_plant = round(args.planted_share * args.pool_size)
    planted_targets = planted_all[:args.planted_targets]
    planted_heldout = planted_all[args.planted_targets:args.planted_targets + 20]
    planted_pool = planted_all[args.planted_targets + 20:args.planted_targets + 20 + n_plant]
    pool = rng.sample(rest, args.pool_size - len(planted_pool)) + planted_pool
    pool.sort(key=lambda r: r.id)
    write_jsonl(pool, paths["pool"])

    from less_ray.core.formatting import FormatConfig, tokenize_records
    from less_ray.models import load_tokenizer
    tok = load_tokenizer(str(model_dir))

    def fits(rec, max_len):
        return not tokenize_records([rec], tok, FormatConfig(args.chat_format, max_len))[1]

    targets = {"bbh": bbh_targets(root, args.bbh_target_shots), "mmlu": build_targets("mmlu", root),
               "tydiqa": tydiqa_targets(args, root, lambda r: fits(r, args.max_seq_length))}
    all_target_ids = {r.id for recs in targets.values() for r in recs}  # before any dry-run trim
    for t, recs in list(targets.items()):
        if args.targets_per_subtask:
            seen, kept = Counter(), []
            for r in recs:
                seen[r.subtask] += 1
                if seen[r.subtask] <= args.targets_per_subtask:
                    kept.append(r)
            recs = targets[t] = kept
        write_jsonl(recs, paths[f"targets_{t}"])
    pt = [dataclasses.replace(r, task=PLANTED, subtask=PLANTED) for r in planted_targets]
    write_jsonl(pt, paths[f"targets_{PLANTED}"])
    write_jsonl([dataclasses.replace(r, task=PLANTED, subtask=PLANTED) for r in planted_heldout],
                paths[f"heldout_{PLANTED}"])
    held = {t: [r for r in recs if r.id not in all_target_ids and fits(r, args.eval_max_tokens)]
            for t, recs in heldout_records(args, root).items()}
    per_lang = Counter()
    held["tydiqa"] = [r for r in held["tydiqa"]
                      if (per_lang.update([r.subtask]) or per_lang[r.subtask] <= args.tydiqa_heldout_per_language)]
    for t, recs in held.items():
        write_jsonl(recs, paths[f"heldout_{t}"])
    overlap = {t: sum(r.id in all_target_ids for r in held[t]) for t in TARGETS}
    assert not any(overlap.values()), f"held-out examples among the targets: {overlap}"
    facts = {"candidates": len(full), "skipped_rows": len(load.skipped), "adapters": adapters,
             "dropped": "gsm8k (its train problems are inside flan_v2_cot)",
             "pool": len(pool), "pool_sources": dict(Counter(r.source.split("/")[0] for r in pool).most_common()),
             "pool_subsources": dict(Counter(r.source for r in pool).most_common()),
             "candidate_sources": dict(Counter(r.source.split("/")[0] for r in full).most_common()),
             "planted": {"source": PLANTED, "in_pool": len(planted_pool), "targets": len(planted_targets),
                         "available": len(planted_all)},
             "targets": {t: len(v) for t, v in targets.items()}, "heldout": {t: len(v) for t, v in held.items()}}
    write_json(data / "data_facts.json", facts)
    return {k: str(v) for k, v in paths.items()}


def token_report(args, paths: dict[str, str], model_dir: Path) -> dict:
    """Tokens per file at max_seq_length (and how many lose every answer token): the estimate's input."""
    from less_ray.core.formatting import FormatConfig, tokenize_records
    from less_ray.data.io import read_records
    from less_ray.models import load_tokenizer
    tok = load_tokenizer(str(model_dir))
    rep = {}
    for key, path in paths.items():
        recs = read_records(path).records
        mx = args.eval_max_tokens if key.startswith("heldout") else args.max_seq_length
        kept, skipped = tokenize_records(recs, tok, FormatConfig(args.chat_format, mx))
        n_tok = sum(len(k.input_ids) for k in kept)
        rep[key] = {"n": len(recs), "kept": len(kept), "skipped": len(skipped), "tokens": n_tok,
                    "mean_tokens": round(n_tok / max(1, len(kept)), 1),
                    "truncated": sum(k.truncated for k in kept), "max_len": mx}
    return rep


def estimate(args, tok: dict) -> dict:
    """Seconds per stage from token counts at the measured rates (whole 2-core machine)."""
    g, f, o = args.rate_grad_tok_s, args.rate_fwd_tok_s, args.overhead_s
    pool_tok = tok["pool"]["tokens"]
    n_pool = tok["pool"]["kept"]
    n_warm = math.ceil(args.warmup_percentage * n_pool)
    mean = pool_tok / max(1, n_pool)
    tgt_tok = sum(tok[f"targets_{t}"]["tokens"] for t in (*TARGETS, PLANTED))
    held_tok = sum(tok[f"heldout_{t}"]["tokens"] for t in TARGETS)
    k = int(args.top_p * n_pool)
    n_models = 1 + 2 * len(TARGETS) + len(args.seeds)
    e = {
        "base + every model's held-out loss eval (each)": held_tok / f + 20,
        f"warmup ({n_warm} ex x {args.warmup_epochs} epochs)": n_warm * args.warmup_epochs * mean / g + 2 * o,
        f"datastore: pool ({n_pool} x {args.warmup_epochs} checkpoints)": args.warmup_epochs * (pool_tok / g + o),
        f"datastore: targets ({args.warmup_epochs} x 4 sets)": args.warmup_epochs * (tgt_tok / g + 4 * o),
        "score + select + RDS/k-center (MiniLM) + random": 600,
        f"trainings: {2 * len(TARGETS) + len(args.seeds)} selections of {k} x {args.train_epochs} epochs":
            (2 * len(TARGETS) + len(args.seeds)) * (k * args.train_epochs * mean / g + 2 * o),
    }
    e[f"evals: {n_models} models x held-out loss"] = n_models * e["base + every model's held-out loss eval (each)"]
    core = sum(v for key, v in e.items() if not key.startswith("base +"))
    e["= core total"] = core
    e[f"full pool ({n_pool} x {args.full_epochs} epoch) + eval"] = (n_pool * args.full_epochs * mean / g + 2 * o
                                                                   + held_tok / f)
    share = min(1.0, args.stability_pool / n_pool) if args.stability_pool else 1.0
    e["stability (second warmup + pool datastore, one target)"] = (
        e[f"warmup ({n_warm} ex x {args.warmup_epochs} epochs)"]
        + share * e[f"datastore: pool ({n_pool} x {args.warmup_epochs} checkpoints)"])
    return {key: round(v) for key, v in e.items()}


# --- product pieces -----------------------------------------------------------------------------
def training_settings(args, epochs: int):
    from less_ray.train.config import DeepSpeedSettings, LoraSettings, OptimSettings, ScalingSettings
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=0.1)
    scaling = ScalingSettings(num_workers=args.workers, use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                              effective_batch_size=args.batch_size, per_device_batch_size=args.micro_batch_size)
    optim = OptimSettings(lr=args.lr, epochs=epochs)
    return dict(lora=lora, scaling=scaling, optim=optim, deepspeed=DeepSpeedSettings(zero_stage=0))


def ray_settings(args, out: Path):
    from less_ray.train.config import RaySettings
    return RaySettings(num_cpus=args.num_cpus)


def pipeline_config(args, out: Path, paths: dict[str, str], model_dir: Path, run: str, warmup_seed: int,
                    targets: tuple[str, ...], selectors: bool, pool: str | None = None,
                    warmup_percentage: float | None = None):
    from less_ray.pipeline import (EvalSection, ExtractSection, PipelineConfig, ScoreSection, SelectSection,
                                   WarmupSection)
    tasks = {t: [f"loss:{t}"] for t in targets}
    return PipelineConfig(
        out=str(out / run), base_model=str(model_dir), pool=pool or paths["pool"],
        targets={t: paths[f"targets_{t}"] for t in targets}, seed=0, chat_format=args.chat_format,
        max_seq_length=args.max_seq_length, stages=["warmup", "extract", "score", "select", "selectors"],
        warmup=WarmupSection(percentage=warmup_percentage or args.warmup_percentage, data_seed=warmup_seed,
                             **training_settings(args, args.warmup_epochs)),
        extract=ExtractSection(dims=[args.dim], projection=args.projection, sjlt_s=args.sjlt_s,
                               batch_size=args.extract_batch,
                               shard_rows=args.shard_rows, min_actors=args.extract_actors,
                               max_actors=args.extract_actors, actor_memory_gb=args.extract_memory_gb,
                               actor_num_gpus=1.0 if args.gpu else 0.0),
        score=ScoreSection(max_actors=1),
        select=SelectSection(top_p=args.top_p),
        # every target has its held-out file, so the pipeline splits none of its targets off
        eval=EvalSection(tasks=tasks, heldout={t: paths[f"heldout_{t}"] for t in targets}),
        selectors=({"rds": {"encoder": "minilm"}, "kcenter": {"encoder": "minilm"}} if selectors else {}),
        ray=ray_settings(args, out))


def run_random(args, out: Path, paths: dict[str, str], seed: int, timings: Timings) -> Path:
    from less_ray.selectors import load_selector_config, run_selector  # noqa: F401
    from less_ray.selectors.random_full import RandomConfig
    d = out / "random" / f"seed{seed}"
    cfg = RandomConfig(pool=paths["pool"], out=str(d), seed=seed, top_p=args.top_p, num_cpus=args.num_cpus)
    timings.piece(f"select/random_seed{seed}", d / "score_summary.json", lambda: run_selector("random", cfg))
    return d / "all" / f"top_p{args.top_p:g}.jsonl"


def train(args, name: str, data: Path, out: Path, model_dir: Path, epochs: int, timings: Timings,
          models: Path | None = None) -> Path:
    """`data` trained from the base model into `models` (default <out>/models)/<name>."""
    from less_ray.train.config import TrainConfig
    from less_ray.train.runner import run_train
    d = (models or out / "models") / name
    cfg = TrainConfig(data=str(data), out=str(d), base_model=str(model_dir), seed=0, chat_format=args.chat_format,
                      max_seq_length=args.max_seq_length, ray=ray_settings(args, out),
                      **training_settings(args, epochs))
    timings.piece(f"train/{name}", d / "state.json", lambda: run_train(cfg))
    return d / "model"


def loss_eval(args, name: str, model: str, model_dir: Path, paths: dict[str, str], out: Path,
              timings: Timings, split: str = "heldout", tasks=TARGETS, path: Path | None = None) -> dict:
    """Per example answer-token loss of `model` on every target's `split` examples (held-out:
    <name>.loss.json; targets: <name>.target_loss.json; or `path`); the product's `answer_loss`,
    called per example so that each example's loss is kept."""
    path = path or out / "evals" / (f"{name}.loss.json" if split == "heldout" else f"{name}.{split[:-1]}_loss.json")

    def go():
        import torch

        from less_ray.data.io import read_records
        from less_ray.eval.runner import EvalConfig, answer_loss, load_for_eval
        torch.set_num_threads(args.eval_threads)
        m, tok = load_for_eval(model, str(model_dir), "float32")
        cfg = EvalConfig(model=model, base_model=str(model_dir), chat_format=args.chat_format,
                         max_prompt_tokens=args.eval_max_tokens, batch_size=1)
        res = {"model": model, "tasks": {}}
        for t in tasks:
            per, skipped = {}, []
            records = read_records(paths[f"{split}_{t}"]).records
            for r in records:
                try:
                    per[r.id] = answer_loss([r], m, tok, cfg)["mean"]
                except ValueError:  # no answer token within eval_max_tokens
                    skipped.append(r.id)
            sub = {}
            for r in records:
                if r.id in per:
                    sub.setdefault(r.subtask, []).append(per[r.id])
            res["tasks"][t] = {"metric": "answer_loss", "mean": statistics.fmean(per.values()), "n": len(per),
                               "skipped": skipped, "per_example": per,
                               "per_subtask": {k: statistics.fmean(v) for k, v in sorted(sub.items())}}
        write_json(path, res)
        log.info("loss %s: %s", name, {t: round(v["mean"], 4) for t, v in res["tasks"].items()})

    timings.piece(f"eval/{name}" if split == "heldout" else f"eval_{split}/{name}", path, go)
    return json.loads(path.read_text())


def gen_eval(args, name: str, model: str, model_dir: Path, out: Path, root: Path, timings: Timings) -> dict:
    from less_ray.eval.runner import EvalConfig, run_eval
    path = out / "evals" / f"{name}.gen.json"
    cfg = EvalConfig(model=model, base_model=str(model_dir), tasks=list(TARGETS), out=str(path),
                     data_root=str(root), chat_format=args.chat_format, batch_size=4,
                     max_prompt_tokens=args.gen_prompt_tokens, bbh_max_per_task=args.gen_bbh_per_task,
                     bbh_max_new_tokens=args.gen_bbh_new_tokens, mmlu_max_per_subject=args.gen_mmlu_per_subject,
                     tydiqa_max_per_language=args.gen_tydiqa_per_language)
    timings.piece(f"gen/{name}", path, lambda: run_eval(cfg))
    return json.loads(path.read_text())


# --- analysis -----------------------------------------------------------------------------------
def shares(path: str | Path) -> dict[str, float]:
    src = [json.loads(line)["source"].split("/")[0] for line in Path(path).read_text().splitlines()]
    return {k: round(v / len(src), 4) for k, v in Counter(src).most_common()}


def paired(a: dict[str, float], b: dict[str, float], n_boot: int, seed: int = 0) -> dict:
    """mean(a - b) over shared examples, with a percentile bootstrap 95% CI (resampling examples)."""
    import numpy as np
    ids = sorted(set(a) & set(b))
    d = np.array([a[i] - b[i] for i in ids])
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    return {"n": len(d), "mean_diff": float(d.mean()), "ci95": [float(np.percentile(boots, 2.5)),
                                                               float(np.percentile(boots, 97.5))],
            "frac_lower": float((d < 0).mean())}


def selection_pairs(args, t: str, pe: dict[str, dict[str, float]]) -> dict:
    """LESS's and RDS's model for target `t` against every random seed, the full pool's model, then the
    base model, paired over the examples (`pe`: per-example losses by model; absent models are left out)."""
    pt = {}
    for a in (f"less_{t}", f"rds_{t}"):
        for b in [f"random_seed{s}" for s in args.seeds] + ["full", "base"]:
            if a in pe and b in pe:
                pt[f"{a} - {b}"] = paired(pe[a], pe[b], args.bootstrap)
    return pt


def read_scores(folder: Path, task: str):
    import pyarrow.parquet as pq
    t = pq.read_table(folder / task / "scores.parquet", columns=["id", "source", "score"]).to_pydict()
    return t["id"], t["source"], t["score"]


def planted_table(args, out: Path) -> dict:
    folders = {"LESS": (out / "less" / "scores", PLANTED), "RDS (MiniLM)": (out / "less" / "selectors" / "rds", PLANTED),
               "k-center": (out / "less" / "selectors" / "kcenter", PLANTED)}
    for s in args.seeds:
        folders[f"random seed {s}"] = (out / "random" / f"seed{s}", "all")
    return {name: planted_row(folder, task) for name, (folder, task) in folders.items()
            if (folder / task / "scores.parquet").exists()}


def planted_row(folder: Path, task: str) -> dict:
    """The planted task's share in a score folder's top 1/5/10% (select's order) and its AUC."""
    import numpy as np
    from sklearn.metrics import roc_auc_score
    ids, src, score = read_scores(folder, task)
    y = np.array([s.split("/")[0] == PLANTED for s in src])
    sc = np.array(score, dtype=np.float64)
    order = sorted(range(len(ids)), key=lambda i: (-sc[i], ids[i]))  # select's order: score desc, id asc
    row = {"pool_share": float(y.mean()), "auc": float(roc_auc_score(y, sc)), "pool_rows": len(ids)}
    for p in (0.01, 0.05, 0.10):
        k = max(1, int(p * len(ids)))
        row[f"top{round(p * 100)}%"] = float(y[order[:k]].mean())
    return row


def stability(args, out: Path) -> dict:
    import numpy as np
    from scipy.stats import spearmanr
    t = args.stability_target

    def top(ids, score, k):
        order = sorted(range(len(ids)), key=lambda i: (-score[i], ids[i]))
        return {ids[i] for i in order[:k]}

    # the examples both runs scored (the second run's sample, or the whole pool): each run's top
    # top_p of those, so the two selections are of the same size over the same candidates
    ib, _, _ = read_scores(out / "less_stability" / "scores", t)
    common = set(ib)

    def compare(a, b, ta, tb):
        ia, _, sa = (list(v) for v in zip(*[r for r in zip(*read_scores(a, ta)) if r[0] in common]))
        ib, _, sb = (list(v) for v in zip(*[r for r in zip(*read_scores(b, tb)) if r[0] in common]))
        mb = dict(zip(ib, sb))
        x = np.array(sa)
        y = np.array([mb[i] for i in ia])
        k = int(args.top_p * len(ia))
        A, B = top(ia, sa, k), top(ib, sb, k)
        return {"n": len(ia), "jaccard_top": len(A & B) / len(A | B), "shared_top": len(A & B), "k": k,
                "spearman": float(spearmanr(x, y).statistic)}
    res = {"target": t, "LESS (warmup seeds %d vs %d)" % (args.warmup_seed, args.stability_warmup_seed):
           compare(out / "less" / "scores", out / "less_stability" / "scores", t, t)}
    if len(args.seeds) >= 2:
        s0, s1 = args.seeds[:2]
        res[f"random (seeds {s0} vs {s1})"] = compare(out / "random" / f"seed{s0}", out / "random" / f"seed{s1}", "all", "all")
    n = res[next(iter(k for k in res if k != "target"))]["n"]
    res["note"] = (f"over the {n} pool examples the second run scored"
                   + (f" (a seeded sample, --stability-pool {args.stability_pool}); each run's top {args.top_p:g} of those"
                      if args.stability_pool else "") + "; random: the random selector's scores of two seeds")
    return res


def stability_pool(args, out: Path, paths: dict[str, str]) -> tuple[str, float]:
    """The second run's pool (a seeded sample of the pool file, or the file itself) and the warmup
    percentage that draws from it as many examples as the first run's warmup drew."""
    if not args.stability_pool:
        return paths["pool"], args.warmup_percentage
    path, n, n_pool = pool_sample(args, out, paths, "stability_pool", args.stability_pool, 1000)
    drawn = int(n_pool * args.warmup_percentage)  # the warmup's own rule (draw_warmup)
    return str(path), min(1.0, (drawn + 0.5) / n)  # + 0.5: int(n * p) lands on `drawn` despite float rounding


def pool_sample(args, out: Path, paths: dict[str, str], name: str, n: int, salt: int) -> tuple[Path, int, int]:
    """A seeded sample of n records of the pool file, in pool order (written once; its path, size
    and the pool's size)."""
    lines = Path(paths["pool"]).read_text(encoding="utf-8").splitlines()
    n = min(n, len(lines))
    path = out / "data" / f"{name}_{n}.jsonl"
    if not path.exists():
        pick = sorted(random.Random(args.data_seed + salt).sample(range(len(lines)), n))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(lines[i] + "\n" for i in pick), encoding="utf-8")
        tmp.replace(path)
    return path, n, len(lines)


def projection_check(args, out: Path, paths: dict[str, str], model_dir: Path, timings: Timings,
                     epochs: list[int] | None = None) -> None:
    """LESS's scores of a seeded pool sample from the unprojected gradients (identity projection:
    P coordinates) with the same checkpoints, targets and formulas: is d=--dim enough? The
    product's own extract and score stages, as the pipeline configures them, but for the projection.
    `epochs`: extract only these checkpoints (and score nothing): an early look."""
    from less_ray.extract.job import run_extract
    from less_ray.pipeline import extract_config, score_config
    from less_ray.scoring.job import run_score
    from less_ray.train.checkpoint import read_warmup_manifest
    sample, _, _ = pool_sample(args, out, paths, "check_pool", args.check_pool, 2000)
    cfg = pipeline_config(args, out, paths, model_dir, "less", args.warmup_seed, TARGETS, False, pool=str(sample))
    # unprojected features take ~9 GB per actor: the stage's own memory estimate places them
    cfg = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, projection="identity", min_actors=1,
                                                               actor_memory_gb=None))
    root = out / "projection_check"
    pool_stores, target_stores = [], {t: [] for t in TARGETS}
    for c in read_warmup_manifest(out / "less" / "warmup")["checkpoints"]:
        if epochs is not None and c["epoch"] not in epochs:
            continue
        for name, data, kind in [("pool", str(sample), "adam")] + [(t, paths[f"targets_{t}"], "sgd") for t in TARGETS]:
            folder = root / "datastore" / f"epoch_{c['epoch']}" / name
            done = sorted(folder.glob("dim*/manifest.json"))  # identity: one store, dim = P
            if not done:
                ecfg = extract_config(cfg, c["path"], data, folder, kind)
                timings.piece(f"projection_check/extract/epoch_{c['epoch']}/{name}", folder / "none",
                              lambda ecfg=ecfg: run_extract(ecfg))
                done = sorted(folder.glob("dim*/manifest.json"))
            (pool_stores if name == "pool" else target_stores[name]).append(str(done[0].parent))
    if epochs is not None:
        return
    scfg = score_config(cfg, pool_stores, target_stores, root / "scores")
    timings.piece("projection_check/score", root / "scores" / "score_summary.json", lambda: run_score(scfg))


def projection_table(args, out: Path) -> dict:
    """Per target: the projected run's LESS scores of the sample against the unprojected ones
    (experiments/projection_fidelity.py's agreement: Spearman, Pearson, shared top k, RMSE / sd)."""
    import importlib.util

    import numpy as np
    spec = importlib.util.spec_from_file_location("projection_fidelity", Path(__file__).with_name("projection_fidelity.py"))
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    res = {}
    for t in TARGETS:
        exact, run = out / "projection_check" / "scores", out / "less" / "scores"
        if not (exact / t / "scores.parquet").exists() or not (run / t / "scores.parquet").exists():
            continue
        ie, _, se = read_scores(exact, t)
        ir, _, sr = read_scores(run, t)
        m = dict(zip(ir, sr))
        res[t] = fidelity.agreement(np.array(se, dtype=np.float64), np.array([m[i] for i in ie], dtype=np.float64),
                                    np.array(ie), args.top_p)
    return res


def warmup_loss_curve(args, out: Path, model_dir: Path, timings: Timings) -> None:
    """Mean answer-token loss on the warmup's own examples: base model, then each checkpoint
    (the warmup itself keeps only each epoch's mean train loss, no per-step losses)."""
    from less_ray.train.checkpoint import read_warmup_manifest
    path = out / "evals" / "warmup_curve.json"

    def go():
        import torch

        from less_ray.data.io import read_records
        from less_ray.eval.runner import EvalConfig, answer_loss, load_for_eval
        torch.set_num_threads(args.eval_threads)
        man = read_warmup_manifest(out / "less" / "warmup")
        recs = read_records(man["data"]).records
        cfg = EvalConfig(model="x", chat_format=args.chat_format, max_prompt_tokens=args.max_seq_length, batch_size=4)
        res = {"n": len(recs), "loss": {}}
        for name, model in [("base", str(model_dir))] + [(f"epoch_{c['epoch']}", c["path"]) for c in man["checkpoints"]]:
            m, tok = load_for_eval(model, str(model_dir), "float32")
            res["loss"][name] = answer_loss(recs, m, tok, cfg)["mean"]
            log.info("warmup data loss %s: %.4f", name, res["loss"][name])
        write_json(path, res)

    timings.piece("warmup_loss_curve", path, go)


def warmup_curve(run: Path) -> dict:
    """Per-epoch mean train loss (the warmup's state) and the mean pool loss at each checkpoint
    (the datastore's per-example losses): the warmup records no per-step loss."""
    from less_ray.store import read_store
    from less_ray.train.checkpoint import read_warmup_manifest
    out = {"train_loss_per_epoch": {}, "pool_loss_per_checkpoint": {}}
    curve = run.parent / "evals" / "warmup_curve.json"
    if curve.exists():
        out["warmup_data_loss"] = json.loads(curve.read_text())["loss"]
    if not (run / "warmup" / "warmup_manifest.json").exists():
        return out
    for c in read_warmup_manifest(run / "warmup")["checkpoints"]:
        st = Path(c["path"]) / "state.json"
        if st.exists():
            s = json.loads(st.read_text())
            out["train_loss_per_epoch"][c["epoch"]] = {"loss": s["train"]["loss"], "steps": s.get("global_step"),
                                                       "avg_lr": s.get("avg_lr"), "seconds": s["train"]["seconds"]}
        store = run / "datastore" / f"epoch_{c['epoch']}" / "pool"
        stores = sorted(store.glob("dim*/manifest.json"))
        if stores:
            try:
                loss = read_store(stores[0].parent, ("loss",))["loss"]
                out["pool_loss_per_checkpoint"][c["epoch"]] = float(sum(loss) / len(loss))
            except Exception as e:  # noqa: BLE001 (a store without the column: leave it out)
                log.warning("no pool loss in %s: %s", stores[0].parent, e)
    return out


def summarize(args, out: Path, paths: dict[str, str], losses: dict, gens: dict, timings: Timings,
              facts: dict, tok: dict, est: dict) -> dict:
    rnd = [f"random_seed{s}" for s in args.seeds if f"random_seed{s}" in losses]
    table, pairs, matrix = {}, {}, {}
    for m, r in losses.items():
        matrix[m] = {t: r["tasks"][t]["mean"] for t in TARGETS}
    for t in TARGETS:
        row = {"base": matrix.get("base", {}).get(t)}
        for m in (f"less_{t}", f"rds_{t}", "full"):
            if m in matrix:
                row[m.split("_")[0] if m != "full" else "full"] = matrix[m][t]
        if rnd:
            vals = [matrix[m][t] for m in rnd]
            row["random"] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "values": vals}
        table[t] = row
        pe = {m: losses[m]["tasks"][t]["per_example"] for m in losses}
        pt = selection_pairs(args, t, pe)
        if f"less_{t}" in pe and f"rds_{t}" in pe:
            pt[f"less_{t} - rds_{t}"] = paired(pe[f"less_{t}"], pe[f"rds_{t}"], args.bootstrap)
        pairs[t] = pt
    sel = {}
    for t in TARGETS:
        for name, f in ((f"less_{t}", out / "less" / "scores" / t), (f"rds_{t}", out / "less" / "selectors" / "rds" / t),
                        (f"kcenter_{t}", out / "less" / "selectors" / "kcenter" / t)):
            if (f / f"top_p{args.top_p:g}.jsonl").exists():
                sel[name] = shares(f / f"top_p{args.top_p:g}.jsonl")
    for s in args.seeds:
        f = out / "random" / f"seed{s}" / "all" / f"top_p{args.top_p:g}.jsonl"
        if f.exists():
            sel[f"random_seed{s}"] = shares(f)
    sel["pool"] = shares(paths["pool"])
    stages = {}
    for run in ("less", "less_stability"):  # the stability run's stages under its folder's name
        f = out / run / "stages.json"
        if f.exists():
            stages.update({(k if run == "less" else f"{run}/{k}"): v for k, v in json.loads(f.read_text()).items()})
    trained = {}
    for d in sorted((out / "models").glob("*/state.json")):
        s = json.loads(d.read_text())
        trained[d.parent.name] = {k: s.get(k) for k in ("epoch", "global_step", "steps_per_epoch", "n_examples")}
        trained[d.parent.name]["final_epoch_train_loss"] = (s.get("train") or {}).get("loss")
    return {"args": vars(args), "facts": facts, "tokens": tok, "estimate_s": est,
            "k": int(math.floor(args.top_p * facts["pool"] + 1e-9)),  # select's floor rule on the pool file
            "loss_table": table, "paired": pairs,
            "matrix": matrix, "selection_shares": sel, "trained": trained,
            "warmup": warmup_curve(out / "less"),
            # by what is on disk, not by this invocation's --phases (a later `--phases gen` keeps it)
            "planted": planted_table(args, out) if (out / "less" / "scores" / PLANTED / "scores.parquet").exists() else None,
            "stability": stability(args, out) if (out / "less_stability" / "scores").exists() else None,
            "projection": projection_table(args, out),
            "target_loss": target_loss_table(args, out),
            "cot_folds": cot_fold_table(args, out),
            "gen": {m: {t: g["tasks"][t]["score"] for t in g["tasks"]} for m, g in gens.items()},
            "gen_n": {t: g["tasks"][t]["n"] for g in list(gens.values())[:1] for t in g["tasks"]},
            "timings_s": {"pieces": timings.data,
                          "pipeline_stages": {k: v.get("seconds") for k, v in stages.items()}}}


def shot_of(target_id: str) -> int:
    """LESS's BBH exemplar ids are "bbh/<task>:<shot>" (shot 0-2)."""
    return int(target_id.rsplit(":", 1)[1])


def cot_fold_scores(args, out: Path, folds: list[int]) -> tuple:
    """(pool ids, {fold: LESS BBH score per pool example from the targets of the other shots,
    "all": from every target}), through the product's core influence on the run's stored features,
    weighted by the checkpoints' avg_lr as the score stage does."""
    import numpy as np

    from less_ray.core.influence import TaskQuery, normalize_weights, partial_subtask_scores, reduce_max, stack_queries
    from less_ray.store import iter_blocks, read_manifest, read_store
    epochs = sorted((out / "less" / "datastore").glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    pools = [next((e / "pool").glob(f"dim{args.dim}/manifest.json")).parent for e in epochs]
    targets = [next((e / "bbh").glob(f"dim{args.dim}/manifest.json")).parent for e in epochs]
    w = normalize_weights([read_manifest(p).avg_lr for p in pools])
    tdata = [read_store(t, ("id", "features", "subtask")) for t in targets]
    if any(list(d["id"]) != list(tdata[0]["id"]) for d in tdata):
        raise RuntimeError("cot_folds: the checkpoints' BBH target stores hold different examples")
    shots = np.array([shot_of(i) for i in tdata[0]["id"]])
    keep = {"all": np.ones(len(shots), bool), **{f: shots != f for f in folds}}
    queries = [TaskQuery.build(str(k), [d["features"][m] for d in tdata], list(tdata[0]["subtask"][m]), w)
               for k, m in keep.items()]
    stacked, slices = stack_queries(queries)
    ids, total = None, None
    for c, pool in enumerate(pools):
        blocks = list(iter_blocks(pool, ("id", "features")))
        cid = np.concatenate([b["id"] for b in blocks])
        part = np.concatenate([partial_subtask_scores(b["features"], stacked[c]) for b in blocks]).astype(np.float64)
        if ids is None:
            ids, total = cid, part
        elif list(cid) != list(ids):
            raise RuntimeError(f"cot_folds: pool store {pool} holds other examples, or in another order")
        else:
            total += part
    return ids, {k: reduce_max(total, sl)[0] for k, sl in zip(keep, slices)}


def cot_folds(args, out: Path, paths: dict[str, str], model_dir: Path, timings: Timings) -> None:
    """The cot_folds phase (see the module docstring): selections, trainings, held-out-shot losses."""
    from less_ray.core.influence import TopK
    from less_ray.data.io import read_records, write_jsonl
    from less_ray.data.count import count_records
    root = out / "cot_folds"
    folds = [0, 1, 2]
    k = int(math.floor(args.top_p * count_records(paths["pool"]) + 1e-9))
    sels = {f: root / f"fold{f}" / f"top_p{args.top_p:g}.jsonl" for f in folds}
    if not all(p.exists() for p in sels.values()):
        ids, scores = cot_fold_scores(args, out, folds)
        run_ids, _, run_scores = read_scores(out / "less" / "scores", "bbh")
        mine = dict(zip(ids, scores["all"]))
        gap = max(abs(mine[i] - s) for i, s in zip(run_ids, run_scores))
        if set(mine) != set(run_ids) or gap > 1e-5:
            raise RuntimeError(f"cot_folds: every target's scores differ from the run's (max |diff| {gap:.2e})")
        log.info("cot_folds: every target's scores reproduce the run's (max |diff| %.1e)", gap)
        records = {r.id: r for r in read_records(paths["pool"]).records}
        for key in ["all", *folds]:
            top = TopK(k)
            top.push(scores[key], ids)
            chosen = list(top.result()[1])
            if key == "all":
                run_sel = [r.id for r in read_records(out / "less" / "scores" / "bbh" / f"top_p{args.top_p:g}.jsonl").records]
                if chosen != run_sel:
                    raise RuntimeError("cot_folds: every target's top k is not the run's selection")
                continue
            sels[key].parent.mkdir(parents=True, exist_ok=True)
            write_jsonl([records[i] for i in chosen], sels[key])
    for f in folds:
        name = f"less_bbh_fold{f}"
        model = train(args, name, sels[f], out, model_dir, args.train_epochs, timings, models=root / "models")
        loss_eval(args, name, str(model), model_dir, paths, out, timings, "targets", ["bbh"],
                  path=root / "evals" / f"{name}.target_loss.json")


def cot_fold_table(args, out: Path) -> dict | None:
    """LESS cross-fitted (each exemplar's loss from the model whose selection did not see its
    shot) against every random seed and the base model, paired over the exemplars; and each fold
    model's selection overlap with the all-shot one."""
    root = out / "cot_folds"
    files = {f: root / "evals" / f"less_bbh_fold{f}.target_loss.json" for f in (0, 1, 2)}
    if not all(p.exists() for p in files.values()):
        return None
    cross = {}
    for f, p in files.items():
        per = json.loads(p.read_text())["tasks"]["bbh"]["per_example"]
        cross.update({i: v for i, v in per.items() if shot_of(i) == f})
    found = {p.name.removesuffix(".target_loss.json"): json.loads(p.read_text())["tasks"]
             for p in sorted((out / "evals").glob("*.target_loss.json"))}
    others = {m: r["bbh"]["per_example"] for m, r in found.items() if "bbh" in r}
    res = {"n": len(cross), "mean": {"less_bbh cross-fitted": statistics.fmean(cross.values())}, "paired": {}}
    for m in ["base", "less_bbh", "rds_bbh"] + [f"random_seed{s}" for s in args.seeds]:
        if m in others:
            res["mean"][m] = statistics.fmean(others[m][i] for i in cross)
            res["paired"][f"less_bbh cross-fitted - {m}"] = paired(cross, others[m], args.bootstrap)
    full = out / "less" / "scores" / "bbh" / f"top_p{args.top_p:g}.jsonl"
    if full.exists():
        a = {json.loads(x)["id"] for x in full.read_text().splitlines()}
        res["shared_with_all_shots"] = {f: len(a & {json.loads(x)["id"] for x in (root / f"fold{f}" / full.name).read_text().splitlines()})
                                        for f in files}
    return res


def target_loss_table(args, out: Path) -> dict | None:
    """From the target_loss phase's files: each model's mean loss on each target set's own
    examples, and LESS's (and RDS's) paired differences against every random seed."""
    found = {p.name.removesuffix(".target_loss.json"): json.loads(p.read_text())
             for p in sorted((out / "evals").glob("*.target_loss.json"))}
    if not found:
        return None
    tasks = [t for t in TARGETS if any(t in r["tasks"] for r in found.values())]
    mean = {m: {t: r["tasks"][t]["mean"] for t in tasks if t in r["tasks"]} for m, r in found.items()}
    n = {t: next(r["tasks"][t]["n"] for r in found.values() if t in r["tasks"]) for t in tasks}
    pairs = {}
    for t in tasks:
        pt = selection_pairs(args, t, {m: r["tasks"][t]["per_example"] for m, r in found.items() if t in r["tasks"]})
        if pt:
            pairs[t] = pt
    return {"tasks": tasks, "n": n, "mean": mean, "paired": pairs}


def settings_line(s: dict) -> str:
    a = s["args"]
    return (f"Pool {s['facts']['pool']} real examples; top {a['top_p'] * 100:g}% = {s['k']}; SmolLM2-135M-Instruct, "
            f"LoRA r={a['lora_r']} alpha={a['lora_alpha']}, {a['projection']} d={a['dim']}, max_seq_length "
            f"{a['max_seq_length']}, lr {a['lr']}, effective batch {a['batch_size']}, warmup {a['warmup_epochs']} epochs, "
            f"selections trained {a['train_epochs']} epochs, full pool {a['full_epochs']}.")


def result_tables(s: dict) -> list[dict]:
    """Every table of the summary as {caption, columns, rows, note}: one source for results.md and
    for the report page (`ReportConfig.tables`)."""
    f = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    T = []
    rows = []
    for t, row in s["loss_table"].items():
        r = row.get("random")
        rtxt = "—" if not r else f"{r['mean']:.4f} ± {r['std']:.4f} ({', '.join(f'{v:.4f}' for v in r['values'])})"
        rows.append([f"{t} ({s['facts']['heldout'].get(t)})", f(row.get("base")), f(row.get("less")), rtxt,
                     f(row.get("rds")), f(row.get("full"))])
    T.append({"caption": "Held-out answer-token loss (lower is better; each row's model on each target)",
              "columns": ["target (n)", "base", "LESS", "random (mean ± sd over seeds)", "RDS", "full"], "rows": rows})
    T.append({"caption": "Paired per-example differences (mean loss difference, bootstrap 95% CI; < 0: the first is better)",
              "columns": ["target", "comparison", "n", "mean diff", "95% CI", "share of examples lower"],
              "rows": [[t, k, v["n"], *paired_cells(v)] for t, pt in s["paired"].items() for k, v in pt.items()]})
    T.append({"caption": "Cross-target matrix (held-out loss; rows: model, columns: target)",
              "columns": ["model", *TARGETS], "rows": [[m, *(f"{r[t]:.4f}" for t in TARGETS)] for m, r in s["matrix"].items()]})
    if s.get("target_loss"):
        tl = s["target_loss"]
        T.append({"caption": "Loss on the targets LESS scored against (answer tokens; BBH: the chain-of-thought "
                             "exemplars; held out from training, not from selection; n " + json.dumps(tl["n"]) + ")",
                  "columns": ["model", *tl["tasks"]],
                  "rows": [[m, *(f"{r[t]:.4f}" if t in r else "—" for t in tl["tasks"])] for m, r in tl["mean"].items()]})
        T.append({"caption": "Paired differences on the targets LESS scored against (< 0: the first is better)",
                  "columns": ["target", "comparison", "n", "mean diff", "95% CI", "share of examples lower"],
                  "rows": [[t, k, v["n"], *paired_cells(v)] for t, pt in tl["paired"].items() for k, v in pt.items()]})
    if s.get("cot_folds"):
        cf = s["cot_folds"]
        T.append({"caption": f"BBH chain-of-thought exemplars, each held out from its LESS selection (n {cf['n']}; "
                             "cross-fitted over the 3 shots; paired < 0: cross-fitted LESS is better)",
                  "columns": ["model", "mean loss", "mean diff", "95% CI", "share of examples lower"],
                  "rows": [[m, f"{v:.4f}", *paired_cells(cf["paired"].get(f"less_bbh cross-fitted - {m}"))]
                           for m, v in cf["mean"].items()],
                  "note": ("fold selections share with the all-shot one (of k): " + json.dumps(cf["shared_with_all_shots"]))
                  if cf.get("shared_with_all_shots") else ""})
    if s.get("gen"):
        T.append({"caption": "Secondary metrics (generation / multiple choice, small caps: n per task "
                             + json.dumps(s.get("gen_n")) + ")", "columns": ["model", *TARGETS],
                  "rows": [[m, *(f"{100 * r[t]:.1f}" if t in r else "—" for t in TARGETS)] for m, r in s["gen"].items()]})
    if s.get("planted"):
        share = 100 * next(iter(s["planted"].values()))["pool_share"]
        T.append({"caption": f"Planted task ({PLANTED}, pool share {share:.1f}%)",
                  "columns": ["selector", "top 1%", "top 5%", "top 10%", "AUC"],
                  "rows": [[n, f"{100 * r['top1%']:.1f}%", f"{100 * r['top5%']:.1f}%", f"{100 * r['top10%']:.1f}%",
                            f"{r['auc']:.3f}"] for n, r in s["planted"].items()]})
    if s.get("stability"):
        st = s["stability"]
        T.append({"caption": f"Stability ({st['target']}): top-5% overlap and rank correlation",
                  "columns": ["pair", "examples compared", "shared of k", "Jaccard", "Spearman"],
                  "rows": [[n, r.get("n", "—"), f"{r['shared_top']} / {r['k']}", f"{r['jaccard_top']:.3f}",
                            f"{r['spearman']:.3f}"] for n, r in st.items() if isinstance(r, dict)],
                  "note": st.get("note", "")})
    if s.get("projection"):
        T.append({"caption": f"Projection check: the run's LESS scores ({s['args']['projection']} d={s['args']['dim']}) "
                             "against the unprojected gradients' (identity), on a seeded pool sample",
                  "columns": ["target", "examples", "Spearman", "Pearson", "shared of top k", "Jaccard",
                              "RMSE / sd of exact scores"],
                  "rows": [[t, r["n"], f"{r['spearman']:.3f}", f"{r['pearson']:.3f}", f"{r['shared_top']} / {r['k']}",
                            f"{r['jaccard_top']:.3f}", f"{r['rmse_over_sd']:.3f}"]
                           for t, r in s["projection"].items()]})
    w = s.get("warmup") or {}
    if w.get("train_loss_per_epoch"):
        rows = []
        for e, r in w["train_loss_per_epoch"].items():
            pl = w["pool_loss_per_checkpoint"].get(e, w["pool_loss_per_checkpoint"].get(str(e)))
            rows.append([str(e), f"{r['loss']:.4f}", r["steps"], f(pl)])
        T.append({"caption": "Warmup loss", "columns": ["epoch", "mean train loss", "steps (cumulative)",
                                                       "mean pool loss at checkpoint"], "rows": rows,
                  "note": ("mean answer-token loss on the warmup examples: " + ", ".join(
                      f"{k} {v:.4f}" for k, v in w["warmup_data_loss"].items())) if w.get("warmup_data_loss") else ""})
    sel = s["selection_shares"]
    cols = [c for c in sel if c != "pool"]
    T.append({"caption": "Source composition of every selection (%)", "columns": ["source", "pool", *cols],
              "rows": [[src, f"{100 * sel['pool'][src]:.1f}", *(f"{100 * sel[c].get(src, 0):.1f}" for c in cols)]
                       for src in sel["pool"]]})
    if s.get("trained"):
        T.append({"caption": "Trainings", "columns": ["model", "examples", "epochs", "optimizer steps",
                                                     "last-epoch train loss"],
                  "rows": [[m, r["n_examples"], r["epoch"], r["global_step"], f(r["final_epoch_train_loss"])]
                           for m, r in s["trained"].items()]})
    T.append({"caption": "Wall time per stage (s)", "columns": ["stage", "seconds"],
              "rows": [[f"pipeline {k}", v] for k, v in s["timings_s"]["pipeline_stages"].items()]
              + [[k, v] for k, v in s["timings_s"]["pieces"].items()],
              "note": "estimate before the run (s): " + json.dumps(s["estimate_s"])})
    return T


def paired_cells(p: dict | None) -> list[str]:
    """mean diff, 95% CI, share lower; dashes for no comparison."""
    if not p:
        return ["—", "—", "—"]
    return [f"{p['mean_diff']:+.4f}", f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]", f"{100 * p['frac_lower']:.0f}%"]


def render_markdown(s: dict) -> str:
    cell = lambda c: "—" if c is None else str(c).replace("|", "\\|")  # noqa: E731
    L = [settings_line(s), ""]
    for t in result_tables(s):
        L += [f"### {t['caption']}", "", "| " + " | ".join(t["columns"]) + " |", "|---" * len(t["columns"]) + "|"]
        L += ["| " + " | ".join(cell(c) for c in r) + " |" for r in t["rows"]]
        if t.get("note"):
            L += ["", t["note"]]
        L.append("")
    return "\n".join(L)


def render_docs_section(results_json: str | Path) -> str:
    """The docs/results.md section of a finished (or partial) run, from its results.json."""
    s = json.loads(Path(results_json).read_text())
    return ("## Real data, issue #19: LESS vs random vs RDS vs full (CPU run)\n\n"
            f"Produced by `experiments/real_data.py --out {s['args']['out']}`; raw logs in `docs/logs/real19/`.\n\n"
            + render_markdown(s))


# --- workarounds for the product at the frozen commit ---------------------------------------------
def patch_embedding_store_reader() -> None:
    """less_ray 13046a5: the stores' shards became Arrow IPC files (`store.SUFFIX` ".arrow"), but
    `selectors.embeddings._finish` still opens the first shard with `pq.ParquetFile` to read the
    feature width, so every embedding selector (rds, kcenter) fails with "Parquet magic bytes not
    found". Same function, reading the schema with pyarrow.ipc; applied only where the bug is."""
    import inspect

    from less_ray.selectors import embeddings as E
    if "ParquetFile" not in inspect.getsource(E._finish):
        return

    def _finish(ident, data, store, n_shards, digest, seconds):
        import pyarrow as pa
        entries = [E.verified_shard(store, i) for i in range(n_shards)]
        if any(e is None for e in entries):
            raise RuntimeError(f"embeddings {store}: shards {[i for i, e in enumerate(entries) if e is None][:10]} missing")
        with pa.OSFile(str(store / entries[0]["file"]), "rb") as f:
            dim = pa.ipc.open_file(f).schema.field("features").type.list_size
        E.write_manifest(store, E.StoreManifest(
            kind="embedding", checkpoint=ident["model"], checkpoint_hash=ident["weights"], model=ident["model"],
            projection=E.Projection("identity", 0, dim), normalized=True, dtype="float32",
            count=sum(e["rows"] for e in entries), shards=entries,
            input={"path": str(data), "sha256": digest}, versions=E.library_versions(),
            extra={"encoder": ident, "pooling": "mean over non-padding tokens, then L2-normalised",
                   "loss": "not computed (0)", "seconds": round(seconds, 2)}))
    E._finish = _finish
    log.warning("patched less_ray.selectors.embeddings._finish (reads Arrow IPC shards; the product's reads Parquet)")


# --- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Path(args.out).resolve()
    if args.render_docs:
        print(render_docs_section(out / "results.json"))
        return 0
    if args.report:
        print(write_report(out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"args.{time.strftime('%Y%m%d-%H%M%S')}.json", vars(args))
    timings = Timings(out / "timings.json")
    from less_ray.data.sources import default_data_root
    root = Path(args.data_root).resolve() if args.data_root else default_data_root()
    import less_ray
    log.info("less_ray from %s; phases %s", less_ray.__file__, args.phases)

    model_dir = Path(args.base_model).resolve() if args.base_model else out / "smollm2"
    if not (model_dir / "config.json").exists():
        from less_ray.models import materialize_smollm2
        materialize_smollm2(model_dir)
    paths = build_data(args, out, root, model_dir)
    facts = json.loads((out / "data" / "data_facts.json").read_text())
    log.info("data: %s", json.dumps({k: facts[k] for k in ("candidates", "pool", "pool_sources", "planted", "targets", "heldout")}))
    tok_path = out / "data" / "tokens.json"
    if not tok_path.exists():
        write_json(tok_path, token_report(args, paths, model_dir))
    tok = json.loads(tok_path.read_text())
    log.info("tokens: %s", json.dumps(tok))
    est = estimate(args, tok)
    write_json(out / "estimate.json", est)
    for k, v in est.items():
        log.info("estimate %-60s %7.0f s (%.1f h)", k, v, v / 3600)

    patch_embedding_store_reader()
    from less_ray.ray_runtime import ensure_ray
    ensure_ray(None, args.num_cpus)
    losses, gens = {}, {}
    if "core" in args.phases or "planted" in args.phases:
        from less_ray.pipeline import run_pipeline
        cfg = pipeline_config(args, out, paths, model_dir, "less", args.warmup_seed, (*TARGETS, PLANTED), True)
        t0 = time.time()
        run_pipeline(dataclasses.replace(cfg, stages=["warmup"]))  # first alone: its loss curve, early
        warmup_loss_curve(args, out, model_dir, timings)
        losses["base"] = loss_eval(args, "base", str(model_dir), model_dir, paths, out, timings)
        run_pipeline(cfg)
        log.info("LESS pipeline (warmup..selectors) returned after %.0fs", time.time() - t0)
        log.info("warmup curve: %s", json.dumps(warmup_curve(out / "less")))
        selections = {}
        for s in args.seeds:
            selections[f"random_seed{s}"] = run_random(args, out, paths, s, timings)
        for t in TARGETS:
            selections[f"less_{t}"] = out / "less" / "scores" / t / f"top_p{args.top_p:g}.jsonl"
            selections[f"rds_{t}"] = out / "less" / "selectors" / "rds" / t / f"top_p{args.top_p:g}.jsonl"
        if "core" in args.phases:
            # the comparison's subject first: one LESS model and one random seed, so that a run cut
            # short still pairs them; then the other LESS models, the other seeds, RDS
            less = [f"less_{t}" for t in TARGETS]
            rand = [f"random_seed{s}" for s in args.seeds]
            order = less[:1] + rand[:1] + less[1:] + rand[1:] + [f"rds_{t}" for t in TARGETS]
            for name in order:
                model = train(args, name, selections[name], out, model_dir, args.train_epochs, timings)
                losses[name] = loss_eval(args, name, str(model), model_dir, paths, out, timings)
                write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    if "projection" in args.phases:  # before the long ones: it says how far to trust the selection
        projection_check(args, out, paths, model_dir, timings, args.check_epochs)
        write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    if "full" in args.phases:
        model = train(args, "full", Path(paths["pool"]), out, model_dir, args.full_epochs, timings)
        losses["full"] = loss_eval(args, "full", str(model), model_dir, paths, out, timings)
        write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    if "stability" in args.phases:  # its stage times: less_stability/stages.json (in the summary)
        from less_ray.pipeline import run_pipeline
        t = args.stability_target
        pool, pct = stability_pool(args, out, paths)
        run_pipeline(pipeline_config(args, out, paths, model_dir, "less_stability", args.stability_warmup_seed, (t,),
                                     False, pool=pool, warmup_percentage=pct))
        write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    if "target_loss" in args.phases:
        for name, model in every_model(out, model_dir):
            loss_eval(args, name, model, model_dir, paths, out, timings, "targets", args.target_loss_tasks)
            write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    if "cot_folds" in args.phases:
        cot_folds(args, out, paths, model_dir, timings)
        write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    if "gen" in args.phases:
        for name, model in every_model(out, model_dir):
            gens[name] = gen_eval(args, name, model, model_dir, out, root, timings)
            write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    write_results(args, out, paths, losses, gens, timings, facts, tok, est)
    print((out / "results.md").read_text())
    return 0


def every_model(out: Path, model_dir: Path) -> list[tuple[str, str]]:
    """(name, model folder) of the base model and of every finished training under <out>/models."""
    return [("base", str(model_dir))] + [(d.name, str(d / "model")) for d in sorted((out / "models").glob("*"))
                                         if (d / "state.json").exists()]


def write_results(args, out, paths, losses, gens, timings, facts, tok, est) -> None:
    # models evaluated in an earlier call of a resumed run count too
    for p in sorted((out / "evals").glob("*.loss.json")):
        losses.setdefault(p.name.removesuffix(".loss.json"), json.loads(p.read_text()))
    for p in sorted((out / "evals").glob("*.gen.json")):
        gens.setdefault(p.name.removesuffix(".gen.json"), json.loads(p.read_text()))
    s = summarize(args, out, paths, losses, gens, timings, facts, tok, est)
    write_json(out / "results.json", s)
    write_json(out / "results.tables.json", {"title": "Issue #19: models trained on each selection",
                                             "note": settings_line(s), "tables": result_tables(s)})
    (out / "results.md").write_text(render_markdown(s))


def write_report(out: Path) -> Path:
    """The LESS run's report page (`less-ray report`) with the experiment's tables on it."""
    from less_ray.selection.report import ReportConfig, run_report
    return run_report(ReportConfig(scores=str(out / "less" / "scores"), out=str(out / "report.html"),
                                   tables=[str(out / "results.tables.json")]))


if __name__ == "__main__":
    sys.exit(main())

"""`instruction_mining`: InstructMining (Cao, Kang, Wang & Sun 2023, arXiv 2307.06290), task-agnostic.

Natural-language quality indicators per pool example, a linear rule over them fitted (least
squares) to the log evaluation loss of models fine-tuned on data subsets, and the pool ranked by
the rule: score = -(w . standardised indicators), lower predicted loss first.

Indicators (`indicators`; every one a column of `<out>/indicators.parquet`, raw):
- reward: `judge.Quality` of (instruction, response) (`record_parts`), by `judge.pool_quality` into
  the reusable folder `quality` (default `<out>/quality`; name mods' folder and the pool is scored
  once for both): the reward model's logit when
  `reward_model` is given (the paper's OpenAssistant deberta), else the judge `model`'s expected
  ALPAGASUS rating (0-5);
- response_length / instruction_length: TOKENS of the base model's tokenizer (no special tokens)
  of the response / the instruction (instruction_length is off by default);
- perplexity: LOG perplexity, the mean answer-token loss under the base model: `loss_stats`' own
  base pass (`compute_stats`), in its statistics folder `stats` (default the loss selectors'
  shared `<out>/../_loss_stats/<key>`: the `perplexity` selector beside this one reads the same
  pass). Examples with no answer token left after truncation have none: they score the lowest
  float32, are counted, and join no mean or subset (the lengths' pass, which tokenises
  each example as LESS does, names them too; the two must agree);
- mtld: bidirectional MTLD of the response (`indicators.mtld`, threshold 0.72);
- knn: mean Euclidean distance to the `knn_k` (6: the paper's KNN-6) nearest other pool examples
  in the pool's unit sentence embeddings (EmbedConfig's encoder, MiniLM by default).
Not implemented: the paper's UniEval naturalness / coherence / understandability (need UniEval).

The fit (the paper's procedure at CPU scale): `fit_subsets` seeded random subsets of
`fit_subset_size` pool examples; each fine-tunes a fresh LoRA copy of the base model (`model`:
the judge folder doubles as base model; `core.finetune`) and is measured by `answer_loss` on the
evaluation set: the --targets, all tasks pooled, or, with none given, a seeded held-out sample of
`eval_size` pool examples that no subset contains. The fine-tunes run on a Ray actor pool of
`fit_actors` (default 1: one actor loads the base once and runs every subset), with the
selectors' resource settings. Then log(eval loss) ~ intercept + sum_i w_i * (subset mean of the
standardised indicator i) by numpy lstsq (z = (x - pool mean) / pool std, scored examples only).
`coefficients` (indicator -> weight) skips the fit (the paper's published rule, or a prior fit's
`rule.weights`); `coefficients_scale: raw` applies them to unstandardised indicators, as the
paper's own rule is written (its units then must match this module's definitions above).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import claim
from ..config import path_field
from ..core.formatting import ChatFormat
from ..shards import read_input_shard
from .base import ALL_TASK, ShardActor, map_shards, read_targets, register, shard_records
from .indicators import draw_subsets, fit_rule, knn_mean_distance, mtld, rule_scores, standardize
from .embeddings import weights_id
from .judge import QualityConfig, pool_quality, quality_source, record_parts
from .loss_stats import UNSCORED

log = logging.getLogger("less_ray")
INDICATORS = ("reward", "response_length", "perplexity", "mtld", "knn", "instruction_length")
SCALES = ("standardized", "raw")


@dataclass
class InstructionMiningConfig(QualityConfig):
    # the base model (perplexity, lengths, the fine-tunes) and the judge of `reward` unless reward_model is given
    model: str | None = path_field("model", None)
    chat_format: ChatFormat = "less"  # the rendering of the perplexity pass and the fine-tunes (and encoder=model)
    # the paper's rule's indicators that need no UniEval; instruction_length may be added
    indicators: list[str] = field(default_factory=lambda: ["reward", "response_length", "perplexity", "mtld", "knn"])
    coefficients: dict[str, float] | None = None  # indicator -> weight: skip the fit (paper's rule / a prior fit)
    coefficients_scale: str = "standardized"  # the coefficients' indicators: standardized (a fit's) | raw (the paper's)
    fit_subsets: int = 12  # fine-tuned subsets (the paper fitted on 129); must exceed indicators + 1
    fit_subset_size: int = 16  # pool examples per subset (CPU demo scale, not the paper's)
    eval_size: int = 32  # no --targets: held-out pool examples (in no subset) as the evaluation set (ours)
    fit_epochs: int = 1  # per subset fine-tune (FinetuneRecipe's default)
    fit_lr: float = 2e-4  # FinetuneRecipe's default
    fit_batch_size: int = 4  # FinetuneRecipe's default
    fit_lora_r: int = 8  # FinetuneRecipe's default
    fit_lora_alpha: int = 16  # FinetuneRecipe's default
    # LoRA's target modules (FinetuneRecipe's)
    fit_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    fit_actors: int = 1  # actors fine-tuning subsets at once (each loads the base once)
    knn_k: int = 6  # the knn indicator's neighbours (the paper's KNN-6)
    mtld_threshold: float = 0.72  # MTLD's factor TTR (McCarthy & Jarvis 2010)
    max_seq_length: int = 2048  # LossStatsConfig's default: perplexity pass and fine-tunes
    loss_batch_size: int = 16  # LossStatsConfig's batch_size default: perplexity pass and eval loss
    # reusable per-shard length / MTLD parts (default <out>/pool_indicators)
    pool_indicators: str | None = path_field("out", None)
    # loss_stats' statistics folder holding perplexity's base pass (default: the loss selectors' shared
    # <out>/../_loss_stats/<key>, so a `perplexity` selector beside this one reuses the pass)
    stats: str | None = path_field("out", None)


def _check(cfg: InstructionMiningConfig) -> None:
    bad = [i for i in cfg.indicators if i not in INDICATORS]
    if bad or not cfg.indicators or len(set(cfg.indicators)) != len(cfg.indicators):
        raise ValueError(f"instruction_mining: indicators must be distinct names from {INDICATORS}, "
                         f"got {cfg.indicators}")
    if not cfg.model:
        raise ValueError("instruction_mining needs model=DIR: the causal LM that is the base model (and the judge)")
    if cfg.coefficients is not None:
        extra = sorted(set(cfg.coefficients) - set(cfg.indicators))
        if extra:
            raise ValueError(f"instruction_mining: coefficients for {extra}, not among indicators {cfg.indicators}")
        if cfg.coefficients_scale not in SCALES:
            raise ValueError(f"coefficients_scale must be one of {SCALES}, not {cfg.coefficients_scale!r}")
    elif cfg.fit_subsets <= len(cfg.indicators) + 1:
        raise ValueError(f"instruction_mining: fit_subsets={cfg.fit_subsets} cannot fit {len(cfg.indicators)} "
                         f"indicators and an intercept: it must exceed {len(cfg.indicators) + 1} "
                         "(or give coefficients)")
    if cfg.fit_subset_size < 1 or cfg.knn_k < 1 or cfg.fit_actors < 1:
        raise ValueError("instruction_mining: fit_subset_size, knn_k and fit_actors must be >= 1")


# ---- indicators ------------------------------------------------------------------------------

class _TextActor(ShardActor):
    """Per shard, no model forward: whether LESS's tokenisation leaves the example an answer token
    (`skipped`, its reason), the response and instruction lengths in base-model tokens, and the
    response's MTLD."""

    def __init__(self, sharded: str, parts: str, base_model: str, chat_format: str, max_seq_length: int,
                 threshold: float):
        from ..core.formatting import FormatConfig
        from ..models import load_tokenizer
        super().__init__(sharded)
        self.tok, self.fmt = load_tokenizer(base_model), FormatConfig(chat_format, max_seq_length)
        self.parts, self.threshold = Path(parts), threshold

    def process(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..core.formatting import SkippedExample, tokenize_messages
        toks = [tokenize_messages(r["messages"], self.tok, self.fmt, example_id=r["id"]) for r in rows]
        inst, resp = zip(*(record_parts(r["messages"]) for r in rows))
        n_tok = lambda texts: [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in texts]  # noqa: E731
        table = pa.table({"id": [r["id"] for r in rows], "source": [r["source"] for r in rows],
                          "skipped": [t.reason if isinstance(t, SkippedExample) else None for t in toks],
                          "response_length": n_tok(resp), "instruction_length": n_tok(inst),
                          "mtld": [mtld(t, self.threshold) for t in resp]})
        tmp = self.parts / f".tmp-{shard:05d}.parquet"
        pq.write_table(table, tmp)
        tmp.rename(self.parts / f"{shard:05d}.parquet")
        return {"shard": shard, "rows": len(rows)}


def base_perplexity(cfg: InstructionMiningConfig) -> tuple[dict[str, float], str, list[dict[str, Any]]]:
    """id -> log perplexity (NaN where skipped) from `loss_stats`' base pass: its statistics folder
    (`stats`, default the loss selectors' shared `<out>/../_loss_stats/<key>`), so a `perplexity`
    selector beside this one reads the same pass instead of running it again. Also the folder and
    the jobs this call ran (none when it was there)."""
    from .base import SelectorConfig
    from .loss_stats import LossStatsConfig, compute_stats, iter_stats
    common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SelectorConfig)}
    st = compute_stats(LossStatsConfig(**common, base_model=str(cfg.model), stats=cfg.stats,
                                       chat_format=cfg.chat_format, max_seq_length=cfg.max_seq_length,
                                       batch_size=cfg.loss_batch_size), ["base"])
    out: dict[str, float] = {}
    for part in iter_stats(st.folder, st.shards, ["base"]):
        out.update(zip(part["id"], part["loss_base"].astype(np.float64).tolist()))
    return out, str(st.folder), st.jobs


class _FitActor:
    """The base model loaded once; per work item (a subset index): a fresh LoRA fine-tune of a copy
    on the subset, and its answer-token loss on the evaluation set."""

    def __init__(self, base_model: str, subsets: list[list[dict]], eval_records: list[dict], recipe: dict,
                 chat_format: str, max_seq_length: int, batch_size: int, use_gpu: bool):
        import torch

        from ..console import configure
        from ..core.finetune import tokenized
        from ..core.formatting import FormatConfig
        from ..models import load_model_and_tokenizer
        configure()  # with -v this worker's lines (one per subset) reach the driver (console.ray_init_args)
        self.base, self.tok = load_model_and_tokenizer(base_model)
        self.base.to(torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu"))
        self.fmt = FormatConfig(chat_format, max_seq_length)
        self.subsets, self.recipe, self.batch_size = subsets, recipe, batch_size
        self.eval = tokenized(eval_records, self.tok, self.fmt)
        if not self.eval:
            raise ValueError("instruction_mining: no evaluation example keeps an answer token at max_seq_length")

    def process(self, i: int) -> dict[str, Any]:
        from ..core.finetune import FinetuneRecipe, answer_loss, lora_finetune, tokenized
        t0 = time.perf_counter()
        train = tokenized(self.subsets[i], self.tok, self.fmt)
        recipe = FinetuneRecipe(**{**self.recipe, "seed": self.recipe["seed"] + i})
        model = lora_finetune(copy.deepcopy(self.base), self.tok, train, recipe)
        loss = answer_loss(model, self.tok, self.eval, self.batch_size)
        log.info("instruction_mining fit: subset %d of %d (%d examples): eval loss %.4f in %.0f s", i + 1,
                 len(self.subsets), len(train), loss, time.perf_counter() - t0)  # a long fit shows its progress
        return {"shard": i, "loss": loss, "trained": len(train), "seconds": time.perf_counter() - t0}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [self.process(int(s)) for s in batch["shard"]]
        return {k: np.array([d[k] for d in done]) for k in done[0]}


def compute_indicators(cfg: InstructionMiningConfig, seconds: dict[str, float]) -> dict[str, Any]:
    """{"ids", "sources", "x" [N, k] raw (NaN perplexity where skipped), "scored" [N] bool, "sharded", ...}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .embeddings import embed_pool_and_targets
    from ..store import read_store
    out = Path(cfg.out).resolve()
    names = cfg.indicators
    t0 = time.time()
    sharded, _, n_shards, digest = shard_records(cfg.pool, out / "_staged", cfg.shard_rows)
    parts = Path(cfg.pool_indicators or out / "pool_indicators").resolve()
    claim(parts, {"pool_sha256": digest, "model": str(cfg.model), "weights": weights_id(cfg.model),
                  "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length, "shard_rows": cfg.shard_rows,
                  "mtld_threshold": cfg.mtld_threshold}, "_key.json", stage="instruction_mining indicators")
    for f in parts.glob(".tmp-*"):
        f.unlink()
    map_shards(cfg, _TextActor, {"sharded": str(sharded), "parts": str(parts), "base_model": str(cfg.model),
                                 "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length,
                                 "threshold": cfg.mtld_threshold},
               [s for s in range(n_shards) if not (parts / f"{s:05d}.parquet").exists()], stage="indicators")
    t = pa.concat_tables([pq.read_table(parts / f"{s:05d}.parquet") for s in range(n_shards)]).to_pydict()
    ids, sources, skipped = t["id"], t["source"], [r is not None for r in t["skipped"]]
    pos = {i: n for n, i in enumerate(ids)}
    if len(pos) != len(ids):
        raise ValueError(f"instruction_mining: {cfg.pool} holds an id twice")
    cols = {c: np.asarray(t[c], np.float64) for c in ("response_length", "instruction_length", "mtld")}
    seconds["length_mtld"] = round(time.time() - t0, 2)

    def by_id(values: dict[str, float], what: str) -> np.ndarray:
        if len(values) != len(ids) or not all(i in values for i in ids):
            raise RuntimeError(f"instruction_mining: {what} holds {len(values)} ids for {len(ids)} pool rows")
        col = np.empty(len(ids))
        for i, v in values.items():
            col[pos[i]] = v
        return col

    info: dict[str, Any] = {"skipped_reasons": sorted({r for r in t["skipped"] if r is not None})}
    if "perplexity" in names:
        t0 = time.time()
        ppl, info["stats"], info["stats_jobs"] = base_perplexity(cfg)
        cols["perplexity"] = by_id(ppl, "the loss statistics")
        if not (np.isnan(cols["perplexity"]) == np.asarray(skipped)).all():  # one tokenisation, two passes
            raise RuntimeError(f"instruction_mining: {info['stats']} and {parts} skip different examples")
        seconds["perplexity"] = round(time.time() - t0, 2)
    if "reward" in names:
        t0 = time.time()
        q_ids, _, q, info["quality"], info["quality_reused"] = pool_quality(cfg, "instruction_mining")
        cols["reward"] = by_id(dict(zip(q_ids, q.tolist())), "the quality folder")
        info["reward_source"] = quality_source(cfg.reward_model, cfg.model)
        seconds["reward"] = round(time.time() - t0, 2)
    if "knn" in names:
        t0 = time.time()
        store, _ = embed_pool_and_targets(dataclasses.replace(cfg, targets={}))
        emb = read_store(store, ("id", "features"))
        cols["knn"] = by_id(dict(zip(emb["id"].tolist(), knn_mean_distance(emb["features"], cfg.knn_k))), "embeddings")
        info["embeddings"] = str(store)
        seconds["knn"] = round(time.time() - t0, 2)
    scored = ~np.asarray(skipped, bool)
    return {"ids": ids, "sources": sources, "x": np.stack([cols[n] for n in names], 1), "scored": scored,
            "sharded": sharded, "parts": str(parts), "digest": digest, **info}


# ---- the fit ---------------------------------------------------------------------------------

def _rows(sharded: Path, shard_rows: int, wanted: set[int]) -> dict[int, dict]:
    out = {}
    for s in sorted({i // shard_rows for i in wanted}):
        for j, r in enumerate(read_input_shard(sharded, s)):
            if s * shard_rows + j in wanted:
                out[s * shard_rows + j] = r
    return out


def fit(cfg: InstructionMiningConfig, ind: dict[str, Any], z: np.ndarray) -> dict[str, Any]:
    subsets, held = draw_subsets(ind["scored"], cfg.fit_subsets, cfg.fit_subset_size,
                                 None if cfg.targets else cfg.eval_size, cfg.seed)
    wanted = {int(i) for s in subsets for i in s} | (set(held.tolist()) if held is not None else set())
    rows = _rows(ind["sharded"], cfg.shard_rows, wanted)
    if held is None:
        eval_records = [r.to_dict() for recs in read_targets(cfg.targets).values() for r in recs]
        eval_set = f"targets {sorted(cfg.targets)}, pooled: {len(eval_records)} examples"
    else:
        eval_records = [rows[int(i)] for i in held]
        eval_set = (f"no targets given: a held-out pool sample of {len(held)} examples (seed {cfg.seed}), in no "
                    "subset")
    recipe = {"epochs": cfg.fit_epochs, "lr": cfg.fit_lr, "batch_size": cfg.fit_batch_size, "lora_r": cfg.fit_lora_r,
              "lora_alpha": cfg.fit_lora_alpha, "target_modules": tuple(cfg.fit_target_modules), "seed": cfg.seed}
    n_act = min(cfg.fit_actors, len(subsets))
    t0 = time.time()
    done = map_shards(dataclasses.replace(cfg, min_actors=1, max_actors=n_act), _FitActor, {
        "base_model": str(cfg.model), "subsets": [[rows[int(i)] for i in s] for s in subsets],
        "eval_records": eval_records, "recipe": recipe, "chat_format": cfg.chat_format,
        "max_seq_length": cfg.max_seq_length, "batch_size": cfg.loss_batch_size,
        "use_gpu": cfg.actor_num_gpus > 0}, list(range(len(subsets))), stage="instruction_mining fit")
    by = {int(d["shard"]): d for d in done}
    losses = np.array([float(by[i]["loss"]) for i in range(len(subsets))])
    means = np.stack([z[s].mean(0) for s in subsets])
    rule = fit_rule(means, losses, cfg.indicators)
    rule.update(source="fit", scale="standardized")
    return {"rule": rule, "fit": {
        "subsets": len(subsets), "subset_size": cfg.fit_subset_size, "eval_set": eval_set, "recipe": recipe,
        "actors": n_act, "eval_losses": losses.tolist(), "subset_mean_indicators": means.tolist(),
        "trained_examples": [int(by[i]["trained"]) for i in range(len(subsets))],
        "finetune_seconds": [round(float(by[i]["seconds"]), 2) for i in range(len(subsets))],
        "subset_ids": [[ind["ids"][int(i)] for i in s] for s in subsets], "wall_seconds": round(time.time() - t0, 2)}}


@register("instruction_mining", InstructionMiningConfig, "InstructMining: a least-squares rule over quality "
          "indicators (reward, length, perplexity, MTLD, KNN-6) fitted to fine-tuned subsets' eval loss; "
          "lowest predicted loss first (give --set model=DIR)")
def run_instruction_mining(cfg: InstructionMiningConfig) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..selection.folder import ScoreFolderWriter
    _check(cfg)
    out = Path(cfg.out).resolve()
    seconds: dict[str, float] = {}
    ind = compute_indicators(cfg, seconds)
    x, scored, names = ind["x"], ind["scored"], cfg.indicators
    z, mean, std = standardize(np.nan_to_num(x), np.flatnonzero(scored))
    if cfg.coefficients is not None:
        rule: dict[str, Any] = {"source": "given", "scale": cfg.coefficients_scale,
                                "weights": {n: float(cfg.coefficients.get(n, 0.0)) for n in names}}
        extra: dict[str, Any] = {"fit": None}
    else:
        t0 = time.time()
        extra = fit(cfg, ind, z)
        rule = extra.pop("rule")
        seconds["fit"] = round(time.time() - t0, 2)
    t0 = time.time()
    score = rule_scores(np.nan_to_num(x) if rule["scale"] == "raw" else z, names, rule["weights"])
    score = np.where(scored, score, UNSCORED).astype(np.float32)
    table = {"id": ind["ids"], "source": ind["sources"], "scored": scored.tolist(),
             **{n: x[:, j] for j, n in enumerate(names)}, "score": score}
    pq.write_table(pa.table(table), out / "indicators.parquet")
    writer = ScoreFolderWriter(out, [ALL_TASK], pool=cfg.pool)
    for lo in range(0, len(score), 65536):
        writer.write(ALL_TASK, ind["ids"][lo:lo + 65536], ind["sources"][lo:lo + 65536], score[lo:lo + 65536])
    seconds["write"] = round(time.time() - t0, 2)
    log.info("instruction_mining: rule %s (%s), %d of %d scored", rule["weights"], rule["source"],
             scored.sum(), len(score))
    units = {"reward": ind.get("reward_source"), "response_length": "base-model tokens",
             "instruction_length": "base-model tokens", "perplexity": "log perplexity (mean answer-token loss, "
             "base model)", "mtld": f"bidirectional MTLD, threshold {cfg.mtld_threshold}",
             "knn": f"mean distance to the {cfg.knn_k} nearest pool embeddings ({cfg.encoder})"}
    return writer.close({
        "selector": "instruction_mining", "pool_sha256": ind["digest"], "indicators": names,
        "indicator_units": {n: u for n, u in units.items() if n in names},
        "indicator_mean": dict(zip(names, mean.tolist())), "indicator_std": dict(zip(names, std.tolist())),
        "rule": rule, **extra, "seconds_per_step": seconds, "indicators_file": str(out / "indicators.parquet"),
        "skipped": {"count": int((~scored).sum()), "score": UNSCORED}, "pool_indicators": ind["parts"],
        **{k: ind[k] for k in ("skipped_reasons", "quality", "quality_reused", "stats", "stats_jobs", "embeddings") if k in ind}})

"""`mods` (task-agnostic): MoDS, Du, Zong & Zhang 2023 (arXiv 2311.15653; code CASIA-LM/MoDS).

1. quality: every pool example's reward (`judge.pool_quality`, kept in the folder `quality`,
   default `<out>/quality`, and reused while pool, quality model and settings are unchanged; name
   the same folder for instruction_mining and the pool is scored once): the reward
   model's logit with `reward_model` (MoDS: OpenAssistant reward-model-deberta-v3-large-v2), else the
   judge `model`'s expected ALPAGASUS rating (0-5). High quality = reward > alpha (strict, as MoDS's
   high-quality-data-extraction.py).
2. coverage: k-center greedy (`kcenter.k_center_greedy`, seeded start) over the high-quality set's
   embeddings (`EmbedConfig`'s encoder; MoDS used bert-base-uncased [CLS] of the instruction) picks
   the seed set, `seed_fraction` of the budget.
3. necessity: `base_model` (default `model`) is LoRA-tuned on the seed set (`core.finetune`, one Ray
   task with the actor resources, adapter saved to `<out>/_necessity/initial_model`); on a Ray Data
   actor pool it answers every other high-quality instruction (greedy, `necessity_max_new_tokens`,
   in the `chat_format` it was tuned on) and the same quality function scores (instruction,
   generated); necessity = generated quality < beta (strict, as necessity-instruction-extraction.py).
   The replies and their rewards are kept in `<out>/_necessity/generated.parquet`.
4. augmented: k-center greedy over the necessity set's embeddings picks the rest of the budget.

Score order (select's top-k for k = budget is exactly seed + augmented + fill): the seed picks in
greedy order, then the augmented picks, then every other example by its reward (its score is the
reward itself; the picks score floor(max other reward) + 1 + their rank from the end). Shortfalls
fill deterministically: a high-quality set smaller than the seed share gives all of it as seed and
its shortfall passes to the augmented step; a necessity set smaller than what is left gives all of
it; the rest of the budget ("fill" in the summary) is then the top of the reward order.
`best_subtask` names each row's role: seed, augmented, necessity, high_quality or low_quality.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import path_field
from .base import ALL_TASK, ShardActor, map_shards, register, shard_records
from .judge import (LMJudge, Quality, QualityConfig, device_for, pool_quality, quality_kwargs, quality_source,
                    record_parts)
from .kcenter import without_targets, write_scores, budget_for, k_center_greedy

ROLES = ("seed", "augmented", "necessity", "high_quality", "low_quality")


@dataclass
class ModsConfig(QualityConfig):
    """`model` is the judge and (unless `base_model` is set) the model MoDS tunes on the seed set.
    `chat_format` (EmbedConfig's) is also the rendering it is tuned on and prompted with."""
    budget: int | None = None  # seed + augmented + fill (default select's k of top_p, what select keeps)
    # alpha (MoDS README: 0.0 on the reward model's logit); None: 0.0 with a reward model (its sign), 2.5
    # (mid-scale, our choice) for the judge's 0-5 rating
    quality_threshold: float | None = None
    seed_fraction: float = 0.25  # MoDS: 1,000 seed instructions of the 4,000 selected
    # beta (MoDS README: "threshold", no value given); None: as alpha (0.0 reward model, 2.5 judge rating)
    necessity_threshold: float | None = None
    necessity_max_new_tokens: int = 128  # greedy (MoDS: 4 beams, up to 1,024 tokens; ours: cheaper)
    base_model: str | None = path_field("model", None)  # the model MoDS fine-tunes (default: model)
    ft_epochs: int = 3  # MoDS train/run.sh: 3 epochs (full fine-tune at lr 2e-5, batch 512)
    ft_lr: float = 2e-4  # LoRA, core.finetune.FinetuneRecipe's (MoDS's 2e-5 is a full fine-tune's)
    ft_batch_size: int = 4  # core.finetune.FinetuneRecipe's
    ft_lora_r: int = 8  # core.finetune.FinetuneRecipe's
    ft_lora_alpha: int = 16  # core.finetune.FinetuneRecipe's
    ft_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # FinetuneRecipe's
    ft_max_seq_length: int = 1024  # MoDS train/train.py model_max_length
    write_rows: int = 65536


def thresholds(cfg: ModsConfig) -> tuple[float, float]:
    default = 0.0 if cfg.reward_model else 2.5
    return (default if cfg.quality_threshold is None else cfg.quality_threshold,
            default if cfg.necessity_threshold is None else cfg.necessity_threshold)


def seed_count(budget: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"mods: seed_fraction must be in (0, 1], got {fraction}")
    return min(budget, max(1, int(fraction * budget + 0.5))) if budget > 0 else 0


def greedy_pick(x: np.ndarray, members: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct pool indices of `members` in k-center greedy order from a seeded start."""
    k = min(k, len(members))
    if k <= 0:
        return np.empty(0, np.int64)
    picks, _, _ = k_center_greedy(x[members], k, int(rng.integers(len(members))))  # distinct, duplicates too
    return members[picks]


def mods_plan(rewards: np.ndarray, x: np.ndarray, budget: int, seed_fraction: float, alpha: float, beta: float,
              seed: int, generated: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[
                  np.ndarray, list[str], dict[str, Any]]:
    """(float32 scores [n], role per row, set sizes). `generated(seed, candidates)` returns the
    quality of the tuned model's reply to each candidate (pool indices); it is called only when
    there are candidates and budget left after the seed."""
    n = len(rewards)
    budget = min(budget, n)
    rng = np.random.default_rng(seed)
    hq = np.flatnonzero(rewards > alpha)
    seed_target = seed_count(budget, seed_fraction)
    seed_idx = greedy_pick(x, hq, seed_target, rng)
    cands = np.setdiff1d(hq, seed_idx)
    left = budget - len(seed_idx)
    nec, asked = np.empty(0, np.int64), len(cands) > 0 and left > 0
    if asked:
        g = np.asarray(generated(seed_idx, cands), np.float64)
        if g.shape != cands.shape or not np.isfinite(g).all():
            raise ValueError(f"mods: {g.shape} generated rewards for {len(cands)} candidates, or non-finite ones")
        nec = cands[g < beta]
    aug = greedy_pick(x, nec, left, rng)
    picked = np.concatenate([seed_idx, aug])
    rest = np.setdiff1d(np.arange(n), picked)
    scores = rewards.astype(np.float32)
    if len(picked):
        top = math.floor(float(scores[rest].max())) + 1.0 if len(rest) else 0.0
        scores[picked] = (top + np.arange(len(picked), 0, -1)).astype(np.float32)
        if not (np.all(np.diff(scores[picked]) < 0) and (not len(rest) or scores[picked[-1]] > scores[rest].max())):
            raise ValueError("mods: rewards too large to rank the picks above them in float32")
    roles = np.full(n, "low_quality", dtype=object)
    for name, idx in (("high_quality", hq), ("necessity", nec), ("seed", seed_idx), ("augmented", aug)):
        roles[idx] = name
    info = {"budget": budget, "seed_target": seed_target, "pool": n, "high_quality": len(hq), "seed": len(seed_idx),
            "candidates": len(cands), "generated": len(cands) if asked else 0, "necessity": len(nec), "augmented": len(aug),
            "fill": budget - len(picked), "quality_threshold": alpha, "necessity_threshold": beta,
            "roles": {r: int((roles == r).sum()) for r in ROLES}}
    return scores, roles.tolist(), {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in info.items()}


# ---- the models: quality (judge.pool_quality), fine-tune (one Ray task), replies (Ray Data actors) ------

def generation_prompt(messages: list[dict], tok, chat_format: str) -> tuple[str, bool]:
    """The text before the last assistant turn's answer, rendered as `tokenize_messages` trains on
    it, and whether the tokenizer adds its special tokens."""
    from ..core.formatting import canonical_format, render_less, render_template, render_tulu
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    msgs, fmt = list(messages[:last + 1]), canonical_format(chat_format)
    if fmt == "less":
        text, masked = render_less(msgs, tok.eos_token)
        return text[:masked[-1][1]], True
    text, spans = render_tulu(msgs, tok.eos_token) if fmt == "tulu_stripped" else render_template(msgs, tok)
    return text[:spans[-1][0]], fmt == "tulu_stripped"


def _finetune(sharded: str, shard_rows: int, seed_idx: list[int], base_model: str, chat_format: str,
              max_seq_length: int, recipe: dict[str, Any], adapter_dir: str, use_gpu: bool) -> dict[str, Any]:
    """Ray task: LoRA on the seed records; the adapter saved to `adapter_dir` (None: nothing to train on)."""
    from ..core.finetune import FinetuneRecipe, lora_finetune, tokenized
    from ..core.formatting import FormatConfig
    from ..models import load_model_and_tokenizer
    from ..shards import read_input_shard
    t0 = time.time()
    by_shard: dict[int, list[int]] = {}
    for i in seed_idx:
        by_shard.setdefault(i // shard_rows, []).append(i % shard_rows)
    records = [rows[r] for s, rs in sorted(by_shard.items()) for rows in [read_input_shard(sharded, s)] for r in rs]
    base, tok = load_model_and_tokenizer(base_model)
    examples = tokenized(records, tok, FormatConfig(chat_format, max_seq_length))
    if examples:
        model = lora_finetune(base.to(device_for(use_gpu)), tok, examples, FinetuneRecipe(**recipe))
        model.save_pretrained(adapter_dir)
    return {"adapter": adapter_dir if examples else None, "examples": len(examples),
            "dropped": len(records) - len(examples), "seconds": round(time.time() - t0, 2)}


class _Replier(LMJudge):
    """LMJudge's batched greedy decoding, on the base model with the seed adapter merged in."""

    def __init__(self, base_model: str, adapter: str | None, batch_size: int, use_gpu: bool):
        from ..models import load_model_and_tokenizer
        self.device = device_for(use_gpu)
        lm, self.tok = load_model_and_tokenizer(base_model)
        if adapter:
            from peft import PeftModel
            lm = PeftModel.from_pretrained(lm, adapter, local_files_only=True).merge_and_unload()
        self.lm = lm.to(self.device).eval()
        self.batch_size, self.field_max_tokens, self.truncated = batch_size, 0, 0
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)


class _NecessityShards(ShardActor):
    def __init__(self, sharded: str, parts: str, wanted: dict[int, list[int]], base_model: str, adapter: str | None,
                 chat_format: str, max_new_tokens: int, quality: dict[str, Any]):
        super().__init__(sharded)
        self.parts, self.wanted, self.chat_format, self.max_new = Path(parts), wanted, chat_format, max_new_tokens
        self.replier = _Replier(base_model, adapter, quality["batch_size"], quality["use_gpu"])
        self.quality = Quality(**quality)

    def process(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows = [rows[r] for r in self.wanted[shard]]
        prompts = [generation_prompt(r["messages"], self.replier.tok, self.chat_format) for r in rows]
        replies = self.replier.generate([p for p, _ in prompts], self.max_new, add_special=prompts[0][1])
        reward = self.quality.score([(record_parts(r["messages"])[0], a) for r, a in zip(rows, replies)])
        tmp = self.parts / f".tmp-{shard:05d}.parquet"
        pq.write_table(pa.table({"id": [r["id"] for r in rows], "generated": replies, "reward": reward}), tmp)
        tmp.rename(self.parts / f"{shard:05d}.parquet")
        return {"shard": shard, "rows": len(rows)}


def necessity_rewards(cfg: ModsConfig, ids: list[str], seed_idx: np.ndarray, cands: np.ndarray,
                      record: dict[str, Any]) -> np.ndarray:
    """Tune on the seed (one Ray task), answer and score the candidates (an actor pool)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    out = Path(cfg.out).resolve()
    sharded, n_rows, _, _ = shard_records(cfg.pool, out / "_staged", cfg.shard_rows)
    if n_rows != len(ids):
        raise RuntimeError(f"mods: the staged pool holds {n_rows} rows, the quality scores {len(ids)}")
    ndir, base = out / "_necessity", str(cfg.base_model or cfg.model)
    shutil.rmtree(ndir, ignore_errors=True)
    (ndir / "parts").mkdir(parents=True)
    t0, use_gpu, memory = time.time(), cfg.actor_num_gpus > 0, cfg.reserved_memory(None)
    recipe = {"epochs": cfg.ft_epochs, "lr": cfg.ft_lr, "batch_size": cfg.ft_batch_size, "lora_r": cfg.ft_lora_r,
              "lora_alpha": cfg.ft_lora_alpha, "target_modules": tuple(cfg.ft_target_modules), "seed": cfg.seed}
    task = ray.remote(_finetune).options(num_cpus=cfg.actor_num_cpus, num_gpus=cfg.actor_num_gpus,
                                         max_retries=cfg.actor_max_restarts, **({"memory": memory} if memory else {}))
    ft = ray.get(task.remote(str(sharded), cfg.shard_rows, seed_idx.tolist(), base, cfg.chat_format,
                             cfg.ft_max_seq_length, recipe, str(ndir / "initial_model"), use_gpu))
    record["seconds_finetune"], t1 = round(time.time() - t0, 2), time.time()
    wanted: dict[int, list[int]] = {}
    for i in cands.tolist():
        wanted.setdefault(i // cfg.shard_rows, []).append(i % cfg.shard_rows)
    map_shards(cfg, _NecessityShards, {"sharded": str(sharded), "parts": str(ndir / "parts"), "wanted": wanted,
                                       "base_model": base, "adapter": ft["adapter"], "chat_format": cfg.chat_format,
                                       "max_new_tokens": cfg.necessity_max_new_tokens, "quality": quality_kwargs(cfg)},
               sorted(wanted), stage="mods necessity")
    table = pa.concat_tables([pq.read_table(ndir / "parts" / f"{s:05d}.parquet") for s in sorted(wanted)])
    pq.write_table(table, ndir / "generated.parquet")
    shutil.rmtree(ndir / "parts")
    got = dict(zip(table.column("id").to_pylist(), table.column("reward").to_numpy().tolist()))
    record["finetune"] = {**ft, "base_model": base}
    record["seconds_generate"] = round(time.time() - t1, 2)
    return np.array([got[ids[i]] for i in cands.tolist()], np.float64)


@register("mods", ModsConfig, "MoDS: reward filter, k-center seed, LoRA-tuned model's necessity, k-center augment")
def run_mods(cfg: ModsConfig) -> dict[str, Any]:
    from ..store import read_store
    from .embeddings import embed_pool_and_targets
    cfg = without_targets(cfg)  # task-agnostic: --targets is accepted and unused
    if not cfg.model:
        raise ValueError("mods needs model=DIR: the causal LM it fine-tunes (and its judge without reward_model)")
    t0 = time.time()
    ids, sources, rewards, qdir, reused = pool_quality(cfg, "mods")
    steps: dict[str, Any] = {"seconds_quality": round(time.time() - t0, 2)}
    t1 = time.time()
    store = read_store(embed_pool_and_targets(cfg)[0], ("id", "features"))
    row = {i: k for k, i in enumerate(store["id"].tolist())}
    x = store["features"][[row[i] for i in ids]]
    steps["seconds_embeddings"] = round(time.time() - t1, 2)
    alpha, beta = thresholds(cfg)
    t2 = time.time()
    scores, roles, info = mods_plan(rewards, x, budget_for(cfg, len(ids)), cfg.seed_fraction, alpha, beta, cfg.seed,
                                    lambda s, c: necessity_rewards(cfg, ids, s, c, steps))
    steps["seconds_selection"] = round(time.time() - t2 - steps.get("seconds_finetune", 0)
                                       - steps.get("seconds_generate", 0), 2)
    summary = {"selector": "mods", "quality_source": quality_source(cfg.reward_model, cfg.model),
               "quality": qdir, "quality_reused": reused, "encoder": cfg.encoder, "sets": info, **steps,
               "tasks": {ALL_TASK: {"budget": info["budget"]}}}
    return write_scores(cfg, {"id": np.array(ids, dtype=object), "source": np.array(sources, dtype=object)},
                  {ALL_TASK: scores}, {ALL_TASK: roles}, summary)

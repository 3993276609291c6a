"""Loss-based selectors: `el2n`, `grand`, `perplexity`, `learnability` (task-agnostic).

Per-example statistics (`core.example_stats`) of the pool under the base model and/or a warmup
checkpoint, on a Ray Data actor pool; each selector turns them into a score where HIGH = SELECTED
(`select` keeps the top p%):
- el2n:         mean over assistant tokens of ‖softmax − onehot‖₂ under the checkpoint (`on`
                default checkpoint) — hard / not yet learnt examples first (data diet keeps high EL2N);
- grand:        ‖∇ loss‖₂ over the LoRA parameters at the checkpoint, exact per example; or, with
                `grand_store`, the `norm` column of an extracted datastore (sgd + identity
                projection: exact; sgd + Rademacher: its JL estimate; adam: the norm of LESS's
                Adam feature, not of the gradient — the summary records which);
- perplexity:   mean token loss (log perplexity) under the base model (`on` default base);
                `perplexity_keep` mid (default: score = −|loss − pool median|, the middle of the
                distribution, as Marion et al. 2023 found best), low (score = −loss) or high (loss);
- learnability: loss_base − loss_checkpoint (LoBaSS): what the warmup learnt most, first.

The statistics are computed once into `stats` (default `<out>/../_loss_stats/<key>`, key = a hash
of pool file, base model, checkpoint and formatting, so sibling selector folders — the pipeline's
`selectors/<name>` — share it) in passes — `base`
(forward, adapter off), `ckpt` (forward), `grad` (forward + backward: loss, EL2N and GraNd at the
checkpoint) — one part per shard and pass, so the four selectors pointed at one `stats` folder
share work and a killed run redoes only missing parts. Examples whose assistant tokens are all
truncated away have no statistic: they are listed in `<out>/skipped.jsonl`, counted in the
summary, and scored with the lowest float32 so they are never selected before a scored example.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..artifact import claim, key_digest
from ..config import config_hash, path_field
from ..core.formatting import ChatFormat
from .base import ALL_TASK, SelectorConfig, ShardActor, map_shards, register, shard_records

log = logging.getLogger("less_ray")
UNSCORED = float(np.finfo(np.float32).min)  # skipped examples: last in any ranking, never NaN
PASS_COLUMNS = {"base": ("loss_base", "el2n_base"), "ckpt": ("loss_ckpt", "el2n_ckpt"),
                "grad": ("loss_ckpt", "el2n_ckpt", "grand")}


@dataclass
class LossStatsConfig(SelectorConfig):
    checkpoint: str | None = path_field("in", None)  # warmup checkpoint (LoRA adapter); needed by all but perplexity on base
    base_model: str | None = path_field("model", None)  # default: the checkpoint's state.json base_model
    on: str | None = None  # el2n / perplexity: "base" or "checkpoint" (defaults: el2n checkpoint, perplexity base)
    perplexity_keep: str = "mid"  # mid | low | high
    grand_store: str | None = None  # grand: read the `norm` column of this datastore instead of recomputing
    stats: str | None = path_field("out", None)  # per-example statistics folder, shareable by the loss selectors
    chat_format: ChatFormat = "less"
    max_seq_length: int = 2048
    batch_size: int = 16


# ---- the statistics job ----------------------------------------------------------------------

def _resolve_base(cfg: LossStatsConfig) -> str:
    from ..train.checkpoint import read_checkpoint_state
    base = cfg.base_model or (read_checkpoint_state(cfg.checkpoint).get("base_model") if cfg.checkpoint else None)
    if not base:
        raise ValueError("loss selectors: give base_model (or a checkpoint whose state.json records it)")
    return str(base)


class StatsActor(ShardActor):
    """Model (and adapter) loaded once; per shard, every requested pass, one part file each."""

    def __init__(self, sharded: str, stats: str, passes: list[str], base_model: str, checkpoint: str | None,
                 chat_format: str, max_seq_length: int, batch_size: int, use_gpu: bool):
        import torch

        from ..core.example_stats import ExampleStatsComputer
        from ..core.formatting import FormatConfig
        super().__init__(sharded)
        self.stats, self.passes, self.batch_size = Path(stats), passes, batch_size
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if checkpoint:
            from ..core.checkpoints import load_lora_checkpoint
            model, self.tok = load_lora_checkpoint(base_model, checkpoint, device=self.device)
        else:
            from ..models import load_model_and_tokenizer
            model, self.tok = load_model_and_tokenizer(base_model)
            model.to(self.device).eval()
        self.computer = ExampleStatsComputer(model)
        self.fmt = FormatConfig(chat_format, max_seq_length)
        self.adapter = bool(checkpoint)

    def process(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..core.formatting import SkippedExample, collate, tokenize_messages
        t0 = time.perf_counter()
        toks = [tokenize_messages(r["messages"], self.tok, self.fmt, example_id=r["id"]) for r in rows]
        ok = [i for i, t in enumerate(toks) if not isinstance(t, SkippedExample)]
        order = sorted(ok, key=lambda i: len(toks[i].input_ids))  # length-sorted batches: little padding
        for name in self.passes:
            cols = {c: np.full(len(rows), np.nan, np.float32) for c in PASS_COLUMNS[name]}
            n_tok = np.zeros(len(rows), np.int32)
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo:lo + self.batch_size]
                batch = collate([toks[i] for i in idx], self.tok.pad_token_id)
                if name == "grad":
                    res = self.computer.grad_stats(batch)
                else:
                    # no checkpoint: the model is the base model itself (no adapter to switch off)
                    res = self.computer.forward_stats(batch, adapter=name == "ckpt" or not self.adapter)
                for c in PASS_COLUMNS[name]:
                    cols[c][idx] = res[c.rsplit("_", 1)[0] if c != "grand" else c].detach().float().cpu().numpy()
                n_tok[idx] = res["n_tokens"].cpu().numpy()
            table = pa.table({"id": [r["id"] for r in rows], "source": [r["source"] for r in rows],
                              "skipped": [t.reason if isinstance(t, SkippedExample) else None for t in toks],
                              "n_tokens": n_tok, **cols})
            d = self.stats / name
            tmp = d / f".tmp-{shard:05d}.parquet"
            pq.write_table(table, tmp)
            tmp.rename(d / f"part-{shard:05d}.parquet")  # a part is there complete or not at all
        return {"shard": shard, "rows": len(rows), "skipped": len(rows) - len(ok),
                "seconds": time.perf_counter() - t0}


class Stats(NamedTuple):
    folder: Path
    shards: int
    jobs: list[dict[str, Any]]  # what this call computed: passes, shards, rows, actor seconds, wall seconds


def compute_stats(cfg: LossStatsConfig, passes: list[str]) -> Stats:
    """Make sure `passes` exist in the stats folder (computing only missing parts)."""
    from ..identity import checkpoint_content_hash as checkpoint_hash
    from ..artifact import sha256_file
    if any(p != "base" for p in passes) and not cfg.checkpoint:
        raise ValueError(f"loss selectors: passes {passes} need a warmup checkpoint")
    base = _resolve_base(cfg)
    key = {"pool_sha256": sha256_file(cfg.pool), "base_model": base, "checkpoint": cfg.checkpoint,
           "checkpoint_hash": checkpoint_hash(cfg.checkpoint) if cfg.checkpoint else None,
           "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length, "shard_rows": cfg.shard_rows}
    stats = Path(cfg.stats or Path(cfg.out).resolve().parent / "_loss_stats" / key_digest(key)[:12]).resolve()
    sharded, n_rows, n_shards, _ = shard_records(cfg.pool, stats / "_staged", cfg.shard_rows)
    claim(stats, key, "stats.json", wipe=tuple(PASS_COLUMNS), stage="loss stats")
    if "grad" in passes:  # the grad pass holds the ckpt pass's columns too
        passes = [p for p in passes if p != "ckpt"]
    todo: dict[int, list[str]] = {}
    for p in passes:
        (stats / p).mkdir(parents=True, exist_ok=True)
        for f in (stats / p).glob(".tmp-*"):
            f.unlink()
        for s in range(n_shards):
            if part_file(stats, p, s) is None:
                todo.setdefault(s, []).append(p)
    # one job per distinct set of missing passes (normally one: all shards miss the same passes)
    jobs = []
    for need in sorted({tuple(v) for v in todo.values()}):
        t0 = time.time()
        shards = [s for s, v in todo.items() if tuple(v) == need]
        log.info("loss stats: passes %s over %d of %d shards (%d rows)", list(need), len(shards), n_shards, n_rows)
        done = map_shards(cfg, StatsActor, {"sharded": str(sharded), "stats": str(stats), "passes": list(need),
                                     "base_model": base, "checkpoint": cfg.checkpoint,
                                     "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length,
                                     "batch_size": cfg.batch_size, "use_gpu": cfg.actor_num_gpus > 0}, shards)
        jobs.append({"passes": list(need), "shards": len(shards), "rows": sum(int(d["rows"]) for d in done),
                     "actor_seconds": round(sum(float(d["seconds"]) for d in done), 2),
                     "wall_seconds": round(time.time() - t0, 2)})
    return Stats(stats, n_shards, jobs)


def part_file(stats: Path, name: str, shard: int) -> Path | None:
    """The finished part holding pass `name`'s columns for `shard` (ckpt: its own or grad's)."""
    for p in (name, "grad") if name == "ckpt" else (name,):
        f = stats / p / f"part-{shard:05d}.parquet"
        if f.exists():
            return f
    return None


def iter_stats(stats: Path, n_shards: int, passes: list[str]):
    """Per shard, in pool order: id, source, skipped reasons and the passes' columns."""
    import pyarrow.parquet as pq
    for s in range(n_shards):
        out: dict[str, Any] = {}
        for p in passes:
            t = pq.read_table(part_file(stats, p, s))
            if "id" in out and t.column("id").to_pylist() != out["id"]:
                raise RuntimeError(f"{stats}: pass {p} shard {s} rows differ from the other passes")
            out.update({"id": t.column("id").to_pylist(), "source": t.column("source").to_pylist(),
                        "skipped": t.column("skipped").to_pylist()})
            out.update({c: t.column(c).to_numpy() for c in PASS_COLUMNS[p]})
        yield out


# ---- the selectors -----------------------------------------------------------------------------

def _write_folder(cfg: LossStatsConfig, selector: str, st: Stats, passes: list[str],
                  score_fn, extra: dict[str, Any]) -> dict[str, Any]:
    from ..selection.folder import ScoreFolderWriter
    out = Path(cfg.out)
    writer = ScoreFolderWriter(out, [ALL_TASK], pool=cfg.pool)
    skipped = []
    for blk in iter_stats(st.folder, st.shards, passes):
        score = np.asarray(score_fn(blk), dtype=np.float64)
        bad = np.asarray([r is not None for r in blk["skipped"]])
        if not np.isfinite(score[~bad]).all():
            i = int(np.flatnonzero(~np.isfinite(score) & ~bad)[0])
            raise ValueError(f"{selector}: non-finite statistic for {blk['id'][i]} (not a skipped example)")
        score[bad] = UNSCORED
        skipped += [{"id": blk["id"][i], "reason": blk["skipped"][i]} for i in np.flatnonzero(bad)]
        writer.write(ALL_TASK, blk["id"], blk["source"], score)
    (out / "skipped.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
    return writer.close({"selector": selector, "stats": str(st.folder), "passes": passes, "stats_jobs": st.jobs,
                         "skipped": {"count": len(skipped), "file": "skipped.jsonl", "score": UNSCORED},
                         "config_hash": config_hash(cfg), **extra})


def _on(cfg: LossStatsConfig, default: str) -> str:
    on = cfg.on or default
    if on not in ("base", "checkpoint"):
        raise ValueError(f"'on' must be base or checkpoint, not {on!r}")
    return on


# EL2N and GraNd score examples early in training ("Deep learning on a data diet"): in a
# pipeline they default to the first warmup checkpoint
@register("el2n", LossStatsConfig, "mean token EL2N (‖softmax − onehot‖₂) under an early warmup checkpoint; "
          "high first", warmup_checkpoint="first")
def run_el2n(cfg: LossStatsConfig) -> dict[str, Any]:
    on = _on(cfg, "checkpoint")
    p, col = ("ckpt", "el2n_ckpt") if on == "checkpoint" else ("base", "el2n_base")
    return _write_folder(cfg, "el2n", compute_stats(cfg, [p]), [p], lambda b: b[col], {"on": on})


@register("grand", LossStatsConfig, "per-example LoRA gradient norm at an early warmup checkpoint (GraNd); "
          "high first", warmup_checkpoint="first")
def run_grand(cfg: LossStatsConfig) -> dict[str, Any]:
    if cfg.grand_store:
        return _grand_from_store(cfg)
    return _write_folder(cfg, "grand", compute_stats(cfg, ["grad"]), ["grad"], lambda b: b["grand"],
                         {"grand_source": "exact"})


@register("perplexity", LossStatsConfig, "mean token loss under the base model; keep mid (default), low or high")
def run_perplexity(cfg: LossStatsConfig) -> dict[str, Any]:
    on = _on(cfg, "base")
    p, col = ("base", "loss_base") if on == "base" else ("ckpt", "loss_ckpt")
    st = compute_stats(cfg, [p])
    extra: dict[str, Any] = {"on": on, "keep": cfg.perplexity_keep}
    if cfg.perplexity_keep == "mid":
        # one float per example: the only pool-sized array any loss selector holds
        losses = np.concatenate([b[col] for b in iter_stats(st.folder, st.shards, [p])])
        median = float(np.nanmedian(losses)) if np.isfinite(losses).any() else 0.0
        extra["median_loss"] = median
        fn = lambda b: -np.abs(b[col] - median)  # noqa: E731
    elif cfg.perplexity_keep == "low":
        fn = lambda b: -b[col]  # noqa: E731
    elif cfg.perplexity_keep == "high":
        fn = lambda b: b[col]  # noqa: E731
    else:
        raise ValueError(f"perplexity_keep must be mid, low or high, not {cfg.perplexity_keep!r}")
    return _write_folder(cfg, "perplexity", st, [p], fn, extra)


@register("learnability", LossStatsConfig, "loss under the base model minus loss under the warmup checkpoint (LoBaSS)")
def run_learnability(cfg: LossStatsConfig) -> dict[str, Any]:
    return _write_folder(cfg, "learnability", compute_stats(cfg, ["base", "ckpt"]), ["base", "ckpt"],
                         lambda b: b["loss_base"] - b["loss_ckpt"], {})


def _grand_from_store(cfg: LossStatsConfig) -> dict[str, Any]:
    from ..selection.folder import ScoreFolderWriter
    from ..store import iter_blocks, read_manifest
    man = read_manifest(cfg.grand_store)
    source = {"sgd": "store: sgd gradient norm", "adam": "store: norm of the Adam feature (not the gradient)"}[man.kind]
    if man.kind == "sgd":
        source += " (exact)" if man.projection.type == "identity" else " (Rademacher JL estimate)"
    writer = ScoreFolderWriter(cfg.out, [ALL_TASK], pool=cfg.pool)
    for blk in iter_blocks(cfg.grand_store, ("id", "source", "norm")):
        writer.write(ALL_TASK, list(blk["id"]), list(blk["source"]), blk["norm"])
    return writer.close({"selector": "grand", "grand_source": source, "grand_store": str(cfg.grand_store),
                         "store_skipped": man.skipped, "projection": vars(man.projection)})

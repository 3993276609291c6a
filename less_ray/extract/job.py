"""`less-ray extract`: the gradient datastore of one checkpoint, on a Ray Data actor pool.

1. The input records are validated and sharded once as Parquet, one row group per shard
   (`<out>/_input.parquet`), so a shard is a fixed set of examples whatever runs it.
2. Ray Data maps the pending shard indices over an actor pool of `ShardExtractor`s: each actor
   loads the base model, the checkpoint's LoRA adapter and (adam) its moments once, then per
   shard tokenises, computes batched per-example features (core.grads) for every projection
   dim, and writes one shard per dim store (`<out>/dim<d>/shards/`), atomically.
3. The manifests are written last. A rerun skips shards that verify in every dim store and were
   computed from the same inputs (`_shard_key.json`: data, checkpoint and model content, projection,
   seed, formatting, ...), so a killed actor or job costs only its unfinished shards; a store made
   from other inputs loses its manifest, then its shards, and is recomputed.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..config import config_hash, save_config, path_field
from ..core.formatting import ChatFormat
from ..core.precision import PRECISIONS  # auto, fp32, bf16, less
from ..core.quantize import check_dtype
from ..data.count import count_records
from ..resources import auto_shard_rows, estimate_extract_memory
from ..ray_runtime import RayStage
from ..artifact import claim, key_changes, sha256_file
from ..core.projectors import DEFAULT_DIMS, PROJECTIONS, make_projector, projection_batch, projection_type
from ..run_lock import locked
from ..shards import SHARDED_INPUT, map_shards, read_input_shard, shard_input
from ..train.checkpoint import read_checkpoint_state
from ..store import (SHARD_KEY, Projection, StoreManifest, features_table, library_versions, remove_temp_files,
                     shard_schema, verified_shard, write_manifest, write_shard)

log = logging.getLogger("less_ray")


@dataclass
class ExtractConfig(RayStage):
    data: str = path_field("in", "")  # records (schema JSONL/Parquet): the pool (kind adam) or targets (kind sgd)
    checkpoint: str = path_field("in", "")  # a warmup checkpoint folder (adapter + moments + state.json)
    out: str = path_field("out", "")  # one store per projection dim: <out>/dim<d>
    kind: str = "adam"  # adam (pool) | sgd (targets)
    base_model: str | None = path_field("model", None)  # default: the checkpoint's state.json base_model
    dims: list[int] | None = None  # default [8192]; several dims in one pass
    # sjlt: sparse JL (sjlt_s hashed nonzeros per gradient coordinate, core/sparse_projection.py);
    # rademacher: LESS's dense +-1/sqrt(d) matrix; identity: audits (the full gradient)
    projection: str = "rademacher"  # LESS's kind; sjlt: ~50x cheaper, selects less like the exact ranking
    sjlt_s: int = 1  # the fastest (3 % of extraction; s=2 5 %, s=4 9 %, docs/speed.md); s=4 agrees best with exact
    seed: int = 0  # projection seed
    # auto: bf16 where the actors' device is fast at it (CUDA; a CPU whose measured bf16 matmul
    # beats fp32 by BF16_MIN_SPEEDUP, core/precision.py), else fp32; resolved before the run and
    # recorded resolved in the manifest. fp32: model and gradients in fp32; bf16: LESS's, the model
    # (base and LoRA) in bf16 and the per-example gradients formed as bf16 matmuls (fp32
    # accumulation), the adam transform and the projection in fp32; less: bf16 and the (adam)
    # gradient rounded to fp16 before the projection, as LESS's collect_grad_reps.py does
    precision: str = "auto"
    # stored feature dtype: float16 | float32 | int8 | int4 | sign (1 bit per value); the coded ones
    # with a per-row scale (core/quantize.py; bytes and selection agreement in docs/results.md §5).
    # For pool stores: the pipeline extracts targets in float16 when this is a coded dtype
    dtype: str = "float16"
    normalize: bool = True
    chat_format: ChatFormat = "less"  # less (LESS's tokens) | tulu_stripped | template
    max_seq_length: int = 2048
    batch_size: int = 16  # examples per forward/backward
    # also cut a batch at this many padded tokens (rows x longest row): activation memory follows
    # tokens, so long examples go in smaller batches (None: rows only)
    batch_tokens: int | None = None
    # examples projected together: one generation of the projection matrix serves them all,
    # their fp32 gradients held whole meanwhile (N x P x 4 bytes); None: as many as fit in
    # projection_buffer_gb, in whole batches. Changes speed and memory; the features only by
    # float32 summation order, so a stored float16 value may differ by one float16 step (<= 2^-11
    # of its magnitude; the audit of issue #17 saw 59 of 400 rows differ, by at most 1.2e-4)
    projection_batch: int | None = None
    projection_buffer_gb: float = 4.0
    # examples per shard (the unit of work and of resumption); None: the pool spread over
    # max_actors, at most 2048 per shard
    shard_rows: int | None = None
    betas: tuple[float, float] | None = None  # default: the checkpoint's AdamW betas
    eps: float | None = None
    # add the records of `data` to the finished store(s) in `out` as new shards, extracting only
    # them; every other setting must be the store's own, and the ids must be new to the store
    append: bool = False
    # mean | weighted_mean: also keep each example's pooled final hidden states from this same
    # forward (weighted_mean: RDS+'s representation) as an embedding store <out>/embedding, which
    # rds / rds_plus read instead of embedding the pool again; None: not kept
    embedding: str | None = None


EMBEDDING = "embedding"
EMBEDDING_INDEPENDENT = ("dim", "projection", "seed", "dtype", "normalize", "kind", "betas", "eps")


def embedding_dir(out: str | Path):
    return storage.location(out) / EMBEDDING


def embedding_key(cfg: ExtractConfig, parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the pass's embeddings depend on: the dims' key without the gradient feature's settings."""
    if not cfg.embedding:
        return None
    key = shard_keys(cfg, [0], parts)[0]
    return {**{k: v for k, v in key.items() if k not in EMBEDDING_INDEPENDENT}, "embedding": cfg.embedding}


def checkpoint_hash(ckpt: str | Path) -> str:
    """Content hash of what defines the features: adapter weights, its config (canonical: sorted
    keys, target_modules sorted, no paths), the moments (less_ray.identity)."""
    from ..identity import checkpoint_content_hash
    return checkpoint_content_hash(ckpt)


def resolve(cfg: ExtractConfig) -> ExtractConfig:
    """Fill defaults from the checkpoint's state.json; check the choices."""
    state = read_checkpoint_state(cfg.checkpoint)
    adam = state.get("adam", {})
    cfg.base_model = cfg.base_model or state.get("base_model")
    cfg.dims = cfg.dims or list(DEFAULT_DIMS)
    cfg.betas = tuple(cfg.betas or adam.get("betas", (0.9, 0.999)))
    cfg.eps = cfg.eps if cfg.eps is not None else adam.get("eps", 1e-8)
    if not cfg.base_model:
        raise ValueError(f"extract: no base_model given and none recorded in {cfg.checkpoint}/state.json")
    if cfg.kind not in ("adam", "sgd"):
        raise ValueError(f"extract: kind must be adam or sgd, not {cfg.kind!r}")
    if cfg.embedding not in (None, "mean", "weighted_mean"):
        raise ValueError(f"extract: embedding must be mean or weighted_mean (or unset), not {cfg.embedding!r}")
    if cfg.projection not in PROJECTIONS:
        raise ValueError(f"extract: projection must be one of {PROJECTIONS}, not {cfg.projection!r}")
    if cfg.projection == "sjlt" and not 1 <= cfg.sjlt_s <= min(64, min(cfg.dims)):
        raise ValueError(f"extract: sjlt_s must be in [1, min(64, smallest dim)], not {cfg.sjlt_s}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"extract: precision must be one of {PRECISIONS}, not {cfg.precision!r}")
    if cfg.precision == "auto":
        cfg.precision, why = resolved_precision(cfg)
        log.info("extract: precision auto -> %s (%s)", cfg.precision, why)
    check_dtype(cfg.dtype, "extract: dtype")
    return cfg


def resolved_precision(cfg: ExtractConfig) -> tuple[str, str]:
    """(precision, why): `auto` decided for the device the actors run on. GPU actors: CUDA's bf16
    (asked of the driver's GPU where it has one). CPU actors: this machine's probe at the actors'
    thread count; on a cluster whose workers are other CPUs than the driver's, set it explicitly."""
    from ..core.precision import resolve_auto
    if cfg.precision != "auto":
        return cfg.precision, "as configured"
    if cfg.actor_num_gpus > 0:
        import torch
        if not torch.cuda.is_available():
            return "bf16", ("GPU actors: LESS's bf16 at the tensor cores' rate (this driver has no GPU to ask; "
                            "set extract.precision fp32 for GPUs without bf16)")
        return resolve_auto("cuda")
    return resolve_auto("cpu", cfg.actor_num_cpus)


def store_dir(out: str | Path, dim: int):
    return storage.location(out) / f"dim{dim}"


class ShardExtractor:
    """Ray Data actor: model and checkpoint loaded once; one batch row = one shard index."""

    def __init__(self, cfg: ExtractConfig, parts: list[dict[str, Any]]):
        import torch

        from ..core.checkpoints import load_lora_checkpoint, load_moments
        from ..core.formatting import FormatConfig
        from ..core.grads import LoraGradientComputer
        self.cfg = cfg
        self.parts = parts
        self.device = torch.device("cuda" if cfg.actor_num_gpus > 0 and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":  # as many threads as cores Ray granted: none idle, none shared
            torch.set_num_threads(max(1, int(cfg.actor_num_cpus)))
        self.model, self.tok = load_lora_checkpoint(cfg.base_model, cfg.checkpoint, device=self.device)
        if cfg.precision != "fp32":  # LESS's: the whole PeftModel in bf16
            self.model.to(torch.bfloat16)
        self.computer = LoraGradientComputer(self.model,
                                             feature_cast=torch.float16 if cfg.precision == "less" else None,
                                             pooling=cfg.embedding)
        self.moments = load_moments(cfg.checkpoint, self.model).to(self.device) if cfg.kind == "adam" else None
        n = self.computer.num_params
        self.projector = make_projector(cfg.projection, n, cfg.dims, cfg.seed, cfg.sjlt_s)
        self.dims = self.projector.dims
        self.fmt = FormatConfig(cfg.chat_format, cfg.max_seq_length)
        self.projection_batch = projection_batch(cfg.projection, cfg.batch_size, cfg.projection_batch,
                                                 cfg.projection_buffer_gb, n)

    def extract_shard(self, shard: int) -> dict[str, Any]:
        from ..core.formatting import SkippedExample, collate, token_budget_batches, tokenize_messages
        rows = read_input_shard(*shard_file(storage.location(self.cfg.out), self.parts, shard))
        examples, skipped = [], []
        for r in rows:
            t = tokenize_messages(r["messages"], self.tok, self.fmt, example_id=r["id"])
            (skipped if isinstance(t, SkippedExample) else examples).append((r, t))
        # batch by length so padding is small; the shard's rows are written back in input order
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][1].input_ids))
        out = {d: np.zeros((len(examples), d), np.float32) for d in self.dims}
        norms = {d: np.zeros(len(examples), np.float32) for d in self.dims}
        loss = np.zeros(len(examples), np.float32)
        n_tok = np.zeros(len(examples), np.int32)
        emb = np.zeros((len(examples), self.model.config.hidden_size), np.float32) if self.cfg.embedding else None
        for lo in range(0, len(order), self.projection_batch):
            group = order[lo:lo + self.projection_batch]
            lengths = [len(examples[i][1].input_ids) for i in group]
            idxs = [[group[j] for j in batch]
                    for batch in token_budget_batches(lengths, self.cfg.batch_size, self.cfg.batch_tokens)]
            batches = [collate([examples[i][1] for i in idx], self.tok.pad_token_id) for idx in idxs]
            results = self.computer.features_grouped(batches, self.cfg.kind, self.projector, self.moments,
                                                     tuple(self.cfg.betas), self.cfg.eps)
            for idx, res in zip(idxs, results):
                self._store(res, idx, out, norms, loss, n_tok)
                if emb is not None:
                    emb[idx] = res["embedding"].detach().float().cpu().numpy()
        recs = [r for r, _ in examples]
        targets = self.cfg.kind == "sgd"
        if emb is not None:  # written first: the dims' shards mark the shard done
            write_shard(embedding_dir(self.cfg.out), shard, features_table(
                [r["id"] for r in recs], [r["source"] for r in recs], emb, np.ones(len(recs), np.float32), n_tok,
                loss, "float32", tasks=[r["task"] for r in recs] if targets else None,
                subtasks=[r["subtask"] for r in recs] if targets else None))
        for d in self.dims:
            table = features_table([r["id"] for r in recs], [r["source"] for r in recs], out[d], norms[d], n_tok, loss,
                                   self.cfg.dtype, tasks=[r["task"] for r in recs] if targets else None,
                                   subtasks=[r["subtask"] for r in recs] if targets else None)
            sd = store_dir(self.cfg.out, d)
            side = sd / "shards" / f"part-{shard:05d}.skipped.json"
            storage.write_atomic(side, json.dumps([{"id": s.id, "reason": s.reason} for _, s in skipped]))
            write_shard(sd, shard, table)  # last: the shard becomes visible complete, or not at all
        return {"shard": shard, "rows": len(recs), "skipped": len(skipped)}

    def _store(self, res: dict, idx: list[int], out, norms, loss, n_tok) -> None:
        for d in self.dims:
            f = res["features"][d] if self.cfg.normalize else res["features"][d] * res["norms"][d][:, None]
            out[d][idx] = f.detach().float().cpu().numpy()
            norms[d][idx] = res["norms"][d].detach().float().cpu().numpy()
        loss[idx] = res["loss"].detach().float().cpu().numpy()
        n_tok[idx] = res["n_tokens"].detach().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = []
        for s in batch["shard"]:
            done.append(self.extract_shard(int(s)))
        return {k: np.array([d[k] for d in done]) for k in ("shard", "rows", "skipped")}




PARTS = "_parts.json"  # the input files of the store, in shard order: the first, then each appended one


def shard_keys(cfg: ExtractConfig, dims: list[int], parts: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per dim, everything a stored feature depends on, by content: a shard is reused only when this
    equals what it was computed with. Speed settings (batch sizes, actors, buffers) are left out:
    they change the features by float rounding only. The checkpoint and model are hashed once
    here (they are read in full) and the keys passed on to whatever needs them."""
    from ..identity import model_content_hash
    model = Path(str(cfg.base_model))
    appended = {"appended": [p["sha256"] for p in parts[1:]]} if len(parts) > 1 else {}
    common = {"input_sha256": parts[0]["sha256"], **appended, "shard_rows": cfg.shard_rows,
              "checkpoint": checkpoint_hash(cfg.checkpoint),
              "base_model": model_content_hash(model) if model.is_dir() else str(cfg.base_model),
              "kind": cfg.kind, "projection": projection_type(cfg.projection, cfg.sjlt_s), "seed": cfg.seed,
              "precision": cfg.precision, "dtype": cfg.dtype, "normalize": cfg.normalize,
              "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length,
              "betas": list(cfg.betas) if cfg.kind == "adam" else None,
              "eps": cfg.eps if cfg.kind == "adam" else None}
    return {d: {**common, "dim": d} for d in dims}


def claim_store(store, key: dict[str, Any], append: bool = False, stage: str = "extract") -> None:
    """Make `store` hold only shards computed from `key` (artifact.claim). `append`: the store must
    hold the same inputs less the appended ones, and is kept."""
    def keep(before: dict[str, Any] | None) -> bool:
        if not append:
            return False
        same = before is not None and {k: v for k, v in before.items() if k != "appended"} == \
            {k: v for k, v in key.items() if k != "appended"}
        if not same or key["appended"][:len(before.get("appended", []))] != before.get("appended", []):
            raise ValueError(f"extract --append: {store} was made from other inputs ({key_changes(before, key)}); "
                             f"append with the store's own settings (its extract.config.yaml), or extract the whole "
                             f"pool into a new folder")
        return True
    claim(store, key, SHARD_KEY, stage=stage, keep=keep)


def pending_shards(cfg: ExtractConfig, keys: dict[int, dict[str, Any]], parts: list[dict[str, Any]],
                   emb_key: dict[str, Any] | None = None) -> list[int]:
    """The shards some store lacks (a dim's, or the embedding store's: one pass writes them all)."""
    out = storage.location(cfg.out)
    stores = [(store_dir(out, d), keys[d]) for d in keys]
    if emb_key is not None:
        stores.append((embedding_dir(out), emb_key))
    for folder, key in stores:
        claim_store(folder, key, cfg.append)
        remove_temp_files(folder)
    n_shards = sum(p["shards"] for p in parts)
    return [i for i in range(n_shards) if not all(verified_shard(folder, i) for folder, _ in stores)]


def input_parts(cfg: ExtractConfig, out, dims: list[int]) -> list[dict[str, Any]]:
    """The store's input files in shard order, `data` written one row group per shard: alone, or
    (append) after the inputs the store already holds, in `<out>/_append<k>/`."""
    if not cfg.append:
        rows, shards, digest = shard_input(cfg.data, out, cfg.shard_rows)
        parts = [{"path": str(cfg.data), "sha256": digest, "rows": rows, "shards": shards, "first_shard": 0,
                  "folder": ""}]
    else:
        missing = [str(store_dir(out, d)) for d in dims if not (store_dir(out, d) / "manifest.json").exists()]
        if missing or not (out / PARTS).exists():
            raise ValueError(f"extract --append: no finished store to append to in {missing or [str(out)]}; "
                             f"extract the pool there first")
        parts = json.loads((out / PARTS).read_text())
        digest = sha256_file(cfg.data)
        if digest not in [p["sha256"] for p in parts]:  # else appended before: a rerun resumes it
            k = len(parts)
            rows, shards, digest = shard_input(cfg.data, out / f"_append{k}", cfg.shard_rows, sha256=digest)
            check_new_ids(store_dir(out, dims[0]), out / f"_append{k}" / SHARDED_INPUT, cfg.data)
            last = parts[-1]
            parts.append({"path": str(cfg.data), "sha256": digest, "rows": rows, "shards": shards,
                          "first_shard": last["first_shard"] + last["shards"], "folder": f"_append{k}"})
    return parts


def write_parts(out, parts: list[dict[str, Any]]) -> None:
    storage.write_atomic(out / PARTS, json.dumps(parts, indent=1))


def check_new_ids(store, sharded, data: str) -> None:
    """Refuse appended records whose ids the store holds already (scores are keyed by id)."""
    import pyarrow.parquet as pq

    from ..store import read_store
    have = set(read_store(store, ("id",))["id"].tolist())
    with storage.fetched(sharded) as local:
        new = pq.read_table(local, columns=["id"]).column("id").to_pylist()
    dup = [i for i in new if i in have]
    if dup:
        raise ValueError(f"extract --append: {data}: {len(dup)} id(s) are in the store already ({store}): "
                         f"{dup[:5]}; give the new records new ids")


def shard_file(out, parts: list[dict[str, Any]], shard: int) -> tuple[Any, int]:
    """(written input file, its row group) of global shard `shard`."""
    for p in parts:
        if p["first_shard"] <= shard < p["first_shard"] + p["shards"]:
            return out / p["folder"] / SHARDED_INPUT, shard - p["first_shard"]
    raise IndexError(f"extract: shard {shard} is in none of the store's inputs")


def finalize_embedding(cfg: ExtractConfig, parts: list[dict[str, Any]], key: dict[str, Any]) -> Path:
    """The embedding store's manifest, in the layout `selectors.embeddings` writes (kind embedding,
    identity projection of the hidden size, unit rows); its encoder names this pass."""
    sd = embedding_dir(cfg.out)
    entries = [verified_shard(sd, i) for i in range(sum(p["shards"] for p in parts))]
    if any(e is None for e in entries):
        raise RuntimeError(f"extract: shards {[i for i, e in enumerate(entries) if e is None][:10]} of {sd} are "
                           "missing or corrupt; rerun to resume")
    dim = shard_schema(sd / entries[0]["file"]).field("features").type.list_size
    encoder = {"encoder": "extract", "base_model": key["base_model"], "checkpoint": key["checkpoint"],
               "pooling": cfg.embedding, "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length,
               "precision": cfg.precision}
    write_manifest(sd, StoreManifest(
        kind="embedding", checkpoint=str(cfg.checkpoint), checkpoint_hash=key["checkpoint"], model=str(cfg.base_model),
        projection=Projection("identity", 0, dim), normalized=True, dtype="float32",
        count=sum(e["rows"] for e in entries), shards=entries,
        input={"path": parts[0]["path"], "sha256": parts[0]["sha256"], "chat_format": cfg.chat_format,
               "max_seq_length": cfg.max_seq_length},
        versions=library_versions(),
        extra={"encoder": encoder, "pooling": f"{cfg.embedding} of the final hidden states (the lm_head's input) "
               "over the example's tokens, from the gradient pass, then L2-normalised",
               "norms": "not kept (1)", "computed_from": key}))
    return sd


def finalize(cfg: ExtractConfig, parts: list[dict[str, Any]], keys: dict[int, dict[str, Any]]) -> dict[int, Path]:
    n_shards = sum(p["shards"] for p in parts)
    state = read_checkpoint_state(cfg.checkpoint)
    paths = {}
    for d, key in keys.items():
        sd = store_dir(cfg.out, d)
        entries = [verified_shard(sd, i) for i in range(n_shards)]
        if any(e is None for e in entries):
            missing = [i for i, e in enumerate(entries) if e is None]
            raise RuntimeError(f"extract: shards {missing[:10]} of {sd} are missing or corrupt; rerun to resume")
        skipped = [s for i in range(n_shards)
                   for s in json.loads((sd / "shards" / f"part-{i:05d}.skipped.json").read_text())]
        if skipped:
            storage.write_atomic(sd / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))
        man = StoreManifest(
            kind=cfg.kind, checkpoint=str(cfg.checkpoint), checkpoint_hash=key["checkpoint"], model=str(cfg.base_model),
            projection=Projection(projection_type(cfg.projection, cfg.sjlt_s), cfg.seed, d), normalized=cfg.normalize, dtype=cfg.dtype,
            count=sum(e["rows"] for e in entries), shards=entries, checkpoint_epoch=state.get("epoch"),
            avg_lr=state.get("avg_lr"),
            input={"path": parts[0]["path"], "sha256": parts[0]["sha256"], "chat_format": cfg.chat_format,
                   "max_seq_length": cfg.max_seq_length,
                   **({"appended": [{k: p[k] for k in ("path", "sha256", "rows")} for p in parts[1:]]}
                      if len(parts) > 1 else {})},
            skipped={"count": len(skipped), "file": "skipped.jsonl" if skipped else None},
            versions=library_versions(),
            extra={"adam": {"betas": list(cfg.betas), "eps": cfg.eps} if cfg.kind == "adam" else None,
                   "precision": cfg.precision,
                   "config_hash": config_hash(cfg),
                   "computed_from": key})  # what every shard was made from
        write_manifest(sd, man)
        save_config(cfg, sd / "extract.config.yaml")
        paths[d] = sd
    return paths


@locked("extract")  # one writer per out folder (less_ray/run_lock.py)
def run_extract(cfg: ExtractConfig) -> dict[int, Path]:

    t0 = time.time()
    cfg = resolve(cfg)
    out = storage.location(cfg.out)
    if cfg.shard_rows is None:
        cfg.shard_rows = auto_shard_rows(count_records(cfg.data), cfg.max_actors)
    dims = [_identity_dim(cfg)] if cfg.projection == "identity" else cfg.dims
    parts = input_parts(cfg, out, dims)
    keys = shard_keys(cfg, dims, parts)
    emb_key = embedding_key(cfg, parts)
    if cfg.embedding and cfg.append:
        raise ValueError("extract: embedding with append is not supported; extract the whole pool into a new folder")
    todo = pending_shards(cfg, keys, parts, emb_key)  # (append: refuses a store made from other settings)
    write_parts(out, parts)
    log.debug("extract %s: %d examples in %d shards, %d to do (%s, dims %s)", cfg.kind,
              sum(p["rows"] for p in parts), sum(p["shards"] for p in parts), len(todo), Path(cfg.checkpoint).name, dims)
    if todo:
        memory = None if cfg.actor_memory_gb else estimate_extract_memory(cfg)
        done = map_shards(cfg, ShardExtractor, {"cfg": cfg, "parts": parts}, todo, "extract", memory,
                          "extract.batch_tokens (or batch_size), projection_buffer_gb or max_actors")
        log.debug("extract: %d shards, %d examples, %d skipped by the truncation policy in %.1fs",
                 len(done), sum(int(d["rows"]) for d in done), sum(int(d["skipped"]) for d in done), time.time() - t0)
    if emb_key is not None:
        finalize_embedding(cfg, parts, emb_key)
    return finalize(cfg, parts, keys)


def _identity_dim(cfg: ExtractConfig) -> int:
    """Identity mode stores the whole LoRA gradient: its size is the adapter's parameter count."""
    from safetensors import safe_open
    with safe_open(str(Path(cfg.checkpoint) / "adapter_model.safetensors"), "pt") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))

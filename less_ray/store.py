"""The gradient datastore on disk: Parquet shards + manifest.json, readable without Ray.

    <store>/manifest.json
    <store>/shards/part-00000.parquet   (+ part-00000.parquet.json: rows and sha256)

Columns: `id` string, `source` string, `features` fixed_size_list<float16|float32>[dim] (a plain
Arrow type that pyarrow, pandas and duckdb read), `norm` float32 (L2 norm before normalisation),
`n_tokens` int32, `loss` float32, and for targets `task`, `subtask` strings.

A shard is written to a hidden temp name and renamed into place with its sidecar, so a killed
writer leaves no partial shard visible; a rerun skips shards whose sidecar checksum verifies.
The manifest is written last, from the sidecars.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT = "less_ray.datastore/1"
MANIFEST = "manifest.json"
SHARDS = "shards"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[str | Path]) -> str:
    """One content hash over several files (name and bytes), order-independent of the list."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _arrow_schema(dim: int, dtype: str, with_task: bool):
    import pyarrow as pa
    value = {"float16": pa.float16(), "float32": pa.float32()}[dtype]
    fields = [("id", pa.string()), ("source", pa.string()), ("features", pa.list_(value, dim)), ("norm", pa.float32()),
              ("n_tokens", pa.int32()), ("loss", pa.float32())]
    if with_task:
        fields += [("task", pa.string()), ("subtask", pa.string())]
    return pa.schema(fields)


def features_table(ids: list[str], sources: list[str], features: np.ndarray, norms, n_tokens, losses,
                   dtype: str = "float16", tasks: list[str | None] | None = None, subtasks: list[str | None] | None = None):
    """An Arrow table in the store's column layout (features as fixed_size_list)."""
    import pyarrow as pa
    features = np.asarray(features)
    n, dim = features.shape
    if not np.isfinite(features).all() or not np.isfinite(np.asarray(norms, dtype=np.float64)).all():
        bad = [ids[i] for i in np.flatnonzero(~np.isfinite(features).all(axis=1))][:5]
        raise ValueError(f"non-finite features for ids {bad}: refusing to store NaN/inf rows")
    schema = _arrow_schema(dim, dtype, tasks is not None)
    flat = pa.array(features.astype(dtype).reshape(-1), type=schema.field("features").type.value_type)
    cols = [pa.array(ids, pa.string()), pa.array(sources, pa.string()), pa.FixedSizeListArray.from_arrays(flat, dim),
            pa.array(np.asarray(norms, np.float32)), pa.array(np.asarray(n_tokens, np.int32)),
            pa.array(np.asarray(losses, np.float32))]
    if tasks is not None:
        cols += [pa.array(tasks, pa.string()), pa.array(subtasks, pa.string())]
    return pa.Table.from_arrays(cols, schema=schema)


def write_shard(store: str | Path, index: int, table) -> dict[str, Any]:
    """Atomically write shard `index` and its sidecar; returns the sidecar entry."""
    import pyarrow.parquet as pq
    shards = Path(store) / SHARDS
    shards.mkdir(parents=True, exist_ok=True)
    final = shards / shard_name(index)
    tmp = shards / f".tmp-{final.name}-{uuid.uuid4().hex}"
    # features: no dictionary, no statistics, no compression (random floats gain nothing from
    # them; with them a reader decodes ~10x slower); the small columns keep the defaults
    small = [n for n in table.column_names if n != "features"]
    pq.write_table(table, tmp, use_dictionary=small, write_statistics=small, compression="none")
    entry = {"file": f"{SHARDS}/{final.name}", "index": index, "rows": table.num_rows, "sha256": sha256_file(tmp)}
    tmp_side = shards / f".tmp-{final.name}.json-{uuid.uuid4().hex}"
    tmp_side.write_text(json.dumps(entry))
    os.replace(tmp, final)  # the shard first, then the sidecar that vouches for it
    os.replace(tmp_side, shards / f"{final.name}.json")
    return entry


def verified_shard(store: str | Path, index: int) -> dict[str, Any] | None:
    """The sidecar entry if shard `index` is complete and its checksum matches, else None."""
    shards = Path(store) / SHARDS
    side, data = shards / f"{shard_name(index)}.json", shards / shard_name(index)
    if not (side.exists() and data.exists()):
        return None
    try:
        entry = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    return entry if sha256_file(data) == entry.get("sha256") else None


def remove_temp_files(store: str | Path) -> int:
    """Leftovers of killed writers (never visible as shards); returns how many were removed."""
    shards = Path(store) / SHARDS
    n = 0
    for p in shards.glob(".tmp-*") if shards.exists() else []:
        p.unlink(missing_ok=True)
        n += 1
    return n


@dataclass
class Projection:
    type: str  # "rademacher" | "identity"
    seed: int
    dim: int


@dataclass
class StoreManifest:
    kind: str  # "adam" (pool) | "sgd" (targets)
    checkpoint: str
    checkpoint_hash: str
    model: str
    projection: Projection
    normalized: bool
    dtype: str
    count: int
    shards: list[dict[str, Any]]
    format: str = FORMAT
    checkpoint_epoch: int | None = None
    avg_lr: float | None = None
    input: dict[str, Any] = field(default_factory=dict)  # data file, its hash, format config
    skipped: dict[str, Any] = field(default_factory=dict)  # count and side file
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("less-ray", "torch", "transformers", "peft", "ray", "deepspeed", "numpy", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(store: str | Path, manifest: StoreManifest) -> Path:
    path = Path(store) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)
    return path


def read_manifest(store: str | Path) -> StoreManifest:
    path = Path(store) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{store}: not a finished datastore (no {MANIFEST})")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown store format {data.get('format')!r} (expected {FORMAT})")
    data["projection"] = Projection(**data["projection"])
    return StoreManifest(**data)


def iter_blocks(store: str | Path, columns: tuple[str, ...] = ("id", "features"),
                batch_rows: int = 65536) -> Iterator[dict[str, Any]]:
    """Stream the store shard by shard: dicts of numpy columns; `features` as [n, dim] float32.
    Memory is bounded by `batch_rows`, not by the store's size."""
    import pyarrow.parquet as pq
    man = read_manifest(store)
    for entry in man.shards:
        pf = pq.ParquetFile(Path(store) / entry["file"])
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns)):
            yield {name: _column_to_numpy(batch.column(name), man.projection.dim) for name in columns}


def _column_to_numpy(col, dim: int):
    import pyarrow as pa
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def read_store(store: str | Path, columns: tuple[str, ...] = ("id", "features")) -> dict[str, Any]:
    """A whole (small) store in memory: targets, tests. Pools stream with iter_blocks."""
    blocks = list(iter_blocks(store, columns))
    if not blocks:
        return {c: np.empty((0,)) for c in columns}
    return {c: np.concatenate([b[c] for b in blocks]) for c in columns}

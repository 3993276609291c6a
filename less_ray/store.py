"""The gradient datastore on disk: Parquet shards + manifest.json, readable without Ray.

    <store>/manifest.json
    <store>/shards/part-00000.parquet   (+ part-00000.parquet.json: rows and sha256)

Columns: `id` string, `source` string, `features` fixed_size_list<float16|float32>[dim] (a plain
Arrow type that pyarrow, pandas and duckdb read), `norm` float32 (L2 norm before normalisation),
`n_tokens` int32, `loss` float32, and for targets `task`, `subtask` strings.

A shard is written to a hidden temp name and renamed into place with its sidecar, so a killed
writer leaves no partial shard visible; a rerun skips shards whose sidecar checksum verifies.
The manifest is written last, from the sidecars, with a sha256 of its own content.

Verify on read: `read_manifest` checks the manifest's own checksum and that every shard `file`
stays inside the store; `iter_blocks` / `read_store` (and `score`'s page reader) check each
shard's sha256 against the manifest before using it, and every features row read for being
finite and, in a normalised store, of unit norm (`check_features`). A failure is a
`StoreIntegrityError` naming the file (and row) and how to repair it.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

FORMAT = "less_ray.datastore/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
MANIFEST_SUM = "manifest_sha256"  # sha256 of the manifest's canonical JSON without this key
# A stored unit row has |row|² within this of 1 (float16 rounding moves it by < 1e-3), or is all
# zeros (a zero gradient is stored as a zero row, norm 0).
NORM_TOL = 1e-2
REPAIR = ("rerun the stage that wrote this store with the same config (`less-ray extract` for gradient "
          "stores): it rewrites every shard that does not verify and then the manifest")


class StoreIntegrityError(ValueError):
    """A store's bytes do not match what its manifest vouches for, or hold impossible values."""


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
    # content hash of the base model folder (less_ray.identity): filled in by write_manifest when
    # `model` is a local folder; None for a hub id or a synthetic store
    model_hash: str | None = None

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


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, compact), without its own checksum key."""
    body = {k: v for k, v in data.items() if k != MANIFEST_SUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(store: str | Path, manifest: StoreManifest) -> Path:
    path = Path(store) / MANIFEST
    if not manifest.shards:
        src = manifest.input.get("path") if manifest.input else None
        raise ValueError(f"{store}: refusing to write a datastore without shards: the input "
                         f"{src or '(unknown)'} holds no records")
    if manifest.model_hash is None:
        from .identity import model_content_hash
        manifest.model_hash = model_content_hash(manifest.model)
    data = asdict(manifest)
    data[MANIFEST_SUM] = manifest_digest(data)
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def shard_path(store: str | Path, entry: dict[str, Any], where: str | Path | None = None) -> Path:
    """The shard file a manifest entry names, confined to `<store>/shards/` (no absolute path, no
    `..`, no link out of the store)."""
    file = entry.get("file")
    where = where or Path(store) / MANIFEST
    p = PurePosixPath(file) if isinstance(file, str) else None
    if (p is None or "\\" in file or p.is_absolute() or len(p.parts) != 2 or p.parts[0] != SHARDS
            or p.parts[1] in ("..", ".") or not p.parts[1].endswith(".parquet")):
        raise StoreIntegrityError(f"{where}: shard file {file!r} is not a file under {SHARDS}/ of its store: refused")
    full = Path(store) / p
    if not full.resolve().is_relative_to(Path(store).resolve()):
        raise StoreIntegrityError(f"{where}: shard file {file!r} leads outside its store ({full.resolve()}): refused")
    return full


def read_manifest(store: str | Path) -> StoreManifest:
    """The manifest, after checking its own checksum and that its shard files stay in the store."""
    path = Path(store) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{store}: not a finished datastore (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreIntegrityError(f"{path}: damaged manifest ({e}); {REPAIR}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path}: unknown store format {fmt!r} (expected {FORMAT})")
    stored = data.pop(MANIFEST_SUM, None)
    if stored is None:
        raise StoreIntegrityError(f"{path}: the manifest carries no {MANIFEST_SUM} (written before manifests "
                                  f"were checksummed, or edited); {REPAIR}")
    if stored != manifest_digest(data):
        raise StoreIntegrityError(f"{path}: the manifest's content does not match its {MANIFEST_SUM} "
                                  f"(edited or damaged); {REPAIR}")
    for entry in data.get("shards", []):
        shard_path(store, entry, path)
    data["projection"] = Projection(**data["projection"])
    return StoreManifest(**data)


def verify_shard_checksum(store: str | Path, entry: dict[str, Any]) -> Path:
    """The shard's path once its bytes hash to the manifest's sha256 (else StoreIntegrityError)."""
    path = shard_path(store, entry)
    if not path.exists():
        raise StoreIntegrityError(f"{path}: shard {entry.get('index')} is missing; {REPAIR}")
    got = sha256_file(path)
    if got != entry.get("sha256"):
        raise StoreIntegrityError(f"{path}: shard {entry.get('index')} is damaged: its sha256 {got[:16]}... "
                                  f"differs from the manifest's {str(entry.get('sha256'))[:16]}...; {REPAIR}")
    return path


def bad_feature_rows(sumsq: np.ndarray, normalized: bool, tol: float = NORM_TOL) -> np.ndarray:
    """Indices of rows whose squared norm is not finite or (normalised stores) neither ~1 nor 0."""
    ok = np.isfinite(sumsq)
    if normalized:
        ok &= (np.abs(sumsq - 1.0) <= tol) | (sumsq == 0)
    return np.flatnonzero(~ok)


def feature_error(path: str | Path, row: int, row_id: Any, sumsq: float, normalized: bool) -> StoreIntegrityError:
    what = ("non-finite values" if not np.isfinite(sumsq)
            else f"squared norm {sumsq:.6g}, not 1 (a normalised store holds unit rows)")
    return StoreIntegrityError(f"{path}: row {row} (id {row_id!r}) holds {what}; the shard is damaged: "
                               f"delete it and {REPAIR}")


def check_features(path: str | Path, features: np.ndarray, normalized: bool, ids=None, row0: int = 0) -> None:
    """Refuse a [n, d] block with a non-finite row, or (normalised) a row of neither unit nor zero norm."""
    f = np.asarray(features, dtype=np.float32)
    sumsq = np.einsum("ij,ij->i", f, f) if len(f) else np.empty(0, np.float32)
    bad = bad_feature_rows(sumsq, normalized)
    if len(bad):
        i = int(bad[0])
        raise feature_error(path, row0 + i, None if ids is None else ids[i], float(sumsq[i]), normalized)


def iter_blocks(store: str | Path, columns: tuple[str, ...] = ("id", "features"),
                batch_rows: int = 65536, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Stream the store shard by shard: dicts of numpy columns; `features` as [n, dim] float32.
    Memory is bounded by `batch_rows`, not by the store's size. `verify`: each shard's sha256 is
    checked before it is read, and features rows (when read) for being finite / of unit norm."""
    import pyarrow.parquet as pq
    man = read_manifest(store)
    want = list(columns) + (["id"] if verify and "features" in columns and "id" not in columns else [])
    for entry in man.shards:
        path = verify_shard_checksum(store, entry) if verify else shard_path(store, entry)
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=want):
            block = {name: _column_to_numpy(batch.column(name), man.projection.dim) for name in want}
            if verify and "features" in block:
                check_features(path, block["features"], man.normalized, block["id"], row)
            row += batch.num_rows
            yield {name: block[name] for name in columns}


def _column_to_numpy(col, dim: int):
    import pyarrow as pa
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def read_store(store: str | Path, columns: tuple[str, ...] = ("id", "features"), verify: bool = True) -> dict[str, Any]:
    """A whole (small) store in memory: targets, tests. Pools stream with iter_blocks."""
    blocks = list(iter_blocks(store, columns, verify=verify))
    if not blocks:
        return {c: np.empty((0,)) for c in columns}
    return {c: np.concatenate([b[c] for b in blocks]) for c in columns}

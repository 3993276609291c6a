"""The gradient datastore on disk: Arrow IPC shards + manifest.json, readable without Ray.

    <store>/manifest.json
    <store>/shards/part-00000.arrow   (+ part-00000.arrow.json: rows and sha256)

A shard is one uncompressed Arrow IPC file (the Feather v2 format) of record batches of at most
`BATCH_BYTES` of features. Columns: `id` string, `source` string, `features`
fixed_size_list<float16|float32>[dim], `norm` float32 (L2 norm before normalisation), `n_tokens`
int32, `loss` float32, and for targets `task`, `subtask` strings. pyarrow reads the features of a
batch as they lie in the file, with no decoding (`read_shard`, `shard_batches`); pyarrow.dataset
and pandas (`read_feather`) read the shards too. Stores of the retired Parquet layout
(less_ray.datastore/1, `part-NNNNN.parquet`) are refused by `read_manifest` with the fix: rerun
extract, which replaces their shards.

A shard is written to a hidden temp name and renamed into place with its sidecar, so a killed
writer leaves no partial shard visible; a rerun skips shards whose sidecar checksum verifies.
The manifest is written last, from the sidecars, with a sha256 of its own content.

A store may live on an object store (`s3://bucket/path`, any fsspec URI; less_ray/storage.py):
shards are written to a local spool file and uploaded under their final name (an object appears
whole or not at all), then their sidecars, then the manifest, in the same order as on disk; a
reader copies each shard to its spool once, verifies its sha256 there and reads it as a local one.

Verify on read: `read_manifest` checks the manifest's own checksum and that every shard `file`
stays inside the store; `iter_blocks` / `read_store` (and `score`'s block reader) check each
shard's sha256 against the manifest before using it, and every features row read for being
finite and, in a normalised store, of unit norm (`check_features`). A failure is a
`StoreIntegrityError` naming the file (and row) and how to repair it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from . import storage
from .artifact import sha256_file
from .core.quantize import CODED_DTYPES, check_dtype, decode, encode, stored_numpy_dtype, stored_width

FORMAT = "less_ray.datastore/2"
PARQUET_FORMAT = "less_ray.datastore/1"  # the retired layout: Parquet shards, part-NNNNN.parquet
MANIFEST = "manifest.json"
SHARDS = "shards"
SUFFIX = ".arrow"
SHARD_KEY = "_shard_key.json"  # what a store's shards were computed from (artifact.claim's key file)
# features bytes per record batch of a shard: what a reader holds in memory per shard it reads
BATCH_BYTES = 16 << 20
MANIFEST_SUM = "manifest_sha256"  # sha256 of the manifest's canonical JSON without this key
# A stored unit row has |row|² within this of 1 (float16 rounding moves it by < 1e-3), or is all
# zeros (a zero gradient is stored as a zero row, norm 0).
NORM_TOL = 1e-2
REPAIR = ("rerun the stage that wrote this store with the same config (`less-ray extract` for gradient "
          "stores): it rewrites every shard that does not verify and then the manifest")


class StoreMismatch(ValueError):
    """Two stores whose features cannot be scored together; the message names the field."""


class StoreIntegrityError(ValueError):
    """A store's bytes do not match what its manifest vouches for, or hold impossible values."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}{SUFFIX}"


def _arrow_schema(dim: int, dtype: str, with_task: bool):
    import pyarrow as pa
    value = pa.from_numpy_dtype(stored_numpy_dtype(dtype))
    fields = [("id", pa.string()), ("source", pa.string()), ("features", pa.list_(value, stored_width(dtype, dim)))]
    if dtype in CODED_DTYPES:
        fields.append(("scale", pa.float32()))  # decoded row = scale * code (core/quantize.py)
    fields += [("norm", pa.float32()), ("n_tokens", pa.int32()), ("loss", pa.float32())]
    if with_task:
        fields += [("task", pa.string()), ("subtask", pa.string())]
    return pa.schema(fields)


def features_table(ids: list[str], sources: list[str], features: np.ndarray, norms, n_tokens, losses,
                   dtype: str = "float16", tasks: list[str | None] | None = None, subtasks: list[str | None] | None = None):
    """An Arrow table in the store's column layout (features as fixed_size_list; coded dtypes
    with their per-row `scale`)."""
    import pyarrow as pa
    check_dtype(dtype, "store dtype")
    features = np.asarray(features)
    n, dim = features.shape
    if not np.isfinite(features).all() or not np.isfinite(np.asarray(norms, dtype=np.float64)).all():
        bad = [ids[i] for i in np.flatnonzero(~np.isfinite(features).all(axis=1))][:5]
        raise ValueError(f"non-finite features for ids {bad}: refusing to store NaN/inf rows")
    schema = _arrow_schema(dim, dtype, tasks is not None)
    values, scale = encode(features, dtype)
    ftype = schema.field("features").type
    flat = pa.array(values.reshape(-1), type=ftype.value_type)
    cols = [pa.array(ids, pa.string()), pa.array(sources, pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, ftype.list_size)]
    if scale is not None:
        cols.append(pa.array(scale, pa.float32()))
    cols += [pa.array(np.asarray(norms, np.float32)), pa.array(np.asarray(n_tokens, np.int32)),
             pa.array(np.asarray(losses, np.float32))]
    if tasks is not None:
        cols += [pa.array(tasks, pa.string()), pa.array(subtasks, pa.string())]
    return pa.Table.from_arrays(cols, schema=schema)


def write_shard(store: str | Path, index: int, table) -> dict[str, Any]:
    """Atomically write shard `index` (an Arrow IPC file) and its sidecar; returns the sidecar entry."""
    import pyarrow as pa
    shards = storage.location(store) / SHARDS
    final = shards / shard_name(index)
    tmp = storage.spool_file(final)
    ftype = table.schema.field("features").type
    row_bytes = ftype.list_size * ftype.value_type.bit_width // 8
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, BATCH_BYTES // max(1, row_bytes)))
    entry = {"file": f"{SHARDS}/{final.name}", "index": index, "rows": table.num_rows, "sha256": sha256_file(tmp)}
    storage.upload(tmp, final)  # the shard first, then the sidecar that vouches for it
    storage.write_atomic(shards / f"{final.name}.json", json.dumps(entry))
    return entry


def verified_shard(store: str | Path, index: int) -> dict[str, Any] | None:
    """The sidecar entry if shard `index` is complete and its checksum matches, else None."""
    shards = storage.location(store) / SHARDS
    side, data = shards / f"{shard_name(index)}.json", shards / shard_name(index)
    if not (side.exists() and data.exists()):
        return None
    try:
        entry = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    return entry if sha256_file(data) == entry.get("sha256") else None


def remove_temp_files(store: str | Path) -> int:
    """Leftovers of killed writers (never visible as shards), and shards of the retired Parquet
    layout with their sidecars (this version never reads them; extract replaces them); returns
    how many files were removed."""
    shards = storage.location(store) / SHARDS
    n = 0
    if shards.exists():
        for p in [*shards.glob(".tmp-*"), *shards.glob("part-*.parquet"), *shards.glob("part-*.parquet.json")]:
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

    # the numerics the features were computed with, typed (stored in `input` and `extra`, where
    # every store written so far keeps them; None where a store does not record one)
    @property
    def chat_format(self) -> str | None:
        return (self.input or {}).get("chat_format")

    @property
    def max_seq_length(self) -> int | None:
        return (self.input or {}).get("max_seq_length")

    @property
    def precision(self) -> str | None:
        return (self.extra or {}).get("precision")

    @property
    def model_identity(self) -> str:
        """The base model by content hash (a copied folder matches, another model at the same path
        does not); by name only where a store has no hash (a hub id, a synthetic store)."""
        return f"content sha256 {self.model_hash}" if self.model_hash else f"name {self.model}"

    def compatible(self, other: "StoreManifest", here: str = "this store", there: str = "the other") -> None:
        """Raise StoreMismatch, naming the field, unless features of `other` can be scored against
        these: same base model, projection (type, seed, dim), normalisation, and (where both record
        them) chat format, max_seq_length and precision."""
        if self.model_identity != other.model_identity:
            raise StoreMismatch(f"stores disagree on base model: {here} has {self.model} ({self.model_identity}), "
                                f"{there} has {other.model} ({other.model_identity})")
        for name, a, b in (("projection type", self.projection.type, other.projection.type),
                           ("projection seed", self.projection.seed, other.projection.seed),
                           ("projection dim", self.projection.dim, other.projection.dim),
                           ("normalisation", self.normalized, other.normalized),
                           ("chat format", self.chat_format, other.chat_format),
                           ("max_seq_length", self.max_seq_length, other.max_seq_length),
                           ("precision", self.precision, other.precision)):
            optional = name in ("chat format", "max_seq_length", "precision")
            if a != b and not (optional and (a is None or b is None)):
                raise StoreMismatch(f"stores disagree on {name}: {here} has {a!r}, {there} has {b!r}")

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
    path = storage.location(store) / MANIFEST
    if not manifest.shards:
        src = manifest.input.get("path") if manifest.input else None
        raise ValueError(f"{store}: refusing to write a datastore without shards: the input "
                         f"{src or '(unknown)'} holds no records")
    if manifest.model_hash is None:
        from .identity import model_content_hash
        manifest.model_hash = model_content_hash(manifest.model)
    data = asdict(manifest)
    data[MANIFEST_SUM] = manifest_digest(data)
    storage.write_atomic(path, json.dumps(data, indent=2))
    return path


def shard_path(store: str | Path, entry: dict[str, Any], where: str | Path | None = None):
    """The shard file a manifest entry names, confined to `<store>/shards/` (no absolute path, no
    `..`, no link out of the store)."""
    file = entry.get("file")
    root = storage.location(store)
    where = where or root / MANIFEST
    p = PurePosixPath(file) if isinstance(file, str) else None
    if (p is None or "\\" in file or p.is_absolute() or len(p.parts) != 2 or p.parts[0] != SHARDS
            or p.parts[1] in ("..", ".") or not p.parts[1].endswith(SUFFIX)):
        raise StoreIntegrityError(f"{where}: shard file {file!r} is not a file under {SHARDS}/ of its store: refused")
    full = root / p
    if isinstance(root, Path) and not full.resolve().is_relative_to(root.resolve()):  # (no links in an object store)
        raise StoreIntegrityError(f"{where}: shard file {file!r} leads outside its store ({full.resolve()}): refused")
    return full


def read_manifest(store: str | Path) -> StoreManifest:
    """The manifest, after checking its own checksum and that its shard files stay in the store."""
    path = storage.location(store) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{store}: not a finished datastore (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreIntegrityError(f"{path}: damaged manifest ({e}); {REPAIR}") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == PARQUET_FORMAT:
        raise StoreIntegrityError(
            f"{path}: a store in the retired Parquet layout ({PARQUET_FORMAT}, shards/part-NNNNN.parquet); this "
            f"version reads Arrow IPC shards ({FORMAT}, shards/part-NNNNN{SUFFIX}). Rerun `less-ray extract` with "
            "the config that wrote it (or the stage that did): it rewrites every shard in the new layout and removes "
            "the Parquet ones")
    if fmt != FORMAT:
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


def verify_shard_checksum(store: str | Path, entry: dict[str, Any], local: Path | None = None):
    """The shard's path once its bytes (those of `local`, its fetched copy, when given) hash to
    the manifest's sha256 (else StoreIntegrityError). A remote shard is found missing by
    `local_shard`, which fetches it."""
    path = shard_path(store, entry)
    if not storage.is_remote(path) and not path.exists():
        raise StoreIntegrityError(f"{path}: shard {entry.get('index')} is missing; {REPAIR}")
    got = sha256_file(local or path)
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


def shard_batches(path: str | Path, columns: list[str] | tuple[str, ...] | None = None, shown=None) -> Iterator:
    """The record batches of one shard file, in order, with only `columns` (all when None). The
    file is memory-mapped and pyarrow's batches are views of it: no copy, no decoding. The next
    batch's pages are asked for ahead (readahead), and a batch's pages leave this process's
    resident set when the next one is asked for, so a reader holds about one batch, whatever the
    shard's size. A file that is not an Arrow IPC shard with these columns is a
    StoreIntegrityError naming the file (`shown`: the name to give it, e.g. the remote shard that
    `path` is a fetched copy of). A remote `path` is fetched to the spool first."""
    if storage.is_remote(path):
        with storage.fetched(path) as local:
            yield from shard_batches(local, columns, shown or path)
        return
    import mmap

    import pyarrow as pa
    path = Path(path)
    shown = shown or path
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:  # missing, unreadable or empty
        raise StoreIntegrityError(f"{shown}: not a readable Arrow IPC shard ({e}); {REPAIR}") from None
    try:
        yield from _mapped_batches(shown, mm, columns)
    except (pa.ArrowException, OSError) as e:
        raise StoreIntegrityError(f"{shown}: not a readable Arrow IPC shard ({type(e).__name__}: {e}); "
                                  f"{REPAIR}") from None
    finally:
        try:
            mm.close()
        except BufferError:  # views of it are still in use: the map goes with the last of them
            pass


def _mapped_batches(path: Path, mm, columns) -> Iterator:
    import mmap

    import pyarrow as pa
    whole = pa.py_buffer(mm)
    base, size = whole.address, whole.size
    # every column is read: views of the map cost nothing until touched (IpcReadOptions'
    # included_fields would copy the chosen ones out of it instead)
    reader = pa.ipc.open_file(pa.BufferReader(whole))
    schema = reader.schema
    missing = [c for c in columns or () if c not in schema.names]
    if missing:
        raise StoreIntegrityError(f"{path}: shard has no column(s) {missing} (it holds {schema.names}); {REPAIR}")

    def pages(batch, advice):  # the batch's bytes in the map, page-aligned (none if decompressed)
        spans = [(b.address - base, b.address - base + b.size) for col in batch.columns for b in col.buffers()
                 if b is not None and b.size and base <= b.address < base + size]
        if spans:
            lo = min(a for a, _ in spans) // mmap.PAGESIZE * mmap.PAGESIZE
            mm.madvise(advice, lo, min(size, max(b for _, b in spans)) - lo)

    n = reader.num_record_batches
    batch = reader.get_batch(0) if n else None
    for i in range(n):
        nxt = reader.get_batch(i + 1) if i + 1 < n else None
        if nxt is not None:
            pages(nxt, mmap.MADV_WILLNEED)
        batch.validate()
        yield batch if columns is None else batch.select(list(columns))
        pages(batch, mmap.MADV_DONTNEED)  # file pages: read again from the page cache if touched again
        batch = nxt


def shard_schema(path: str | Path):
    """The Arrow schema of one shard file (its footer only)."""
    import pyarrow as pa
    try:
        with storage.fetched(path) as local, pa.OSFile(str(local)) as f:
            return pa.ipc.open_file(f).schema
    except (pa.ArrowException, OSError) as e:
        raise StoreIntegrityError(f"{path}: not a readable Arrow IPC shard ({type(e).__name__}: {e}); "
                                  f"{REPAIR}") from None


def read_shard(path: str | Path, columns: list[str] | tuple[str, ...] | None = None):
    """One shard file (or `columns` of it) as a pyarrow Table."""
    import pyarrow as pa
    batches = list(shard_batches(path, columns))
    if batches:
        return pa.Table.from_batches(batches)
    schema = shard_schema(path)
    return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()


def features_view(col, path: str | Path = "", dim: int | None = None, dtype: str = "float16") -> np.ndarray:
    """A features column as an [n, stored width] numpy array sharing its memory (read-only: the
    bytes belong to the record batch): fixed_size_list<float16|float32>[dim] for a float store,
    the exact code layout of a coded one (int8[dim], int4 uint8[dim/2], sign uint8[dim/8]). A
    null row or value is refused."""
    import pyarrow as pa
    t = col.type
    if dtype in CODED_DTYPES:
        ok = (pa.types.is_fixed_size_list(t) and t.value_type == pa.from_numpy_dtype(stored_numpy_dtype(dtype))
              and (dim is None or t.list_size == stored_width(dtype, dim)))
        want = f"fixed_size_list<{stored_numpy_dtype(dtype)}>[{stored_width(dtype, dim) if dim else 'w'}] ({dtype})"
    else:
        ok = (pa.types.is_fixed_size_list(t) and (pa.types.is_float16(t.value_type) or pa.types.is_float32(t.value_type))
              and (dim is None or t.list_size == dim))
        want = f"fixed_size_list<float16|float32>[{dim if dim is not None else 'd'}]"
    if not ok:
        raise StoreIntegrityError(f"{path}: features column is {t}, not {want}; {REPAIR}")
    values = col.flatten()
    if col.null_count or values.null_count:
        raise StoreIntegrityError(f"{path}: features hold nulls; {REPAIR}")
    return values.to_numpy(zero_copy_only=True).reshape(-1, t.list_size)


@dataclass(frozen=True)
class FeatureRows:
    """Feature rows as stored, without a copy: `values` [n, stored width] in the store's dtype and,
    for a coded dtype, the per-row `scale`. Sliced like an array; `widen()` decodes to float32."""
    values: np.ndarray
    scale: np.ndarray | None
    dtype: str
    dim: int

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, rows: slice) -> "FeatureRows":
        return FeatureRows(self.values[rows], None if self.scale is None else self.scale[rows], self.dtype, self.dim)

    def widen(self) -> np.ndarray:
        return decode(self.values, self.scale, self.dtype, self.dim)


def feature_columns(dtype: str) -> list[str]:
    """The shard columns that hold a store's features."""
    return ["features", "scale"] if dtype in CODED_DTYPES else ["features"]


def feature_rows(batch, dtype: str, dim: int, path: str | Path = "") -> FeatureRows:
    """The features (and scale) of a record batch read with `feature_columns(dtype)`."""
    values = features_view(batch.column("features"), path, dim, dtype)
    scale = None
    if dtype in CODED_DTYPES:
        col = batch.column("scale")
        if col.null_count:
            raise StoreIntegrityError(f"{path}: scale holds nulls; {REPAIR}")
        scale = col.to_numpy(zero_copy_only=False)
    return FeatureRows(values, scale, dtype, dim)


def iter_blocks(store: str | Path, columns: tuple[str, ...] = ("id", "features"),
                batch_rows: int = 65536, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Stream the store shard by shard: dicts of numpy columns; `features` as [n, dim] float32.
    Blocks follow the shards' record batches, at most `batch_rows` rows each, so memory is bounded
    by one record batch and `batch_rows`, not by the store's size. `verify`: each shard's sha256 is
    checked before it is read, and features rows (when read) for being finite / of unit norm."""
    man = read_manifest(store)
    want = list(columns) + (["id"] if verify and "features" in columns and "id" not in columns else [])
    if "features" in columns and man.dtype in CODED_DTYPES:
        want.append("scale")
    for entry in man.shards:
        with local_shard(store, entry) as (path, local):  # a remote shard crosses the network once
            yield from _shard_blocks(store, entry, path, local, man, want, columns, batch_rows, verify)


@contextlib.contextmanager
def local_shard(store: str | Path, entry: dict[str, Any]):
    """(path, local): the shard a manifest entry names, and a local file of its bytes: the shard
    itself when local, a spool copy of a remote one (fetched once, removed after)."""
    path = shard_path(store, entry)
    if storage.is_remote(path) and not path.exists():
        raise StoreIntegrityError(f"{path}: shard {entry.get('index')} is missing; {REPAIR}")
    with storage.fetched(path) as local:
        yield path, local


def _shard_blocks(store, entry, path, local, man, want, columns, batch_rows, verify) -> Iterator[dict[str, Any]]:
    if verify:
        verify_shard_checksum(store, entry, local)
    row = 0
    for whole in shard_batches(local, want, path):
        for lo in range(0, max(whole.num_rows, 1), batch_rows):
            batch = whole.slice(lo, batch_rows)
            if not batch.num_rows:
                continue
            block = {name: _column_to_numpy(batch.column(name)) for name in want if name not in ("features", "scale")}
            if "features" in want:
                block["features"] = feature_rows(batch, man.dtype, man.projection.dim, path).widen()
            if verify and "features" in block:
                check_features(path, block["features"], man.normalized, block["id"], row)
            row += batch.num_rows
            yield {name: block[name] for name in columns}


def _column_to_numpy(col):
    import pyarrow as pa
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def read_store(store: str | Path, columns: tuple[str, ...] = ("id", "features"), verify: bool = True) -> dict[str, Any]:
    """A whole (small) store in memory: targets, tests. Pools stream with iter_blocks."""
    blocks = list(iter_blocks(store, columns, verify=verify))
    if not blocks:
        return {c: np.empty((0,)) for c in columns}
    return {c: np.concatenate([b[c] for b in blocks]) for c in columns}

"""The store's shard layout: Arrow IPC files that pyarrow and pandas read with no parser of ours.
Round trips are bit-exact, damaged bytes and impossible rows are refused naming the file, the
reading recipe of docs/datastore.md runs, and a store of the retired Parquet layout is refused with the fix."""
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from less_ray import store as S
from less_ray.testing.synthetic_store import write_store

DATASTORE_DOC = Path(__file__).resolve().parents[1] / "docs" / "datastore.md"


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype,bits", [("float16", np.uint16), ("float32", np.uint32)])
def test_round_trip_is_bit_exact_across_shards_and_record_batches(tmp_path, monkeypatch, dtype, bits):
    monkeypatch.setattr(S, "BATCH_BYTES", 7 * 24 * np.dtype(dtype).itemsize)  # 7 rows per record batch
    rng = np.random.default_rng(1)
    x = _unit(rng, 101, 24)
    ids = [f"r{i:03d}" for i in range(101)]
    write_store(tmp_path, ids, x, kind="adam", checkpoint="c", dtype=dtype, shard_rows=40)
    shard = tmp_path / "shards" / "part-00000.arrow"
    reader = pa.ipc.open_file(shard)
    assert reader.num_record_batches == 6 and reader.schema.field("features").type == pa.list_(getattr(pa, dtype)(), 24)
    want = x.astype(dtype)
    got = S.read_store(tmp_path, ("id", "features"))
    assert list(got["id"]) == ids and got["features"].dtype == np.float32
    assert np.array_equal(got["features"].astype(dtype).view(bits), want.view(bits))
    blocks = list(S.iter_blocks(tmp_path, ("features",), batch_rows=5))
    assert max(len(b["features"]) for b in blocks) == 5
    assert np.array_equal(np.concatenate([b["features"] for b in blocks]).astype(dtype).view(bits), want.view(bits))
    # the bytes pyarrow hands out are the file's, bit for bit
    view = S.features_view(reader.get_batch(0).column(2), shard, 24)
    assert view.dtype == np.dtype(dtype) and np.array_equal(view.view(bits), want[:7].view(bits))
    assert S.shard_schema(shard).field("features").type.list_size == 24


def test_a_flipped_byte_is_refused_naming_the_shard(tmp_path):
    write_store(tmp_path, [f"r{i}" for i in range(30)], _unit(np.random.default_rng(2), 30, 16), kind="adam",
                checkpoint="c", dtype="float16", shard_rows=10)
    shard = tmp_path / "shards" / "part-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(S.StoreIntegrityError, match=rf"{re.escape(str(shard))}: shard 1 is damaged: its sha256"):
        S.read_store(tmp_path)
    # read with verify off, a shard whose file is cut short is still named, not a pyarrow traceback
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(S.StoreIntegrityError, match=rf"{re.escape(str(shard))}: not a readable Arrow IPC shard"):
        S.read_store(tmp_path, verify=False)


def _vouched_features(store, index, f):
    """Shard `index` with features `f` (any values: built without features_table's check) and
    checksums that vouch for it, so only the row checks can refuse it."""
    man = S.read_manifest(store)
    path = S.shard_path(store, man.shards[index])
    table = pa.ipc.open_file(path).read_all()
    feats = pa.FixedSizeListArray.from_arrays(pa.array(f.astype(np.float16).reshape(-1), pa.float16()), f.shape[1])
    table = table.set_column(table.schema.get_field_index("features"), "features", feats)
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    man.shards[index]["sha256"] = S.sha256_file(path)
    S.write_manifest(store, man)
    return path


def test_non_finite_and_non_unit_rows_are_refused_on_read(tmp_path):
    x = _unit(np.random.default_rng(3), 20, 8)
    write_store(tmp_path, [f"r{i:02d}" for i in range(20)], x, kind="adam", checkpoint="c", dtype="float16",
                shard_rows=10)
    f = x[10:].copy()
    f[4, 2] = np.inf
    path = _vouched_features(tmp_path, 1, f)
    with pytest.raises(S.StoreIntegrityError, match=rf"{re.escape(str(path))}: row 4 \(id 'r14'\) holds non-finite"):
        S.read_store(tmp_path)
    f[4, 2] = 0
    f[4] /= np.linalg.norm(f[4])
    f[6] *= 3
    _vouched_features(tmp_path, 1, f)
    with pytest.raises(S.StoreIntegrityError, match=r"part-00001.arrow: row 6 \(id 'r16'\) holds squared norm 8\.99"):
        S.read_store(tmp_path)
    assert len(S.read_store(tmp_path, ("id",))["id"]) == 20  # rows are checked where features are read


def _docs_recipe() -> str:
    text = DATASTORE_DOC.read_text()
    section = text[text.index("# The datastore"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_docs_recipe_reads_a_store(tmp_path):
    x = _unit(np.random.default_rng(4), 25, 8)
    ids = [f"r{i:02d}" for i in range(25)]
    write_store(tmp_path / "st", ids, x, kind="sgd", checkpoint="c", dtype="float16", shard_rows=10,
                subtasks=["a"] * 25, task="t")
    (tmp_path / "st" / "shards" / "part-00000.skipped.json").write_text("[]")  # as extract leaves beside shards
    scope = {"store": str(tmp_path / "st")}
    exec(_docs_recipe(), scope)
    table, df = scope["table"], scope["df"]
    assert table.column("id").to_pylist() == ids and list(df["id"]) == ids
    assert table.schema.field("features").type == pa.list_(pa.float16(), 8)
    np.testing.assert_array_equal(np.stack(df["features"]), x.astype(np.float16))
    assert list(df.columns) == ["id", "source", "features", "norm", "n_tokens", "loss", "task", "subtask"]


def test_a_store_of_the_parquet_layout_is_refused_with_the_fix(tmp_path):
    import pyarrow.parquet as pq
    write_store(tmp_path, ["a", "b"], _unit(np.random.default_rng(5), 2, 8), kind="adam", checkpoint="c")
    data = json.loads((tmp_path / "manifest.json").read_text())  # as the Parquet layout wrote it
    data["format"] = S.PARQUET_FORMAT
    data["shards"][0]["file"] = "shards/part-00000.parquet"
    pq.write_table(pa.ipc.open_file(tmp_path / "shards" / "part-00000.arrow").read_all(),
                   tmp_path / "shards" / "part-00000.parquet")
    (tmp_path / "shards" / "part-00000.parquet.json").write_text("{}")
    data[S.MANIFEST_SUM] = S.manifest_digest(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(S.StoreIntegrityError, match=rf"{re.escape(str(tmp_path / 'manifest.json'))}: a store in the "
                                                    r"retired Parquet layout .*Rerun `less-ray extract`"):
        S.read_store(tmp_path)
    # extract's rerun starts by clearing the retired shards (remove_temp_files), then rewrites them
    assert S.remove_temp_files(tmp_path) == 2
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["part-00000.arrow", "part-00000.arrow.json"]

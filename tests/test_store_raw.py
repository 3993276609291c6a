"""The raw-page feature reader against pyarrow's own decoder, and its refusals."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from less_ray import store as S
from less_ray.store_raw import FeaturePages


def _table(n, dim, dtype, seed=0):
    f = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return S.features_table([f"id{i}" for i in range(n)], ["src"] * n, f, np.ones(n), np.ones(n), np.zeros(n), dtype)


def _pyarrow_features(path):
    col = pq.read_table(path, columns=["features"]).column(0).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("write", [
    {},  # as write_shard writes
    {"row_group_size": 70, "data_page_size": 999},  # several row groups, pages splitting rows
    {"data_page_version": "2.0", "data_page_size": 4096},
])
def test_blocks_equal_pyarrow_bit_for_bit(tmp_path, dtype, write):
    path = tmp_path / "s.parquet"
    table = _table(301, 24, dtype)
    pq.write_table(table, path, use_dictionary=["id", "source"], write_statistics=["id"], compression="none", **write)
    want = _pyarrow_features(path)
    reader = FeaturePages.open(path)
    assert reader is not None and reader.rows == 301 and reader.dtype == want.dtype
    for rows in (1, 7, 64, 301, 1000):
        blocks = [b.copy() for b in reader.blocks(rows)]
        assert all(len(b) == rows for b in blocks[:-1]) and 0 < len(blocks[-1]) <= rows
        got = np.concatenate(blocks)
        assert got.shape == want.shape and got.tobytes() == want.tobytes()


def test_write_shard_output_takes_the_raw_path(tmp_path):
    entry = S.write_shard(tmp_path, 0, _table(50, 16, "float16"))
    reader = FeaturePages.open(tmp_path / entry["file"])
    assert reader is not None
    assert np.concatenate(list(reader.blocks(64))).tobytes() == _pyarrow_features(tmp_path / entry["file"]).tobytes()


@pytest.mark.parametrize("write", [{"compression": "snappy", "use_dictionary": False},
                                   {"compression": "none", "use_dictionary": True}])
def test_compressed_or_dictionary_shards_are_left_to_pyarrow(tmp_path, write):
    path = tmp_path / "s.parquet"
    pq.write_table(_table(40, 8, "float16"), path, **write)
    assert FeaturePages.open(path) is None


def test_null_features_are_refused(tmp_path):
    path = tmp_path / "s.parquet"
    flat = pa.array(np.arange(12, dtype=np.float16))
    col = pa.FixedSizeListArray.from_arrays(flat, 4, mask=pa.array([False, True, False]))  # row 1 is null
    pq.write_table(pa.table({"features": col}), path, use_dictionary=False, compression="none")
    with pytest.raises(ValueError, match="holds nulls"):
        FeaturePages.open(path)

"""Compact stores (#27): int8 / int4 / 1-bit sign codes with a per-row scale, against references
written here value by value; stores of them scored as dense numpy says; and
`recode` of a float32 store equal, byte for byte, to extracting in that dtype."""
import json

import numpy as np
import pyarrow as pa
import pytest

from less_ray import store as S
from less_ray.core import quantize as Q
from less_ray.testing.synthetic_store import write_store


def _rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_codes(x: np.ndarray, dtype: str) -> np.ndarray:
    """The integer code of each value, one by one (no packing): what the stored row points along."""
    out = np.zeros(x.shape, np.float64)
    for i, row in enumerate(x.astype(np.float64)):
        amax = max(abs(v) for v in row)
        for j, v in enumerate(row):
            if dtype == "sign":
                out[i, j] = 1.0 if v >= 0 else -1.0
            elif amax > 0:
                out[i, j] = round(v / amax * {"int8": 127, "int4": 7}[dtype])  # Python: half to even, as rint
    return out


def reference_decode(values: np.ndarray, scale: np.ndarray, dtype: str, dim: int) -> np.ndarray:
    """Unpack bit by bit / nibble by nibble (the codec does it a row block at a time)."""
    n = len(values)
    q = np.zeros((n, dim))
    for i in range(n):
        for j in range(dim):
            if dtype == "int8":
                q[i, j] = int(values[i, j])
            elif dtype == "int4":
                byte = int(values[i, j // 2])
                q[i, j] = ((byte >> 4) if j % 2 else (byte & 15)) - 8
            else:  # sign: numpy's packbits order, the first value in the byte's high bit
                q[i, j] = 1.0 if (int(values[i, j // 8]) >> (7 - j % 8)) & 1 else -1.0
    return q * scale[:, None]


@pytest.mark.parametrize("dtype", Q.CODED_DTYPES)
@pytest.mark.parametrize("dim", [13, 64])  # 13: an odd dim, a part-filled last byte
def test_codes_decode_to_the_reference_direction_at_the_input_norm(dtype, dim):
    x = _rows(6, dim, seed=dim)
    x[2] = 0.0  # a zero gradient: stored as zeros
    x[3] *= 3.5  # a raw (unnormalised) row keeps its norm
    values, scale = Q.encode(x, dtype)
    assert values.shape == (6, Q.stored_width(dtype, dim)) and values.dtype == Q.stored_numpy_dtype(dtype)
    assert values.nbytes + scale.nbytes == 6 * Q.row_bytes(dtype, dim)
    got = Q.decode(values, scale, dtype, dim)
    np.testing.assert_allclose(got, reference_decode(values, scale, dtype, dim), rtol=1e-6, atol=1e-7)
    codes = reference_codes(x, dtype)
    norms = np.linalg.norm(x, axis=1)
    for i in range(6):
        if norms[i] == 0:
            assert not got[i].any() and scale[i] == 0
            continue
        want = codes[i] / np.linalg.norm(codes[i]) * norms[i]  # the code's direction, the input's norm
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_code_fidelity_follows_bits():
    """Cosine to the input: int8 ~ exact, int4 close, signs at sqrt(2/pi) for Gaussian rows (QLESS's
    1-bit regime): the codes quantize, not scramble."""
    x = _rows(200, 4096, seed=1)
    cos = {t: np.einsum("ij,ij->i", Q.decode(*Q.encode(x, t), t, 4096), x) for t in Q.CODED_DTYPES}
    assert cos["int8"].min() > 0.9995 and cos["int4"].min() > 0.975  # absmax: a step of ~0.56 sd
    assert abs(cos["sign"].mean() - np.sqrt(2 / np.pi)) < 0.01


def test_a_float_dtype_passes_through():
    x = _rows(3, 8)
    values, scale = Q.encode(x, "float16")
    assert scale is None and values.dtype == np.float16
    with pytest.raises(ValueError, match="must be one of float16, float32, int8, int4, sign, not 'int2'"):
        Q.encode(x, "int2")


@pytest.mark.parametrize("dtype", Q.CODED_DTYPES)
def test_a_coded_store_is_plain_arrow_and_reads_back_decoded(tmp_path, dtype):
    x = _rows(40, 24, seed=3)
    store = write_store(tmp_path / "s", [f"e{i}" for i in range(40)], x, kind="adam", checkpoint="c",
                        shard_rows=16, dtype=dtype)
    t = pa.ipc.open_file(store / "shards" / "part-00000.arrow").read_all()
    assert t.schema.names[:4] == ["id", "source", "features", "scale"]
    ftype = t.schema.field("features").type
    assert ftype.list_size == Q.stored_width(dtype, 24)
    assert ftype.value_type == (pa.int8() if dtype == "int8" else pa.uint8())
    values = t.column("features").combine_chunks().flatten().to_numpy().reshape(len(t), -1)
    scale = t.column("scale").to_numpy()
    got = S.read_store(store, ("id", "features"))
    np.testing.assert_allclose(got["features"][:16], reference_decode(values, scale, dtype, 24), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got["features"], axis=1), 1.0, atol=1e-5)  # unit rows stay unit
    assert list(got["id"]) == [f"e{i}" for i in range(40)] and S.read_manifest(store).dtype == dtype


def test_a_float_column_under_a_coded_manifest_is_refused(tmp_path):
    x = _rows(4, 8)
    store = write_store(tmp_path / "s", list("abcd"), x, kind="adam", checkpoint="c", dtype="float16")
    man = json.loads((store / "manifest.json").read_text())
    man["dtype"] = "int8"
    man.pop("manifest_sha256")
    man["manifest_sha256"] = S.manifest_digest(man)
    (store / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(S.StoreIntegrityError, match=r"part-00000.arrow: shard has no column\(s\) \['scale'\]"):
        S.read_store(store)
    table = pa.ipc.open_file(store / "shards" / "part-00000.arrow").read_all()
    with pytest.raises(S.StoreIntegrityError, match=r"features column is fixed_size_list<item: halffloat>\[8\], "
                                                     r"not fixed_size_list<int8>\[8\] \(int8\)"):
        S.features_view(table.column("features").combine_chunks(), "f", 8, "int8")


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never join another Ray on this machine
    yield
    ray.shutdown()


@pytest.mark.parametrize("dtype", Q.CODED_DTYPES)
def test_coded_pool_stores_score_as_dense_numpy_over_their_decoded_rows(ray_local, tmp_path, dtype):
    import pyarrow.parquet as pq

    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    n, d, lrs = 300, 40, [3e-5, 1e-5]
    ids = [f"p{i:04d}" for i in range(n)]
    pool = [_rows(n, d, seed=10 + c) for c in range(2)]
    subtasks = ["a", "a", "b"]
    targets = [_rows(3, d, seed=20 + c) for c in range(2)]
    pools, tstores = [], []
    for c in range(2):
        pools.append(str(write_store(tmp_path / f"pool{c}", ids, pool[c], kind="adam", checkpoint=f"c{c}",
                                     shard_rows=128, dtype=dtype, avg_lr=lrs[c])))
        tstores.append(str(write_store(tmp_path / f"t{c}", ["t0", "t1", "t2"], targets[c], kind="sgd",
                                       checkpoint=f"c{c}", subtasks=subtasks, task="t", dtype="float32")))
    run_score(ScoreConfig(pool_stores=pools, tasks=[TaskSpec("t", tstores)], out=str(tmp_path / "sc"),
                          block_rows=50, max_actors=1, actor_num_cpus=0.5))
    w = np.array(lrs) / sum(lrs)
    s = 0
    for c in range(2):
        values, scale = Q.encode(pool[c], dtype)
        dec = reference_decode(values, scale, dtype, d)
        s = s + w[c] * dec @ targets[c].astype(np.float64).T
    want = np.maximum(s[:, :2].mean(1), s[:, 2])
    got = pq.read_table(tmp_path / "sc" / "t" / "scores.parquet").to_pydict()
    assert got["id"] == ids
    np.testing.assert_allclose(got["score"], want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ckpt(tiny_model_dir, tmp_path_factory):
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    return make_lora_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt"), r=4)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    from less_ray.data.demo import generate_pool
    from less_ray.data.io import write_jsonl
    path = tmp_path_factory.mktemp("data") / "pool.jsonl"
    write_jsonl(generate_pool(40, seed=2), path)
    return path


def _sums(store):
    return [e["sha256"] for e in S.read_manifest(store).shards]


def test_recode_of_a_float32_store_is_what_extract_writes_in_that_dtype(ray_local, ckpt, pool_file, tmp_path):
    from less_ray.cli import main
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.recode import RecodeConfig, run_recode
    common = dict(data=str(pool_file), checkpoint=str(ckpt), kind="adam", dims=[32], shard_rows=15,
                  precision="fp32", actor_num_cpus=0.5)
    f32 = run_extract(ExtractConfig(out=str(tmp_path / "f32"), dtype="float32", **common))[32]
    for dtype in ("int8", "sign"):
        direct = run_extract(ExtractConfig(out=str(tmp_path / dtype), dtype=dtype, **common))[32]
        recoded = run_recode(RecodeConfig(store=str(f32), out=str(tmp_path / f"re_{dtype}"), dtype=dtype))
        assert _sums(recoded) == _sums(direct)  # the same shard bytes
        man = S.read_manifest(recoded)
        assert man.dtype == dtype and man.extra["recoded_from"]["dtype"] == "float32"
        assert man.extra["recoded_from"]["manifest_sha256"] == json.loads((f32 / "manifest.json").read_text())[
            "manifest_sha256"]
        assert man.checkpoint_hash == S.read_manifest(direct).checkpoint_hash and man.count == 40
    # a rerun reuses every shard; the CLI recodes a coded store again (int8 -> int4)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "re_int8" / "shards").glob("part-*.arrow")}
    run_recode(RecodeConfig(store=str(f32), out=str(tmp_path / "re_int8"), dtype="int8"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "re_int8" / "shards").glob("part-*.arrow")} == before
    assert main(["recode", "--store", str(tmp_path / "re_int8"), "--dtype", "int4", "--out",
                 str(tmp_path / "re_int4")]) == 0
    x8, x4 = S.read_store(tmp_path / "re_int8")["features"], S.read_store(tmp_path / "re_int4")["features"]
    np.testing.assert_allclose(x4, Q.decode(*Q.encode(x8, "int4"), "int4", 32), rtol=1e-6, atol=1e-7)
    # into a folder made from another source: cleared, then written from this one
    run_recode(RecodeConfig(store=str(tmp_path / "re_int8"), out=str(tmp_path / "re_int8_again"), dtype="sign"))
    run_recode(RecodeConfig(store=str(f32), out=str(tmp_path / "re_int8_again"), dtype="sign"))
    assert _sums(tmp_path / "re_int8_again") == _sums(tmp_path / "sign" / "dim32")
    with pytest.raises(ValueError, match="is float32 already"):
        run_recode(RecodeConfig(store=str(f32), out=str(tmp_path / "x"), dtype="float32"))


def test_a_pipeline_with_a_coded_dtype_codes_the_pool_and_keeps_targets_float16(tmp_path):
    """Coded targets lose most of their agreement (heavy-tailed gradients; docs/results.md §5) and
    are few: the pipeline's extract.dtype compacts the pool only."""
    from less_ray.pipeline import ExtractSection, PipelineConfig, extract_config
    for dtype, want_targets in (("int8", "float16"), ("sign", "float16"), ("float32", "float32")):
        cfg = PipelineConfig(out=str(tmp_path), base_model="m", pool="p.jsonl", targets={"t": "t.jsonl"},
                             extract=ExtractSection(dtype=dtype))
        assert extract_config(cfg, "ck", "p.jsonl", tmp_path / "pool", "adam").dtype == dtype
        assert extract_config(cfg, "ck", "t.jsonl", tmp_path / "t", "sgd").dtype == want_targets

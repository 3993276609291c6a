"""Datastore layout: plain Arrow types, atomic shards, verification, manifest round trip."""
import json

import numpy as np
import pyarrow as pa
import pandas as pd
import pytest

from less_ray import store as S


def _table(n=5, dim=8, dtype="float16", offset=0, targets=False):
    rng = np.random.default_rng(offset)
    f = rng.standard_normal((n, dim)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)  # a normalised store holds unit rows
    ids = [f"id{offset + i}" for i in range(n)]
    kw = {"tasks": ["t"] * n, "subtasks": [f"s{i % 2}" for i in range(n)]} if targets else {}
    return S.features_table(ids, ["src"] * n, f, np.ones(n), np.arange(n) + 1, np.zeros(n), dtype, **kw), f


def _manifest(entries, dim=8):
    return S.StoreManifest(kind="adam", checkpoint="ck", checkpoint_hash="h", model="m",
                           projection=S.Projection("rademacher", 0, dim), normalized=True, dtype="float16",
                           count=sum(e["rows"] for e in entries), shards=entries, versions=S.library_versions())


def test_features_are_a_plain_fixed_size_list_readable_without_ray(tmp_path):
    table, f = _table(targets=True)
    entry = S.write_shard(tmp_path, 0, table)
    raw = pa.ipc.open_file(tmp_path / entry["file"]).read_all()  # a plain Arrow IPC file
    assert raw.schema.field("features").type == pa.list_(pa.float16(), 8)
    assert raw.schema.metadata is None or b"ray" not in b"".join(raw.schema.metadata.keys())
    df = pd.read_feather(tmp_path / entry["file"])
    assert list(df.columns) == ["id", "source", "features", "norm", "n_tokens", "loss", "task", "subtask"]
    np.testing.assert_allclose(np.stack(df["features"]), f, rtol=1e-3, atol=1e-3)


def test_refuses_nan_rows():
    with pytest.raises(ValueError, match="non-finite features for ids \\['a'\\]"):
        S.features_table(["a", "b"], ["s", "s"], np.array([[np.nan, 0], [1, 0]]), [1, 1], [1, 1], [0, 0])


def test_verify_detects_corruption_and_temp_files_are_invisible(tmp_path):
    S.write_shard(tmp_path, 0, _table()[0])
    S.write_shard(tmp_path, 1, _table(offset=5)[0])
    assert S.verified_shard(tmp_path, 0)["rows"] == 5 and S.verified_shard(tmp_path, 2) is None
    (tmp_path / "shards" / ".tmp-part-00002.arrow-dead").write_bytes(b"partial")  # a killed writer
    p1 = tmp_path / "shards" / S.shard_name(1)
    p1.write_bytes(p1.read_bytes()[:-10])
    assert S.verified_shard(tmp_path, 1) is None
    assert S.remove_temp_files(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.arrow")) == ["part-00000.arrow", "part-00001.arrow"]


def test_manifest_round_trip_and_streaming(tmp_path):
    entries = [S.write_shard(tmp_path, i, _table(offset=5 * i)[0]) for i in range(3)]
    S.write_manifest(tmp_path, _manifest(entries))
    man = S.read_manifest(tmp_path)
    assert man.count == 15 and man.projection.dim == 8 and "torch" in man.versions
    blocks = list(S.iter_blocks(tmp_path, ("id", "features"), batch_rows=2))
    assert max(len(b["id"]) for b in blocks) == 2
    whole = S.read_store(tmp_path)
    assert list(whole["id"]) == [f"id{i}" for i in range(15)] and whole["features"].shape == (15, 8)
    assert json.loads((tmp_path / "manifest.json").read_text())["format"] == S.FORMAT
    with pytest.raises(FileNotFoundError, match="not a finished datastore"):
        S.read_manifest(tmp_path / "nowhere")


def test_compatible_names_every_field_that_differs():
    import dataclasses

    from less_ray.store import Projection, StoreManifest, StoreMismatch
    base = StoreManifest(kind="adam", checkpoint="c", checkpoint_hash="h", model="m", projection=Projection("sjlt-s1", 0, 64),
                         normalized=True, dtype="float16", count=1, shards=[], model_hash="abc",
                         input={"chat_format": "less", "max_seq_length": 2048}, extra={"precision": "fp32"})
    base.compatible(dataclasses.replace(base, dtype="int8", kind="sgd", checkpoint_hash="other"))  # not numerics
    variants = {
        "base model": dict(model_hash="def"),
        "projection type": dict(projection=Projection("rademacher", 0, 64)),
        "projection seed": dict(projection=Projection("sjlt-s1", 1, 64)),
        "projection dim": dict(projection=Projection("sjlt-s1", 0, 128)),
        "normalisation": dict(normalized=False),
        "chat format": dict(input={"chat_format": "tulu_stripped", "max_seq_length": 2048}),
        "max_seq_length": dict(input={"chat_format": "less", "max_seq_length": 512}),
        "precision": dict(extra={"precision": "bf16"}),
    }
    for name, change in variants.items():
        with pytest.raises(StoreMismatch, match=f"stores disagree on {name}: a has"):
            base.compatible(dataclasses.replace(base, **change), "a", "b")
    # a store that does not record a numeric (a synthetic one) is not refused for it
    base.compatible(dataclasses.replace(base, input={}, extra={}))
    assert (base.chat_format, base.max_seq_length, base.precision) == ("less", 2048, "fp32")

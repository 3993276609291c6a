"""less_ray/storage.py without a server: local paths stay pathlib (the local behaviour is
unchanged), the write primitives' local semantics, and stages that need a local folder refuse a
URI at once, naming the setting."""
from pathlib import Path

import pytest

from less_ray import storage


def test_local_paths_stay_pathlib_and_uris_do_not(tmp_path):
    assert storage.location(str(tmp_path)) == tmp_path and isinstance(storage.location(tmp_path), Path)
    assert storage.location(f"file://{tmp_path}") == tmp_path
    assert not storage.is_remote(str(tmp_path)) and storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    pytest.importorskip("upath")
    pytest.importorskip("s3fs")
    loc = storage.location("s3://bucket/run/store")
    assert storage.is_remote(loc) and str(loc / "manifest.json") == "s3://bucket/run/store/manifest.json"


def test_local_write_primitives(tmp_path):
    f = tmp_path / "a" / "b.json"
    storage.write_atomic(f, "one")
    storage.write_atomic(f, "two")
    assert f.read_text() == "two" and [p.name for p in f.parent.iterdir()] == ["b.json"]  # no temp left
    tmp = storage.spool_file(tmp_path / "c" / "d.bin")
    assert tmp.parent == tmp_path / "c" and tmp.name.startswith(".tmp-d.bin-")  # beside it: a rename, no copy
    tmp.write_bytes(b"x")
    storage.upload(tmp, tmp_path / "c" / "d.bin")
    assert (tmp_path / "c" / "d.bin").read_bytes() == b"x" and not tmp.exists()
    assert storage.create_exclusive(tmp_path / "lock", b"1") and not storage.create_exclusive(tmp_path / "lock", b"2")
    assert (tmp_path / "lock").read_bytes() == b"1"
    with storage.fetched(tmp_path / "lock") as local:
        assert local == tmp_path / "lock"
    storage.rmtree(tmp_path / "c")
    storage.rmtree(tmp_path / "c")  # gone already: nothing to do
    assert not (tmp_path / "c").exists()


def test_stages_that_write_local_folders_refuse_a_uri_naming_the_setting(tmp_path):
    from less_ray.pipeline import PipelineConfig, run_pipeline
    from less_ray.train import WarmupConfig, run_warmup
    with pytest.raises(ValueError, match=r"pipeline: out: s3://b/run is on object storage.*datastores"):
        run_pipeline(PipelineConfig(out="s3://b/run", base_model=str(tmp_path), pool=str(tmp_path / "p.jsonl"),
                                    targets={"t": str(tmp_path / "t.jsonl")}))
    with pytest.raises(ValueError, match=r"warmup: out: s3://b/w is on object storage"):
        run_warmup(WarmupConfig(out="s3://b/w", base_model=str(tmp_path), pool=str(tmp_path / "p.jsonl")))
    assert not list(tmp_path.iterdir())  # refused before anything was written

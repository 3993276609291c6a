"""Stores, score folders and selections on S3: a real S3-protocol server (moto's, its own process on
a free local port, spoken to over HTTP) stands in for the bucket. Extract to s3, score from s3 into
s3, select there, `less-ray score --config` with s3 URIs: the same bytes of scores and the same
selection as the same run on disk; verify on read, reuse and the lease lock hold there too."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import need

pytestmark = pytest.mark.slow  # Ray Data stages and an S3 server: a minute or two on 2 cores

BUCKET = "less-ray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server as its own process; the standard AWS_* variables point every client (this
    process, Ray's workers, a CLI run) at it, as a user's environment points them at theirs."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
        import upath  # noqa: F401
    except ImportError as e:
        need(False, f"moto[server], s3fs and universal_pathlib (pip install -e '.[dev]'): {e}")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
        time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    yield f"s3://{BUCKET}"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def ray_local(s3_server):
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # after s3_server: workers inherit AWS_*
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(s3_server, ray_local, tiny_model_dir, tmp_path_factory):
    """The same extract (pool: adam, targets: sgd) -> score -> select, once into s3, once on disk."""
    from less_ray.data.demo import write_demo_data
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    from less_ray.selection.select import SelectConfig, run_select
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    root = tmp_path_factory.mktemp("object_store")
    info = write_demo_data(root / "data", n_pool=80, target_family="arithmetic", n_targets=6, seed=0)
    ckpt = make_lora_checkpoint(tiny_model_dir, root / "ckpt", r=4)
    common = dict(checkpoint=str(ckpt), dims=[16], shard_rows=30, precision="fp32", max_actors=1, actor_num_cpus=1)
    out = {}
    for where, base in (("s3", f"{s3_server}/run"), ("disk", str(root / "run"))):
        t = time.time()
        pool = run_extract(ExtractConfig(data=info["pool"]["path"], out=f"{base}/pool", kind="adam", **common))[16]
        tgt = run_extract(ExtractConfig(data=info["targets"]["path"], out=f"{base}/targets", kind="sgd", **common))[16]
        extract_s = time.time() - t
        run_score(ScoreConfig(pool_stores=[str(pool)], tasks=[TaskSpec("arith", [str(tgt)])], out=f"{base}/scores",
                              min_actors=1, max_actors=1, actor_num_cpus=1))
        sel = run_select(SelectConfig(scores=f"{base}/scores", top_p=0.1))
        out[where] = {"base": base, "pool": str(pool), "targets": str(tgt), "select": sel, "extract_s": extract_s}
    out["data"] = info
    out["common"] = common
    return out


def _read(path: str) -> bytes:
    from less_ray import storage
    return storage.location(path).read_bytes()


def _scores(path: str):
    from less_ray import storage
    with storage.fetched(path) as local:
        return pq.read_table(local).to_pydict()


def test_extract_score_select_on_s3_equal_the_run_on_disk(runs):
    from less_ray import storage
    from less_ray.store import read_manifest, read_store
    s3, disk = runs["s3"], runs["disk"]
    assert s3["pool"].startswith("s3://")
    a, b = read_store(s3["pool"], ("id", "features", "loss")), read_store(disk["pool"], ("id", "features", "loss"))
    assert list(a["id"]) == list(b["id"]) and np.array_equal(a["features"], b["features"])
    ma, mb = read_manifest(s3["pool"]), read_manifest(disk["pool"])
    assert [e["sha256"] for e in ma.shards] == [e["sha256"] for e in mb.shards]  # the same shard bytes
    sa = _scores(f"{s3['base']}/scores/arith/scores.parquet")
    sb = _scores(f"{disk['base']}/scores/arith/scores.parquet")
    assert sa == sb and len(sa["id"]) == 80
    ka, kb = s3["select"]["arith"], disk["select"]["arith"]
    assert ka["file"].startswith("s3://") and ka["selected"] == kb["selected"] == 8
    assert _read(ka["file"]) == _read(kb["file"])  # the same records, scores and order
    from less_ray.selection.select import read_selection_manifest
    man = read_selection_manifest(f"{s3['base']}/scores/arith")  # verifies the selection's sha256 on s3
    assert man["path"] == ka["file"] and man["k"] == 8
    summary = json.loads(_read(f"{s3['base']}/scores/score_summary.json"))
    assert summary["tasks"]["arith"]["scores"] == f"{s3['base']}/scores/arith/scores.parquet"
    # nothing left behind: no spool temp files in the bucket, no parts folder
    names = [str(p) for p in storage.location(s3["base"]).rglob("*")]
    assert not [n for n in names if ".tmp" in n or "/scores/_parts" in n], names


def test_score_config_file_with_s3_uris_gives_the_same_scores(runs, tmp_path):
    import yaml

    from less_ray.cli import main
    s3 = runs["s3"]
    cfg = {"pool_stores": [s3["pool"]], "tasks": [{"name": "arith", "target_stores": [s3["targets"]]}],
           "out": f"{s3['base']}/scores_cli", "min_actors": 1, "max_actors": 1, "actor_num_cpus": 1}
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["score", "--config", str(path)]) == 0
    assert _scores(f"{s3['base']}/scores_cli/arith/scores.parquet") == \
        _scores(f"{runs['disk']['base']}/scores/arith/scores.parquet")
    saved = _read(f"{s3['base']}/scores_cli/score.config.yaml").decode()
    assert s3["pool"] in saved  # the resolved config replays the run: the URIs are kept as given


def test_an_s3_rerun_reuses_every_shard_and_a_damaged_one_is_refused(runs, less_ray_log):
    from less_ray import storage
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    from less_ray.store import StoreIntegrityError, read_manifest
    s3 = runs["s3"]
    pool = storage.location(s3["pool"])
    before = {e["file"]: (pool / e["file"]).read_bytes() for e in read_manifest(pool).shards}
    t = time.time()
    run_extract(ExtractConfig(data=runs["data"]["pool"]["path"], out=f"{s3['base']}/pool", kind="adam",
                              **runs["common"]))
    assert time.time() - t < s3["extract_s"] / 2  # nothing recomputed: every shard verified and kept
    assert {e["file"]: (pool / e["file"]).read_bytes() for e in read_manifest(pool).shards} == before
    victim = pool / read_manifest(pool).shards[1]["file"]
    raw = bytearray(before[read_manifest(pool).shards[1]["file"]])
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(StoreIntegrityError, match=r"s3://.*part-00001\.arrow.*damaged"):
        run_score(ScoreConfig(pool_stores=[s3["pool"]], tasks=[TaskSpec("arith", [s3["targets"]])],
                              out=f"{s3['base']}/scores_damaged", min_actors=1, max_actors=1, actor_num_cpus=1))
    victim.write_bytes(before[read_manifest(pool).shards[1]["file"]])


def test_the_s3_lock_is_one_writer_and_a_dead_holders_lease_is_recovered(s3_server, monkeypatch, less_ray_log):
    from less_ray import run_lock, storage
    from less_ray.run_lock import LOCK_FILE, RunLockBusy
    folder = f"{s3_server}/locked"
    hold = ("import sys, time\nfrom less_ray.run_lock import acquire\nacquire(sys.argv[1], 'extract')\n"
            "print('held', flush=True)\ntime.sleep(300)\n")
    p = subprocess.Popen([sys.executable, "-c", hold, folder], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunLockBusy, match=rf"`extract` \(pid {p.pid} on host .*holds {folder}/{LOCK_FILE}"):
            run_lock.acquire(folder, "score")
    finally:
        p.kill()
        p.wait()
    # the holder died without releasing: its lease runs out, and the next writer takes the lock
    monkeypatch.setenv("LESS_RAY_LOCK_LEASE_S", "2")
    with pytest.raises(RunLockBusy):
        run_lock.acquire(folder, "score")  # not yet: renewed less than a lease ago
    time.sleep(3)
    assert run_lock.acquire(folder, "score")
    assert f"recovered a stale lock of `extract` (pid {p.pid}" in less_ray_log.text
    held = json.loads(storage.location(f"{folder}/{LOCK_FILE}").read_text())
    assert held["pid"] == os.getpid() and held["stage"] == "score"
    time.sleep(1.5)  # renewed while held (every lease / 4)
    assert json.loads(storage.location(f"{folder}/{LOCK_FILE}").read_text())["renewed"] > held["renewed"]
    run_lock.release(folder)
    assert not storage.location(f"{folder}/{LOCK_FILE}").exists()
    # the conditional create itself: of two creators exactly one wins
    assert storage.create_exclusive(f"{folder}/x", b"1") and not storage.create_exclusive(f"{folder}/x", b"2")
    assert storage.location(f"{folder}/x").read_bytes() == b"1"


def test_append_on_s3_adds_only_new_shards_and_equals_a_fresh_store_on_disk(runs, tmp_path):
    from less_ray import storage
    from less_ray.data.io import read_records, write_jsonl
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.store import read_manifest, read_store
    recs = read_records(runs["data"]["pool"]["path"]).records
    write_jsonl(recs[:60], tmp_path / "a.jsonl")  # at a shard boundary (shard_rows 30): the same shards
    write_jsonl(recs[60:], tmp_path / "b.jsonl")
    kw = dict(kind="adam", **runs["common"])
    base = runs["s3"]["base"]
    grown = run_extract(ExtractConfig(data=str(tmp_path / "a.jsonl"), out=f"{base}/grown", **kw))[16]
    shards = storage.location(grown) / "shards"
    before = {p.name: p.read_bytes() for p in shards.glob("part-*.arrow")}
    run_extract(ExtractConfig(data=str(tmp_path / "b.jsonl"), out=f"{base}/grown", append=True, **kw))
    after = {p.name: p.read_bytes() for p in shards.glob("part-*.arrow")}
    assert all(after[n] == b for n, b in before.items()) and len(after) > len(before)  # only new shards
    man = read_manifest(grown)
    assert man.count == 80 and [x["path"] for x in man.input["appended"]] == [str(tmp_path / "b.jsonl")]
    a, b = read_store(grown, ("id", "features")), read_store(runs["disk"]["pool"], ("id", "features"))
    assert list(a["id"]) == list(b["id"]) and np.array_equal(a["features"], b["features"])


def test_recode_on_s3_writes_the_bytes_it_writes_on_disk(runs, tmp_path):
    """A store on s3 recoded into s3 (int8 codes) equals the same recode of the disk store."""
    from less_ray.recode import RecodeConfig, run_recode
    from less_ray.store import read_manifest, read_store
    s3 = run_recode(RecodeConfig(store=runs["s3"]["pool"], out=f"{runs['s3']['base']}/pool_int8", dtype="int8"))
    disk = run_recode(RecodeConfig(store=runs["disk"]["pool"], out=str(tmp_path / "pool_int8"), dtype="int8"))
    assert str(s3).startswith("s3://")
    assert [e["sha256"] for e in read_manifest(s3).shards] == [e["sha256"] for e in read_manifest(disk).shards]
    np.testing.assert_array_equal(read_store(s3)["features"], read_store(disk)["features"])

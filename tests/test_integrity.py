"""Verify on read: damaged shards, edited manifests, paths out of a store, empty and fully
skipped stores are refused with a message naming the file (and row) and the repair."""
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from less_ray import store as S
from less_ray.data.io import write_jsonl
from less_ray.data.schema import make_record
from less_ray.scoring.job import ScoreConfig, TaskSpec, build_queries, run_score
from less_ray.scoring.stores import StoreMismatch, match_stores
from less_ray.testing.synthetic_store import write_store

N, D, SHARD = 300, 16, 100


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _unit(rng, n, d=D):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def world(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"ex{i:04d}" for i in range(N)]
    pools = [str(write_store(tmp_path / f"pool{c}", ids, _unit(rng, N), kind="adam", checkpoint=f"c{c}",
                             shard_rows=SHARD, avg_lr=1e-5 * (c + 1), dtype="float16")) for c in range(2)]
    subtasks = ["a", "a", "b", "b", "b"]
    targets = [str(write_store(tmp_path / f"t{c}", [f"t{j}" for j in range(5)], _unit(rng, 5), kind="sgd",
                               checkpoint=f"c{c}", subtasks=subtasks, task="t")) for c in range(2)]
    return tmp_path, ids, pools, targets


def _cfg(world, out="out", **kw):
    root, _, pools, targets = world
    return ScoreConfig(pool_stores=pools, tasks=[TaskSpec("t", targets)], out=str(root / out), block_rows=64,
                       min_actors=1, max_actors=1, actor_num_cpus=0.5, **kw)


def _rewrite_vouched(store, index, table):
    """Replace shard `index` with `table` and re-vouch for it (sidecar and manifest checksums):
    bytes whose checksums verify, so only the value checks can catch them."""
    man = S.read_manifest(store)
    path = S.shard_path(store, man.shards[index])
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    man.shards[index]["sha256"] = S.sha256_file(path)
    S.write_manifest(store, man)
    return path


def test_flipped_byte_in_a_pool_shard_is_refused_naming_it_cleanly(ray_local, world, capsys):
    root, _, pools, _ = world
    shard = root / "pool1" / "shards" / "part-00002.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40  # one byte inside the features buffer
    shard.write_bytes(bytes(data))
    with pytest.raises(S.StoreIntegrityError) as e:
        run_score(_cfg(world))
    msg = str(e.value)
    assert f"{shard}: shard 2 is damaged: its sha256" in msg and "less-ray extract" in msg
    assert "UserCodeException" not in msg and "Traceback" not in msg and type(e.value) is S.StoreIntegrityError
    assert not (root / "out" / "t" / "scores.parquet").exists() and not (root / "out" / "_parts").exists()
    # the command line prints it as one error line, exit 1
    import logging

    from less_ray.cli import main
    from less_ray.config import save_config
    save_config(_cfg(world, "cli"), root / "score.yaml")
    log = logging.getLogger("less_ray")
    handlers, level = log.handlers[:], log.level
    try:
        assert main(["score", "--config", str(root / "score.yaml")]) == 1
    finally:  # the CLI's handler writes to this test's captured stderr: not beyond it
        log.handlers[:] = handlers
        log.setLevel(level)
    err = capsys.readouterr().err
    assert f"less-ray score: error: {shard}: shard 2 is damaged" in err and "Traceback" not in err


def test_nan_and_non_unit_rows_with_valid_checksums_are_refused_naming_shard_and_row(ray_local, world):
    root, ids, pools, _ = world
    table = pa.ipc.open_file(root / "pool0" / "shards" / "part-00001.arrow").read_all()
    f = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    keep = f[17, 3]
    f[17, 3] = np.nan
    flat = pa.array(f.astype(np.float16).reshape(-1), pa.float16())
    bad = table.set_column(2, "features", pa.FixedSizeListArray.from_arrays(flat, D))
    path = _rewrite_vouched(pools[0], 1, bad)
    with pytest.raises(S.StoreIntegrityError) as e:
        run_score(_cfg(world))
    assert str(e.value).startswith(f"{path}: row 17 (id '{ids[117]}') holds non-finite values")
    # the same store read by a selector's reader (store.iter_blocks)
    with pytest.raises(S.StoreIntegrityError, match=r"part-00001.arrow: row 17 \(id 'ex0117'\) holds non-finite"):
        S.read_store(pools[0])
    # a row of norm 2 in a normalised store
    f[17, 3] = keep
    f[40] *= 2
    flat = pa.array(f.astype(np.float16).reshape(-1), pa.float16())
    _rewrite_vouched(pools[0], 1, table.set_column(2, "features", pa.FixedSizeListArray.from_arrays(flat, D)))
    with pytest.raises(S.StoreIntegrityError, match=r"part-00001.arrow: row 40 \(id 'ex0140'\) holds squared norm 4"):
        run_score(_cfg(world))


def test_scores_outside_the_cosine_range_are_refused():
    from pathlib import Path

    import pyarrow as pa
    from less_ray.scoring.job import ShardScorer
    scorer = ShardScorer.__new__(ShardScorer)
    scorer.normalized, scorer.files = [True], [[Path("s0.parquet"), Path("s1.parquet")]]
    ids = pa.array(["a", "b", "c"])
    ScoreOk = np.array([[0.5, -1.0], [1.0, 0.0], [0.0, 0.2]], np.float32)
    scorer._check_scores(ScoreOk, 1, ids)
    with pytest.raises(S.StoreIntegrityError, match=r"shard 1 \(s1.parquet\) row 2 \(id 'c'\) scores 6.86, outside \[-1, 1\]"):
        scorer._check_scores(np.array([[0.5, 0], [0, 0], [6.86, 0.1]], np.float32), 1, ids)
    with pytest.raises(S.StoreIntegrityError, match=r"row 0 \(id 'a'\) scores nan"):
        scorer._check_scores(np.array([[np.nan, 0], [0, 0], [0, 0]], np.float32), 1, ids)
    scorer.normalized = [False]  # raw gradients: any finite score
    scorer._check_scores(np.array([[6.86, 0], [0, 0], [0, 0]], np.float32), 1, ids)


def test_an_edited_manifest_is_refused(world):
    root, _, pools, targets = world
    path = root / "pool1" / "manifest.json"
    data = json.loads(path.read_text())
    data["projection"]["seed"] = 5  # every other field intact
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(S.StoreIntegrityError, match=r"pool1/manifest.json: the manifest's content does not match "
                                                    r"its manifest_sha256 \(edited or damaged\); rerun"):
        match_stores(pools, {"t": targets})
    del data["manifest_sha256"]
    path.write_text(json.dumps(data))
    with pytest.raises(S.StoreIntegrityError, match="carries no manifest_sha256"):
        S.read_manifest(root / "pool1")
    path.write_text("{\"format\": ")  # truncated
    with pytest.raises(S.StoreIntegrityError, match="damaged manifest"):
        S.read_manifest(root / "pool1")


@pytest.mark.parametrize("file", ["../x.arrow", "shards/../../x.arrow", "/etc/passwd", "shards/a/b.arrow",
                                  "other/part-00000.arrow", "shards/part-00000.parquet"])
def test_a_manifest_path_outside_its_store_is_refused(world, file):
    root, _, pools, _ = world
    (root / "x.arrow").write_bytes((root / "pool0" / "shards" / "part-00000.arrow").read_bytes())
    man = S.read_manifest(pools[0])
    man.shards[0]["file"] = file  # re-vouched: the checksum does not make it acceptable
    S.write_manifest(pools[0], man)
    with pytest.raises(S.StoreIntegrityError, match=f"shard file '{file}' is not a file under shards/ of its store: refused"):
        S.read_manifest(pools[0])


def test_a_shard_linked_out_of_its_store_is_refused(world):
    root, _, pools, _ = world
    shard = root / "pool0" / "shards" / "part-00000.arrow"
    shutil.move(shard, root / "elsewhere.arrow")
    os.symlink(root / "elsewhere.arrow", shard)
    with pytest.raises(S.StoreIntegrityError, match="'shards/part-00000.arrow' leads outside its store"):
        S.read_manifest(pools[0])


def test_empty_pool_and_fully_skipped_targets_are_clear_errors(world, tmp_path):
    root, ids, pools, targets = world
    with pytest.raises(ValueError, match=r"refusing to write a datastore without shards: the input pool.jsonl "
                                         r"holds no records"):
        S.write_manifest(tmp_path / "empty", S.StoreManifest(
            kind="adam", checkpoint="c0", checkpoint_hash="h", model="tiny", projection=S.Projection("rademacher", 0, D),
            normalized=True, dtype="float16", count=0, shards=[], input={"path": "pool.jsonl"}))
    assert not (tmp_path / "empty").exists()

    def skipped_store(path, kind, n_skipped):  # what extract writes when every example is skipped
        table = S.features_table([], [], np.zeros((0, D), np.float32), [], [], [], "float16",
                                 **({"tasks": [], "subtasks": []} if kind == "sgd" else {}))
        entry = S.write_shard(path, 0, table)
        S.write_manifest(path, S.StoreManifest(
            kind=kind, checkpoint="c0", checkpoint_hash="hash-c0", model="tiny",
            projection=S.Projection("rademacher", 0, D), normalized=True, dtype="float16", count=0, shards=[entry],
            skipped={"count": n_skipped, "file": "skipped.jsonl"}))
        return str(path)
    gone = skipped_store(tmp_path / "t_gone", "sgd", 4)
    with pytest.raises(StoreMismatch, match=r"task t: target store .*t_gone holds no examples \(all 4 skipped by "
                                            r"extract, reasons in its skipped.jsonl\): nothing to score against"):
        match_stores(pools, {"t": [gone, targets[1]]})
    empty_pool = skipped_store(tmp_path / "p_gone", "adam", 7)
    with pytest.raises(StoreMismatch, match=r"p_gone: the pool store holds no examples \(all 7 skipped"):
        match_stores([empty_pool], {})
    from less_ray.core.influence import TaskQuery
    with pytest.raises(ValueError, match="task t: no target features"):  # was an IndexError
        TaskQuery.build("t", [np.zeros((0, D))], [], [1.0])


def test_a_target_subtask_whose_examples_were_all_skipped_is_named(world, tmp_path):
    root, _, pools, targets = world
    rng = np.random.default_rng(9)
    subtasks = ["a", "a", "b", "b", "b", "z", "z"]
    recs = [make_record("tgt", [{"role": "user", "content": f"q{j}"}, {"role": "assistant", "content": "a"}],
                        id=f"t{j}", task="t", subtask=s) for j, s in enumerate(subtasks)]
    write_jsonl(recs, tmp_path / "targets.jsonl")
    digest = S.sha256_file(tmp_path / "targets.jsonl")
    stores = []
    for c in range(2):  # z's two examples were skipped (e.g. truncated away)
        p = write_store(tmp_path / f"tz{c}", [f"t{j}" for j in range(5)], _unit(rng, 5), kind="sgd",
                        checkpoint=f"c{c}", subtasks=subtasks[:5], task="t")
        man = S.read_manifest(p)
        man.input = {"path": str(tmp_path / "targets.jsonl"), "sha256": digest}
        man.skipped = {"count": 2, "file": "skipped.jsonl"}
        S.write_manifest(p, man)
        (p / "skipped.jsonl").write_text("".join(json.dumps({"id": f"t{j}", "reason": "truncated"}) + "\n"
                                                 for j in (5, 6)))
        stores.append(str(p))
    ck = match_stores(pools, {"t": stores})
    with pytest.raises(StoreMismatch, match=r"task t: subtask\(s\) \['z'\] have no target left: extract skipped all "
                                            r"their examples \(z: 2; reasons in .*tz0/skipped.jsonl\); raise"):
        build_queries(ck, [TaskSpec("t", stores)], [0.5, 0.5])
    (q,) = build_queries(ck, [TaskSpec("t", stores)], [0.5, 0.5], allow_missing_subtasks=True)
    assert q.subtasks == ["a", "b"]


def test_a_duplicate_id_in_one_pool_store_only_is_a_clear_error(ray_local, world):
    root, ids, pools, targets = world
    dup = list(ids)
    dup[150] = dup[149]
    rng = np.random.default_rng(4)
    cfg = _cfg(world)
    cfg.pool_stores = [pools[0], str(write_store(root / "dup", dup, _unit(rng, N), kind="adam", checkpoint="c1",
                                                 shard_rows=SHARD, avg_lr=2e-5, dtype="float16"))]
    with pytest.raises(StoreMismatch) as e:
        run_score(cfg)
    msg = str(e.value)
    assert "shard 1" in msg and "row 50" in msg and "'ex0149' where" in msg and "'ex0150'" in msg
    assert "not aligned" in msg and "an id stored twice" in msg and "UserCodeException" not in msg


def test_verify_off_skips_the_checksum(ray_local, world):
    """verify=False (the benchmark's side-by-side) reads a shard whose bytes changed after writing."""
    root, _, pools, _ = world
    man = S.read_manifest(pools[0])
    man.shards[0]["sha256"] = "0" * 64
    S.write_manifest(pools[0], man)
    with pytest.raises(S.StoreIntegrityError, match="shard 0 is damaged"):
        run_score(_cfg(world))
    assert run_score(_cfg(world, verify=False))["pool_rows"] == N

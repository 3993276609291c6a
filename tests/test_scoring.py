"""`score` + `select` on Ray Data against a dense numpy computation of LESS's formula."""
import csv
import json

import numpy as np
import pytest

from less_ray.data.io import write_jsonl
from less_ray.data.schema import make_record
from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
from less_ray.selection.select import SelectConfig, run_select
from less_ray.scoring.stores import StoreMismatch, match_stores
from less_ray.testing.synthetic_store import write_store

LRS = [2e-5, 1.2e-5, 4e-6]
N, D = 1200, 16
TASKS = {"alpha": ["x"] * 2 + ["y"] * 5 + ["z"] * 1, "beta": ["only"] * 3}


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never join another Ray on this machine
    yield
    ray.shutdown()


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """3 checkpoints; a pool of N (with exact score ties planted) and two tasks of targets."""
    root = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(7)
    ids = [f"ex{i:05d}" for i in rng.permutation(N)]
    sources = [f"src{i % 4}" for i in range(N)]
    pool = [_unit(rng, N, D) for _ in LRS]
    for g in pool:  # duplicates of one example: equal scores, so ties at any cut are broken by id
        g[10:20] = g[5]
    targets = {t: [_unit(rng, len(st), D) for _ in LRS] for t, st in TASKS.items()}
    records = [make_record(s, [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a"}], id=i)
               for i, s in zip(ids, sources)]
    pool_file = root / "pool.jsonl"
    write_jsonl(records, pool_file)
    pool_stores, target_stores = [], {t: [] for t in TASKS}
    for c, lr in enumerate(LRS):
        pool_stores.append(str(write_store(root / f"pool_c{c}", ids, pool[c], kind="adam", checkpoint=f"c{c}",
                                           sources=sources, shard_rows=250, avg_lr=lr, input_path=str(pool_file))))
        for t, st in TASKS.items():
            target_stores[t].append(str(write_store(root / f"{t}_c{c}", [f"{t}{j}" for j in range(len(st))],
                                                    targets[t][c], kind="sgd", checkpoint=f"c{c}",
                                                    subtasks=st, task=t)))
    return {"root": root, "ids": ids, "sources": sources, "pool": pool, "targets": targets,
            "pool_stores": pool_stores, "target_stores": target_stores, "pool_file": pool_file}


def dense(world, task):
    w = np.array(LRS) / sum(LRS)
    s = sum(wc * g.astype(np.float64) @ v.astype(np.float64).T
            for wc, g, v in zip(w, world["pool"], world["targets"][task]))
    names = list(dict.fromkeys(TASKS[task]))
    cols = np.stack([s[:, [i for i, x in enumerate(TASKS[task]) if x == n]].mean(1) for n in names], 1)
    return cols.max(1), cols, names


def _cfg(world, out, **kw):
    tasks = [TaskSpec(t, list(reversed(world["target_stores"][t]))) for t in TASKS]  # matched by checkpoint
    return ScoreConfig(pool_stores=world["pool_stores"], tasks=tasks, out=str(out), block_rows=100,
                       min_actors=1, max_actors=2, actor_num_cpus=0.5, **kw)


def test_scores_and_selection_equal_dense_numpy(ray_local, world, tmp_path):
    import pyarrow.parquet as pq
    summary = run_score(_cfg(world, tmp_path))
    assert summary["pool_rows"] == N and np.allclose(summary["weights"], np.array(LRS) / sum(LRS))
    result = run_select(SelectConfig(scores=str(tmp_path), top_p=0.05))
    for task in TASKS:
        want, cols, names = dense(world, task)
        table = pq.read_table(tmp_path / task / "scores.parquet").to_pydict()
        assert table["id"] == world["ids"] and table["source"] == world["sources"]
        np.testing.assert_allclose(table["score"], want, rtol=1e-5, atol=1e-6)
        best = cols[np.arange(N), [names.index(b) for b in table["best_subtask"]]]
        np.testing.assert_allclose(best, want, rtol=1e-5, atol=1e-6)  # the named subtask attains the max
        # exact top-k set and order: score desc, ties by id asc, on the dense scores
        k = int(0.05 * N)
        order = sorted(range(N), key=lambda i: (-round(want[i], 5), world["ids"][i]))
        sel = [json.loads(x) for x in (tmp_path / task / "top_p0.05.jsonl").read_text().splitlines()]
        assert len(sel) == k == result[task]["selected"]
        assert {r["id"] for r in sel} == {world["ids"][i] for i in order[:k]}
        assert [r["score"] for r in sel] == sorted((r["score"] for r in sel), reverse=True)
        rows = list(csv.DictReader(open(tmp_path / task / "sorted.csv")))
        assert len(rows) == N and [r["id"] for r in rows[:k]] == [r["id"] for r in sel]
        got = [(float(r["score"]), r["id"]) for r in rows]
        assert got == sorted(got, key=lambda t: (-t[0], t[1]))
    assert (tmp_path / "score.config.yaml").exists() and len(list((tmp_path / "manifests").iterdir())) == 9


def test_a_rerun_killed_half_way_leaves_no_finished_looking_folder(ray_local, world, tmp_path, monkeypatch):
    """The summary is removed before a rerun starts and written last, so select (and the pipeline)
    never take a folder with some tasks' scores rewritten and others not for a finished one."""
    from less_ray.scoring import job
    run_score(_cfg(world, tmp_path))
    assert (tmp_path / "score_summary.json").exists()

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(job, "check_unique_pool_ids", killed)  # after the actors, before any output
    with pytest.raises(KeyboardInterrupt):
        run_score(_cfg(world, tmp_path))
    assert not (tmp_path / "score_summary.json").exists()
    with pytest.raises(FileNotFoundError):
        run_select(SelectConfig(scores=str(tmp_path), top_p=0.05))


def test_compressed_pool_shards_score_the_same(ray_local, world, tmp_path):
    """A pool store whose shards were rewritten as zstd-compressed record batches of 37 rows (other
    batch boundaries than its sibling stores') is read through pyarrow the same: same scores as
    dense numpy."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from less_ray.scoring.stores import shard_files
    cfg = _cfg(world, tmp_path / "out")
    zstd = tmp_path / "pool_c1"
    shutil.copytree(cfg.pool_stores[1], zstd)
    from less_ray.artifact import sha256_file
    from less_ray.store import read_manifest, write_manifest
    man = read_manifest(zstd)
    for f, entry in zip(shard_files(str(zstd)), man.shards):
        table = pa.ipc.open_file(f).read_all()
        with pa.ipc.new_file(f, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
            w.write_table(table, max_chunksize=37)
        entry["sha256"] = sha256_file(f)  # a rewrite the manifest vouches for
    write_manifest(zstd, man)
    cfg.pool_stores[1] = str(zstd)
    run_score(cfg)
    for task in TASKS:
        table = pq.read_table(tmp_path / "out" / task / "scores.parquet").to_pydict()
        assert table["id"] == world["ids"]
        np.testing.assert_allclose(table["score"], dense(world, task)[0], rtol=1e-5, atol=1e-6)


def test_ties_are_broken_by_id(ray_local, world, tmp_path):
    run_score(_cfg(world, tmp_path))
    sc, _, _ = dense(world, "beta")
    dup_ids = sorted(world["ids"][i] for i in [5] + list(range(10, 20)))  # 11 equal scores
    rank = int((sc > sc[5] + 1e-6).sum())
    run_select(SelectConfig(scores=str(tmp_path), tasks=["beta"], top_n=rank + 3, sorted_csv=False))
    sel = [json.loads(x)["id"] for x in (tmp_path / "beta" / f"top_n{rank + 3}.jsonl").read_text().splitlines()]
    assert sel[rank:] == dup_ids[:3]


@pytest.mark.parametrize("change, message", [
    ({"model": "other"}, "base model"),
    ({"seed": 1}, "projection seed"),
    ({"proj_type": "identity"}, "projection type"),
    ({"normalized": False}, "normalisation"),
])
def test_mismatched_stores_are_refused(world, tmp_path, change, message):
    rng = np.random.default_rng(0)
    bad = write_store(tmp_path / "bad", world["ids"], _unit(rng, N, D), kind="adam", checkpoint="c9",
                      shard_rows=250, avg_lr=1e-5, **change)
    cfg = _cfg(world, tmp_path / "out")
    cfg.pool_stores = cfg.pool_stores[:2] + [str(bad)]
    with pytest.raises(StoreMismatch, match=message):
        run_score(cfg)


def _restamp(store, edit) -> None:
    """Edit a store's manifest and give it a valid checksum again (a store written that way)."""
    from less_ray.store import manifest_digest
    path = store / "manifest.json"
    man = json.loads(path.read_text())
    man.pop("manifest_sha256")
    edit(man)
    man["manifest_sha256"] = manifest_digest(man)
    path.write_text(json.dumps(man))


@pytest.mark.parametrize("field, key, a, b", [
    ("chat format", ("input", "chat_format"), "less", "tulu_stripped"),
    ("max_seq_length", ("input", "max_seq_length"), 512, 2048),
    ("precision", ("extra", "precision"), "bf16", "fp32"),
])
def test_a_pool_and_targets_computed_otherwise_are_refused_naming_the_field(tmp_path, field, key, a, b):
    """Features of other tokens (chat format, truncation) or numerics (precision) are not comparable."""
    rng = np.random.default_rng(1)
    pool = write_store(tmp_path / "pool", [f"p{i}" for i in range(8)], _unit(rng, 8, D), kind="adam", checkpoint="c0")
    tgt = write_store(tmp_path / "t", ["t0", "t1"], _unit(rng, 2, D), kind="sgd", checkpoint="c0",
                      subtasks=["s", "s"], task="t")
    section, name = key
    _restamp(pool, lambda m: m[section].update({name: a}))
    _restamp(tgt, lambda m: m[section].update({name: a}))
    assert match_stores([str(pool)], {"t": [str(tgt)]})  # equal: admitted
    _restamp(tgt, lambda m: m[section].update({name: b}))
    with pytest.raises(StoreMismatch, match=f"stores disagree on {field}: {pool} has {a!r}, {tgt} has {b!r}"):
        match_stores([str(pool)], {"t": [str(tgt)]})


def test_store_kinds_and_repeated_checkpoints_are_refused(world, tmp_path):
    pools, targets = world["pool_stores"], world["target_stores"]
    task = next(iter(TASKS))
    assert len(match_stores(pools, targets)) == len(LRS)
    with pytest.raises(StoreMismatch, match="pool store has kind 'sgd'"):
        match_stores([targets[task][0]] + pools[1:], targets)
    with pytest.raises(StoreMismatch, match=f"target store of {task} has kind 'adam'"):
        match_stores(pools, {**targets, task: [pools[0]] + targets[task][1:]})
    rng = np.random.default_rng(1)  # a second pool store of checkpoint c0 (another folder)
    again = write_store(tmp_path / "again", world["ids"], _unit(rng, N, D), kind="adam", checkpoint="c0",
                        shard_rows=250)
    with pytest.raises(StoreMismatch, match=r"\(pool store\) come from the same checkpoint"):
        match_stores(pools + [str(again)], targets)


def test_wrong_dim_checkpoint_and_duplicates_are_refused(ray_local, world, tmp_path):
    rng = np.random.default_rng(0)
    cfg = _cfg(world, tmp_path / "o")
    cfg.pool_stores = [str(write_store(tmp_path / "d", world["ids"], _unit(rng, N, 8), kind="adam",
                                       checkpoint="c0", shard_rows=250))] + cfg.pool_stores[1:]
    with pytest.raises(StoreMismatch, match="projection dim"):
        run_score(cfg)
    cfg = _cfg(world, tmp_path / "o")
    cfg.tasks[0].target_stores = cfg.tasks[0].target_stores[:2]  # a checkpoint without targets
    with pytest.raises(StoreMismatch, match="no target store for the checkpoint"):
        run_score(cfg)
    dup_ids = list(world["ids"])
    dup_ids[700] = dup_ids[3]  # the same id in two shards
    cfg = _cfg(world, tmp_path / "o")
    cfg.pool_stores = [str(write_store(tmp_path / f"dup{c}", dup_ids, world["pool"][c], kind="adam",
                                       checkpoint=f"c{c}", shard_rows=250, avg_lr=LRS[c])) for c in range(3)]
    with pytest.raises(StoreMismatch, match=f"stored more than once: \\['{dup_ids[3]}'\\]"):
        run_score(cfg)


def test_report_is_one_self_contained_page(ray_local, world, tmp_path):
    import re
    from less_ray.selection.report import ReportConfig, run_report
    run_score(_cfg(world, tmp_path))
    page = run_report(ReportConfig(scores=str(tmp_path), top_p=0.05, examples=3)).read_text()
    assert page.count("<h2>Task: ") == len(TASKS) and "src=\"http" not in page
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) >= 5  # source shares + histogram per task, subtask wins for the task with several
    import base64
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    top = json.loads((tmp_path / "score_summary.json").read_text())
    assert top["pool_rows"] == N
    # the table counts match the data: selected per source sums to k
    k = int(0.05 * N)
    sel_counts = [int(x) for x in re.findall(r"<tr><td>src\d</td><td class='num'>\d+</td><td class='num'>[\d.]+%</td>"
                                             r"<td class='num'>\d+</td><td class='num'>[\d.]+%</td><td class='num'>(\d+)</td>", page)]
    assert sum(sel_counts[:4]) == k


def test_round_robin_order_takes_turns_over_the_stored_subtask_scores(ray_local, world, tmp_path):
    import pyarrow.parquet as pq

    from round_robin_reference import rds_plus_picks
    run_score(_cfg(world, tmp_path, subtask_scores=True))
    result = run_select(SelectConfig(scores=str(tmp_path), top_p=0.05, order="round_robin"))
    k = int(0.05 * N)
    for task in TASKS:
        _, cols, names = dense(world, task)
        sub = pq.read_table(tmp_path / task / "subtask_scores.parquet").to_pydict()
        assert list(sub) == ["id", *names] and sub["id"] == world["ids"]
        np.testing.assert_allclose(np.stack([sub[n] for n in names], 1), cols, rtol=1e-5, atol=1e-6)
        want = [world["ids"][i] for i in rds_plus_picks([np.asarray(sub[n]) for n in names], k)]
        sel = [json.loads(x)["id"] for x in (tmp_path / task / "top_p0.05.round_robin.jsonl").read_text().splitlines()]
        assert sel == want and result[task]["order"] == "round_robin"
        assert result[task]["round_robin"] == {"subtasks": names, "exact_positions": N}
        man = json.loads((tmp_path / task / "selection.json").read_text())
        assert man["file"] == "top_p0.05.round_robin.jsonl" and man["order"] == "round_robin"
        rows = [r["id"] for r in csv.DictReader(open(tmp_path / task / "sorted.round_robin.csv"))]
        assert len(rows) == N and rows[:k] == want
    # alpha's 3 subtasks share the budget by turns; the max order gives its top subtask more
    top = {r["id"] for r in map(json.loads, (tmp_path / "alpha" / "top_p0.05.round_robin.jsonl").open())}
    run_select(SelectConfig(scores=str(tmp_path), top_p=0.05))
    assert (tmp_path / "alpha" / "top_p0.05.jsonl").exists() and top != {
        r["id"] for r in map(json.loads, (tmp_path / "alpha" / "top_p0.05.jsonl").open())}
    # rescored without them: no stale subtask scores stay behind, and round_robin says what to do
    run_score(_cfg(world, tmp_path))
    assert not (tmp_path / "alpha" / "subtask_scores.parquet").exists()
    with pytest.raises(FileNotFoundError, match="subtask_scores: true"):
        run_select(SelectConfig(scores=str(tmp_path), top_p=0.05, order="round_robin"))

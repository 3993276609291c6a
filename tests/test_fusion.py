"""fusion: weighted rank / z-score fusion of finished score folders, against brute-force references."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from less_ray.data.io import write_jsonl
from less_ray.data.schema import make_record
from less_ray.selection.folder import ScoreFolderWriter

N = 40


def _folder(path, tasks: dict[str, np.ndarray], ids, pool):
    w = ScoreFolderWriter(path, list(tasks), pool=pool)
    for t, s in tasks.items():
        w.write(t, ids, ["src"] * len(ids), s, [f"{t}-sub"] * len(ids))
    w.close({"selector": "test"})
    return str(path)


def _mean_ranks(s):
    """Brute force: rank 1 = best; a tied group shares the mean of the ranks it spans."""
    s = list(s)
    return np.array([sum(1 for y in s if y > x) + (sum(1 for y in s if y == x) + 1) / 2 for x in s])


@pytest.fixture()
def world(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"id{i:03d}" for i in range(N)]
    pool = tmp_path / "pool.jsonl"
    write_jsonl([make_record("src", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                             id=i) for i in ids], pool)
    less = {"t1": rng.standard_normal(N), "t2": rng.integers(0, 4, N).astype(float)}  # t2: many ties
    perm = rng.permutation(N)  # the second folder lists the pool in another order
    rds = {"t1": rng.standard_normal(N) * 100, "t2": rng.standard_normal(N)}
    a = _folder(tmp_path / "less", less, ids, str(pool))
    b = _folder(tmp_path / "rds", {t: v[perm] for t, v in rds.items()}, [ids[i] for i in perm], str(pool))
    agnostic = rng.standard_normal(N)
    c = _folder(tmp_path / "quality", {"all": agnostic}, ids, str(pool))
    return {"root": tmp_path, "ids": ids, "pool": str(pool), "less": less, "rds": rds, "agnostic": agnostic,
            "a": a, "b": b, "c": c}


def _run(world, out, **kw):
    from less_ray.selectors import load_selector_config, run_selector
    cfg = load_selector_config("fusion", None, {"pool": world["pool"], "out": str(world["root"] / out),
                                                "targets": {"t1": "x", "t2": "x"}, "top_p": 0.1, **kw})
    return run_selector("fusion", cfg), world["root"] / out


def test_rank_fusion_is_the_weighted_mean_percentile(world):
    s, out = _run(world, "f", inputs={"less": world["a"], "rds": world["b"]}, weights={"less": 3, "rds": 1})
    assert s["weights"] == {"less": 0.75, "rds": 0.25} and s["method"] == "rank"
    for t in ("t1", "t2"):
        pct = {k: 1 - (_mean_ranks(world[k][t]) - 1) / (N - 1) for k in ("less", "rds")}
        want = 0.75 * pct["less"] + 0.25 * pct["rds"]
        got = pq.read_table(out / t / "scores.parquet").to_pydict()
        assert got["id"] == world["ids"]  # the first input's row order
        np.testing.assert_allclose(got["score"], want, atol=1e-6)
        assert set(got["best_subtask"]) == {f"{t}-sub"}
        top = [json.loads(x)["id"] for x in (out / t / "top_p0.1.jsonl").read_text().splitlines()]
        assert len(top) == 4 and set(top) <= set(world["ids"])


def test_zscore_fusion_and_a_task_agnostic_input_serving_every_task(world):
    s, out = _run(world, "z", inputs={"less": world["a"], "q": world["c"]}, method="zscore")
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    for t in ("t1", "t2"):
        got = pq.read_table(out / t / "scores.parquet").column("score").to_numpy()
        np.testing.assert_allclose(got, 0.5 * z(world["less"][t]) + 0.5 * z(world["agnostic"]), atol=1e-5)
        assert s["tasks"][t]["inputs"]["q"].endswith("quality/all/scores.parquet")


def test_fusion_refuses_what_it_cannot_fuse(world, tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        _run(world, "e1", inputs={"less": world["a"]})
    with pytest.raises(FileNotFoundError, match="score_summary.json is missing"):
        _run(world, "e2", inputs={"less": world["a"], "x": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="weight"):
        _run(world, "e3", inputs={"less": world["a"], "rds": world["b"]}, weights={"less": 1})
    other = _folder(tmp_path / "other", {"t1": np.zeros(N - 1), "t2": np.zeros(N - 1)}, world["ids"][:-1],
                    world["pool"])
    with pytest.raises(ValueError, match="other pool ids"):
        _run(world, "e4", inputs={"less": world["a"], "o": other})
    with pytest.raises(ValueError, match="has no task 't2'"):
        _run(world, "e5", inputs={"less": world["a"], "o": _folder(tmp_path / "o1", {"t1": np.zeros(N), "t3":
                                                                                     np.zeros(N)}, world["ids"],
                                                                 world["pool"])})


def test_pipeline_names_resolve_to_the_run_folders(world, tmp_path):
    from less_ray.selectors.fusion import FusionConfig, input_folder
    cfg = FusionConfig(run_folder=str(tmp_path / "run"))
    assert input_folder(cfg, "less", "less") == tmp_path / "run" / "scores"
    assert input_folder(cfg, "r", "rds_plus") == tmp_path / "run" / "selectors" / "rds_plus"
    assert input_folder(cfg, "x", str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"


def test_fusion_cli(world, capsys):
    from less_ray.cli import main
    t = world["root"] / "t.jsonl"
    write_jsonl([make_record("t", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                             id="t0", task="t1")], t)
    assert main(["selector", "fusion", "--pool", world["pool"], "--targets", f"t1={t}", "--out",
                 str(world["root"] / "cli"), "--top-p", "0.1", "--set",
                 f"inputs={{less: {world['a']}, rds: {world['b']}}}"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert list(s["tasks"]) == ["t1"] and s["weights"] == {"less": 0.5, "rds": 0.5}
    assert len((world["root"] / "cli" / "t1" / "top_p0.1.jsonl").read_text().splitlines()) == 4


def test_pipeline_fills_fusion_run_folder_and_keeps_rds_plus_rendering(tmp_path):
    from less_ray.pipeline import PipelineConfig, Run, selector_config
    cfg = PipelineConfig(out=str(tmp_path / "run"), base_model="m", pool="p.jsonl", targets={"t": "t.jsonl"},
                         chat_format="less", selectors={"rds": {}, "rds_plus": {},
                                                        "fusion": {"inputs": {"less": "less", "rds": "rds_plus"}}})
    run = Run(cfg)
    f = selector_config(cfg, run, "fusion", [])
    assert f.run_folder == str(run.root) and f.targets == {"t": "t.jsonl"}
    assert selector_config(cfg, run, "rds_plus", []).chat_format == "tulu_stripped"  # RDS+'s own rendering
    assert selector_config(cfg, run, "rds", []).chat_format == "less"  # the pipeline's

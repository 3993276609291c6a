"""`report` on every selector's score folder: LESS's (from `score` over synthetic gradient
stores), random (the real selector job), RDS and k-center (their own folder writers over
synthetic embeddings), inside a pipeline run folder and alone; metadata, hashes, composition
beside the random baseline, eval results, near-duplicates, and nothing fetched from outside."""
import base64
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from less_ray.config import save_config
from less_ray.data.io import read_records, write_jsonl
from less_ray.data.schema import make_record
from less_ray.selection.report import ReportConfig, run_report
from less_ray.selection.select import SelectConfig, run_select
from less_ray.selection.seeded import seeded_uniform
from less_ray.artifact import sha256_file
from less_ray.testing.synthetic_store import write_store

N_POOL, FAMILY, TASK = 200, "arithmetic", "demo_arithmetic"
LRS = [3e-3, 1e-3]
D = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo pool (200, 10 families) and 6 arithmetic targets; a pipeline-like run folder
    holding LESS's score folder (run_score over synthetic gradient stores in which the arithmetic
    family shares a direction with the targets), the real `random` selector and an eval JSON."""
    import ray

    from less_ray.data.demo import write_demo_data
    from less_ray.pipeline import PipelineConfig
    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    from less_ray.selectors import load_selector_config, run_selector
    root = tmp_path_factory.mktemp("report")
    info = write_demo_data(root / "data", n_pool=N_POOL, target_family=FAMILY, n_targets=6, seed=0)
    pool, targets = info["pool"]["path"], info["targets"]["path"]
    recs = read_records(pool).records
    ids, sources = [r.id for r in recs], [r.source for r in recs]
    trecs = read_records(targets).records
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(D)
    run = root / "run"
    pool_stores, target_stores = [], []
    for c, lr in enumerate(LRS):
        g = rng.standard_normal((N_POOL, D)) + np.array([3.0 * (s == f"demo/{FAMILY}") for s in sources])[:, None] * direction
        t = rng.standard_normal((len(trecs), D)) * 0.3 + direction
        g, t = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (g, t))
        pool_stores.append(str(write_store(root / f"pool_c{c}", ids, g.astype(np.float32), kind="adam",
                                           checkpoint=f"{run}/warmup/checkpoints/epoch_{c + 1}", sources=sources,
                                           shard_rows=100, avg_lr=lr, input_path=pool, model="tiny-llama-for-test")))
        target_stores.append(str(write_store(root / f"tgt_c{c}", [r.id for r in trecs], t.astype(np.float32),
                                             kind="sgd", checkpoint=f"{run}/warmup/checkpoints/epoch_{c + 1}",
                                             subtasks=[r.subtask or TASK for r in trecs], task=TASK,
                                             input_path=targets, model="tiny-llama-for-test")))
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never join another Ray on this machine
    try:
        save_config(PipelineConfig(out=str(run), base_model="tiny-llama-for-test", pool=pool, targets={TASK: targets}),
                    run / "pipeline.config.yaml")
        run_score(ScoreConfig(pool_stores=pool_stores, tasks=[TaskSpec(TASK, target_stores)], out=str(run / "scores"),
                              block_rows=64, min_actors=1, max_actors=1, actor_num_cpus=0.5))
        run_select(SelectConfig(scores=str(run / "scores"), pool=pool, top_p=0.05))
        run_selector("random", load_selector_config("random", None, {
            "pool": pool, "out": str(run / "selectors" / "random"), "seed": 5, "num_cpus": 2, "max_actors": 1,
            "shard_rows": 100}))
    finally:
        ray.shutdown()
    (run / "eval").mkdir()
    (run / "eval" / f"{TASK}.json").write_text(json.dumps({
        "model": str(run / "train" / TASK / "model"),
        "tasks": {"demo:arithmetic": {"metric": "accuracy", "score": 0.4321, "n": 50, "answer_loss": 1.2345,
                                      "per_subtask": {"a": 0.4}, "examples": []}}}))
    (run / "eval" / f"{TASK}.base.json").write_text(json.dumps({
        "model": "tiny-llama-for-test", "tasks": {"loss:demo_arithmetic": {
            "metric": "answer_loss", "score": 3.25, "n": 3, "file": "x.heldout.jsonl", "lower_is_better": True}}}))
    return {"root": root, "run": run, "pool": pool, "targets": targets, "ids": ids, "sources": sources}


def _no_external_resources(page: str) -> None:
    assert "http://" not in page and "https://" not in page and "url(" not in page
    srcs = re.findall(r"""src=["']([^"']*)""", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "<script" not in page and "href=" not in page


def _composition(page: str, task: str) -> dict[str, tuple[int, int, int]]:
    """source -> (pool, random, selected) counts from the task's composition table."""
    section = page.split(f"<h2>Task: {task}</h2>", 1)[1].split("<h2>", 1)[0]
    table = section.split("<table class='composition'>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td class='num'>(\d+)</td><td class='num'>[\d.]+%</td>"
                      r"<td class='num'>(\d+)</td><td class='num'>[\d.]+%</td><td class='num'>(\d+)</td>", table)
    return {s: (int(p), int(r), int(k)) for s, p, r, k in rows}


def _expected_random(ids, sources, k, seed):
    u = seeded_uniform(ids, seed)
    order = sorted(range(len(ids)), key=lambda i: (-u[i], ids[i]))[:k]
    return Counter(sources[i] for i in order)


def test_less_report_in_a_run_folder(world):
    run, pool, targets = world["run"], world["pool"], world["targets"]
    page = run_report(ReportConfig(scores=str(run / "scores"), out=str(run / "report.html"), pool=pool)).read_text()
    _no_external_resources(page)
    assert "<h1>Selection report: less</h1>" in page and "How to read this" in page
    # metadata: model, checkpoints with their hashes and weights, files with hashes, configs, versions
    assert "tiny-llama-for-test" in page
    for c in (1, 2):
        assert f"warmup/checkpoints/epoch_{c}" in page and f"hash-{run}/warmup/checkpoints/epoch_{c}" in page
    assert "0.75" in page and "0.25" in page  # weights avg_lr / sum
    assert sha256_file(pool) in page and sha256_file(targets) in page
    assert f"<code>{pool}</code>" in page and f"<code>{targets}</code>" in page
    assert "pipeline.config.yaml" in page and "score.config.yaml" in page and "select.config.yaml" in page
    assert re.search(r"at report: less-ray [\d.]+", page) or re.search(r"less-ray [\d.]+", page)
    assert re.search(r"report written</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    # the selection file and its size rule
    sel_file = run / "scores" / TASK / "top_p0.05.jsonl"
    assert str(sel_file) in page
    if (run / "scores" / TASK / "selection.json").exists():  # select records its size rule
        assert "as <code>select</code> recorded it: k = floor(p·N + 1e-9) with p = 0.05, N = 200" in page
        assert "; k = 10" in page
    else:
        assert "k = floor(p·N) = floor(0.05 · 200) = 10, with N = 200 examples scored" in page
    # composition: the selection file's sources, the pool's, and the run's random selector (seed 5) at k
    comp = _composition(page, TASK)
    selected = Counter(json.loads(line)["source"] for line in sel_file.read_text().splitlines())
    assert {s: v[2] for s, v in comp.items() if v[2]} == dict(selected)
    assert {s: v[0] for s, v in comp.items()} == dict(Counter(world["sources"]))
    assert {s: v[1] for s, v in comp.items() if v[1]} == dict(_expected_random(world["ids"], world["sources"], 10, 5))
    assert selected[f"demo/{FAMILY}"] >= 8  # the planted direction: LESS prefers the family
    assert "the run's <code>random</code> selector" in page and "seed 5" in page
    # eval results found in <run>/eval
    ev = page.split("<h2>Eval results</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"{TASK}.json" in ev and "demo:arithmetic" in ev and "0.4321" in ev and "answer_loss 1.2345" in ev
    assert str(run / "train" / TASK / "model") in ev
    assert f"{TASK}.base.json" in ev and "loss:demo_arithmetic" in ev and "answer_loss (lower is better)" in ev
    assert "3.2500" in ev and "lower_is_better" not in ev
    assert re.search(r"<code>demo_arithmetic.base.json</code></td><td>base model</td><td><code>tiny-llama-for-test", ev)
    assert f"<code>{TASK}.json</code></td><td>trained on the {TASK} selection</td>" in ev
    # near-duplicates of the selection and of the baseline
    assert re.search(r"near-duplicates</th><td>selection: <b>\d+</b> of 10 .*random baseline: <b>\d+</b> of 10", page)


def test_random_folder_report_with_given_eval_and_cli(world, tmp_path, capsys):
    """The real `random` selector's folder (which raised KeyError: 'checkpoints'), via the CLI."""
    from less_ray.cli import main
    folder = world["run"] / "selectors" / "random"
    out = tmp_path / "random.html"
    assert main(["report", "--scores", str(folder), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == str(out)
    page = out.read_text()
    _no_external_resources(page)
    assert "<h1>Selection report: random</h1>" in page and "Task: all" in page
    summary = json.loads((folder / "score_summary.json").read_text())
    assert summary["pool_sha256"] == sha256_file(world["pool"]) and summary["pool_sha256"] in page
    assert "unchanged since scoring" in page and "selector.config.yaml" in page
    comp = _composition(page, "all")
    assert sum(v[2] for v in comp.values()) == 10 and sum(v[1] for v in comp.values()) == 10
    # the folder is the run's random selector (seed 5): the baseline is the seeded sample, seed 0 (the default)
    assert "a seeded uniform sample of 10 of the 200 scored examples (seed 0" in page
    assert {s: v[1] for s, v in comp.items() if v[1]} == dict(_expected_random(world["ids"], world["sources"], 10, 0))
    assert {s: v[2] for s, v in comp.items() if v[2]} == dict(_expected_random(world["ids"], world["sources"], 10, 5))
    # the run's eval is found from here too; a given eval JSON (another shape: label -> results) is added
    other = tmp_path / "base_vs_trained.json"
    other.write_text(json.dumps({"base": {"model": "base-model-x", "tasks": {"heldout": {"metric": "answer_loss",
                                                                                       "score": 2.5, "n": 7}}},
                                 "trained": {"model": "trained-model-y", "tasks": {"heldout": {
                                     "metric": "answer_loss", "score": 1.75, "n": 7}}}}))
    page = run_report(ReportConfig(scores=str(folder), out=str(out), eval=[str(other)])).read_text()
    ev = page.split("<h2>Eval results</h2>", 1)[1].split("<h2>", 1)[0]
    assert "base-model-x" in ev and "trained-model-y" in ev and "2.5000" in ev and "1.7500" in ev
    assert "0.4321" in ev  # <run>/eval/*.json as well


def _embedding_store(path, ids, x, sources=None, subtasks=None, task=None, input_path=None):
    return write_store(path, ids, x.astype(np.float32), kind="embedding", checkpoint="minilm", sources=sources,
                       subtasks=subtasks, task=task, proj_type="identity", model="encoder-for-test",
                       input_path=input_path)


def _embeddings(world):
    rng = np.random.default_rng(3)
    fam = np.array([s == f"demo/{FAMILY}" for s in world["sources"]])
    center = rng.standard_normal(D)
    x = rng.standard_normal((N_POOL, D)) + 4 * fam[:, None] * center
    t = rng.standard_normal((6, D)) * 0.3 + 4 * center
    return [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, t)]


@pytest.mark.parametrize("name", ["rds", "kcenter"])
def test_report_renders_for_embedding_selectors(world, tmp_path, name):
    """RDS's and k-center's score folders, written by their own writers (synthetic embeddings, no Ray,
    no MiniLM), alone (not in a run folder): no eval, a computed random baseline."""
    from less_ray.selectors import load_selector_config
    x, t = _embeddings(world)
    out = tmp_path / name
    cfg = load_selector_config(name, None, {"pool": world["pool"], "targets": {"arith": world["targets"]},
                                            "out": str(out), "top_p": 0.05, "seed": 0})
    if name == "rds":
        from less_ray.selectors.rds import score_stores
        pool_store = _embedding_store(tmp_path / "emb_pool", world["ids"], x, world["sources"])
        tgt = _embedding_store(tmp_path / "emb_t", [f"t{i}" for i in range(6)], t, subtasks=["a", "a", "a", "b", "b", "b"],
                               task="arith")
        score_stores(pool_store, {"arith": tgt}, str(out), world["pool"], 64, {"selector": "rds", "encoder": "minilm"})
    else:
        from less_ray.selectors.kcenter import targeted_scores, write_scores
        cfg.n_clusters = 5
        scores, best, info = targeted_scores(x.astype(np.float32), {"arith": t.astype(np.float32)}, cfg)
        sizes = info.pop("cluster_sizes")
        write_scores(cfg, {"id": np.array(world["ids"]), "source": np.array(world["sources"], dtype=object)}, scores, best,
                     {"selector": "kcenter", "encoder": "minilm", "n_clusters": 5, "cluster_sizes": sizes, "tasks": info})
    save_config(cfg, out / "selector.config.yaml")
    run_select(SelectConfig(scores=str(out), pool=world["pool"], top_p=0.05))
    page = run_report(ReportConfig(scores=str(out), random_seed=2)).read_text()
    _no_external_resources(page)
    assert f"<h1>Selection report: {name}</h1>" in page and "Task: arith" in page
    assert "No eval results" in page
    assert sha256_file(world["pool"]) in page and sha256_file(world["targets"]) in page  # from selector.config.yaml
    assert "encoder</th><td>minilm" in page and "selector.config.yaml" in page
    comp = _composition(page, "arith")
    sel = Counter(json.loads(line)["source"] for line in (out / "arith" / "top_p0.05.jsonl").read_text().splitlines())
    assert {s: v[2] for s, v in comp.items() if v[2]} == dict(sel)
    assert {s: v[1] for s, v in comp.items() if v[1]} == dict(_expected_random(world["ids"], world["sources"], 10, 2))
    assert "a seeded uniform sample of 10 of the 200 scored examples (seed 2" in page
    assert page.count('src="data:image/png') == 3  # shares, histogram, best subtask (rds) / cluster (k-center)
    if name == "rds":  # the planted family is nearest the targets (k-center spreads within their cluster)
        assert sel[f"demo/{FAMILY}"] >= 8
    else:
        assert "n_clusters: 5" in page  # the selector's summary facts


def test_hashes_near_duplicates_and_missing_selection(tmp_path):
    """Planted exact duplicates are counted in the selection; a pool edited after scoring is flagged;
    without a selection file the top k by score is described, by the size rule."""
    from less_ray.selection.folder import ScoreFolderWriter
    recs = [make_record(f"s{i % 3}", [{"role": "user", "content": f"question number {i} about the topic of {i * 7}"
                                       " with several more words"},
                                      {"role": "assistant", "content": f"the answer is {i * 13} because of {i}"}],
                        id=f"r{i:03d}") for i in range(40)]
    # r040..r042 copy r000..r002 (other ids, same text); they score just below their originals
    recs += [make_record(recs[j].source, list(recs[j].messages), id=f"r{40 + j:03d}") for j in range(3)]
    pool = tmp_path / "pool.jsonl"
    write_jsonl(recs, pool)
    digest = sha256_file(pool)
    scores = np.array([100.0 - i for i in range(40)] + [99.5, 98.5, 97.5])
    w = ScoreFolderWriter(tmp_path / "f", ["t"], pool=str(pool))
    w.write("t", [r.id for r in recs], [r.source for r in recs], scores)
    w.close({"selector": "handmade", "pool_sha256": digest})
    page = run_report(ReportConfig(scores=str(tmp_path / "f"), top_p=0.25)).read_text()  # k = floor(.25 * 43) = 10
    assert "k = floor(p·N) = floor(0.25 · 43) = 10, with N = 43 records in the pool file" in page
    assert "less-ray select</code> has not written it" in page
    assert "selection: <b>3</b> of 10 (30.0%) duplicate a higher-ranked one (3 distinct originals)" in page
    assert "<code>r040</code></td><td><code>r000</code>" in page
    assert digest in page and "unchanged since scoring" in page
    with open(pool, "a", encoding="utf-8") as fh:  # the pool changes after scoring
        fh.write(json.dumps({"id": "late", "source": "s0", "messages": [{"role": "user", "content": "q"},
                                                                     {"role": "assistant", "content": "a"}]}) + "\n")
    page = run_report(ReportConfig(scores=str(tmp_path / "f"), top_p=0.25)).read_text()
    assert "CHANGED since scoring" in page and digest in page
    # a size rule `select` records beside the selection (<task>/selection.json) is shown as recorded
    run_select(SelectConfig(scores=str(tmp_path / "f"), top_p=0.25, sorted_csv=False))
    (tmp_path / "f" / "t" / "selection.json").write_text(json.dumps({"rule": {
        "rule": "floor", "formula": "k = floor(p·N + 1e-9)", "p": 0.25, "N": 43, "N_is": "every record of the pool file",
        "scored": 43, "k": 10}}))
    page = run_report(ReportConfig(scores=str(tmp_path / "f"))).read_text()  # p: from select.config.yaml
    assert ("as <code>select</code> recorded it: k = floor(p·N + 1e-9) with p = 0.25, N = 43 (N: every record of "
            "the pool file); 43 examples scored; k = 10") in page
    assert str(tmp_path / "f" / "t" / "top_p0.25.jsonl") in page
    (tmp_path / "f" / "t" / "selection.json").unlink()
    (tmp_path / "f" / "t" / "top_p0.25.jsonl").unlink()
    # capped: the highest-ranked 5 (r000 r040 r001 r041 r002) hold 2 duplicates; k is counted as
    # select would count it now, over the pool's 44 records (one appended above): floor(11.0) = 11
    page = run_report(ReportConfig(scores=str(tmp_path / "f"), top_p=0.25, dedup_max=5)).read_text()
    assert "k = floor(p·N) = floor(0.25 · 44) = 11, with N = 44 records in the pool file" in page
    assert "selection: <b>2</b> of 5 (40.0%) duplicate a higher-ranked one (2 distinct originals) " \
           "<i>(only 5 of 11 checked" in page
    # dedup off: no near-duplicate row, the rest renders
    page = run_report(ReportConfig(scores=str(tmp_path / "f"), top_p=0.25, dedup_threshold=None)).read_text()
    assert "near-duplicates</th>" not in page and "Composition by source" in page
    assert Path(tmp_path / "f" / "report.html.config.yaml").exists()
    # a folder that records no pool file still renders, and says what it could not do
    w = ScoreFolderWriter(tmp_path / "g", ["t"])
    w.write("t", [r.id for r in recs], [r.source for r in recs], scores)
    w.close({"selector": "handmade"})
    page = run_report(ReportConfig(scores=str(tmp_path / "g"))).read_text()
    assert "no pool file is recorded or given" in page and "selection: not checked (no example texts)" in page
    assert "k = floor(p·N) = floor(0.05 · 43) = 2" in page


def test_result_tables_are_shown_escaped_and_bad_ones_named(world, tmp_path, capsys):
    """`tables`: an experiment's comparison shown on the run's page (issue #19), cells escaped; a
    malformed file stops the report with its path and key before any work."""
    from less_ray.cli import main
    folder = world["run"] / "selectors" / "random"
    good = tmp_path / "results.tables.json"
    good.write_text(json.dumps({"title": "Trained on each selection", "note": "pool 200 & co", "tables": [
        {"caption": "Held-out loss", "columns": ["target", "base", "LESS"],
         "rows": [["bbh", 2.5, 2.25], ["<b>mmlu</b>", None, "1.8 ± 0.1"]], "note": "lower is better"}]}))
    out = tmp_path / "r.html"
    assert main(["report", "--scores", str(folder), "--out", str(out), "--tables", str(good)]) == 0
    capsys.readouterr()
    page = out.read_text()
    sec = page.split("<h2>Trained on each selection</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<p>pool 200 &amp; co</p>" in sec and "<h3>Held-out loss</h3>" in sec and "<th>LESS</th>" in sec
    assert "<td class='num'>2.2500</td>" in sec and "&lt;b&gt;mmlu&lt;/b&gt;" in sec and "<b>mmlu" not in sec
    assert "<td>—</td>" in sec and "1.8 ± 0.1" in sec and "lower is better" in sec
    bad = tmp_path / "bad.json"
    for content, needle in ((json.dumps({"tables": [{"columns": ["a", "b"], "rows": [[1]]}]}), "tables[0].rows[0]"),
                            (json.dumps({"title": "x"}), "key 'tables'"), ("{not json", "cannot read")):
        bad.write_text(content)
        with pytest.raises(ValueError, match=re.escape(needle)) as e:
            run_report(ReportConfig(scores=str(folder), out=str(tmp_path / "b.html"), tables=[str(bad)]))
        assert str(bad) in str(e.value)
    assert not (tmp_path / "b.html").exists()

"""A node lost during extraction on a multi-node Ray cluster: the store still completes, equal
to an undisturbed run (Ray reschedules, or a rerun resumes the unfinished shards)."""
import threading
import time

import numpy as np
import pytest

from less_ray.data.demo import generate_pool
from less_ray.data.io import write_jsonl
from less_ray.extract.job import ExtractConfig, run_extract
from less_ray.store import read_store
from less_ray.testing.fake_checkpoint import make_lora_checkpoint

pytestmark = pytest.mark.slow  # a real Ray cluster or job: minutes on 2 cores


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address)
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_node_removed_during_extraction(cluster, tiny_model_dir, tmp_path):
    c, workers = cluster
    path = tmp_path / "pool.jsonl"
    write_jsonl(generate_pool(48, seed=9), path)
    ckpt = make_lora_checkpoint(tiny_model_dir, tmp_path / "ckpt")
    kw = dict(data=str(path), checkpoint=str(ckpt), kind="adam", dims=[32], shard_rows=4, batch_size=4,
              min_actors=1, max_actors=3, actor_num_cpus=1.0)
    baseline = run_extract(ExtractConfig(out=str(tmp_path / "undisturbed"), **kw))[32]

    out = tmp_path / "disturbed"
    errors = []
    job = threading.Thread(target=lambda: _run_catching(ExtractConfig(out=str(out), **kw), errors))
    job.start()
    deadline = time.time() + 300
    while not list((out / "dim32" / "shards").glob("part-*.arrow")) and time.time() < deadline:
        time.sleep(0.2)
    done_before = len(list((out / "dim32" / "shards").glob("part-*.arrow")))
    c.remove_node(workers[0])  # a worker node dies with whatever actor it hosted
    assert 0 < done_before < 12  # the node really went away mid-job
    job.join(timeout=600)
    assert not job.is_alive()
    disturbed = out / "dim32"
    if errors or not (disturbed / "manifest.json").exists():
        disturbed = run_extract(ExtractConfig(out=str(out), **kw))[32]  # resume: only unfinished shards
    a, b = read_store(baseline, ("id", "features")), read_store(disturbed, ("id", "features"))
    assert list(a["id"]) == list(b["id"]) and len(set(b["id"])) == 48
    np.testing.assert_array_equal(a["features"], b["features"])


def _run_catching(cfg, errors):
    try:
        run_extract(cfg)
    except Exception as e:  # noqa: BLE001 - the test decides what a failure means
        errors.append(e)

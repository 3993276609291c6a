"""Extraction on a Ray cluster that starts with no worker nodes: Ray's autoscaler (its fake
multi-node provider: each "node" a raylet on this machine) adds workers for the stage's actors and
removes them once idle, and the store equals, byte for byte, the one a fixed-size cluster makes.
The head runs no work (0 CPUs), so every shard is extracted on an autoscaled node."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

from less_ray.testing.ray_heads import stop_head

pytestmark = pytest.mark.slow  # Ray clusters and an autoscaler: a minute or two on 2 cores

WORKER_TYPE = "cpu1"
# room beyond the stage's 2 actors: Ray Data's own requests to the cluster come on top of the
# actors' demand, and a request that cannot be met whole is not met at all ("No available node
# types can fulfill cluster constraint"), so a cluster capped at exactly the pool's size never grows
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's head id (its node_provider.FAKE_HEAD_NODE_ID)
MAX_WORKERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _autoscaling_config(gcs: str) -> dict:
    return {
        "cluster_name": "less-ray-autoscaling-test", "max_workers": MAX_WORKERS, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s idle and a node is removed
        "provider": {"type": "external", "module": "less_ray.testing.fake_autoscaler.MemoryTypedFakeProvider",
                     "gcs_address": gcs, "disable_node_updaters": True, "disable_launch_config_check": True,
                     "use_node_id_as_ip": True, "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            # one extraction actor per node: 1 CPU, and memory for the tiny model's estimate
            WORKER_TYPE: {"resources": {"CPU": 1, "memory": 8 * 2 ** 30}, "node_config": {}, "min_workers": 0,
                          "max_workers": MAX_WORKERS}},
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": []}


@pytest.fixture
def autoscaling_head():
    from ray._private.services import get_node_ip_address
    temp = tempfile.mkdtemp(prefix="lra", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    gcs = f"{get_node_ip_address()}:{port}"
    with open(f"{temp}/autoscaling.json", "w") as f:
        json.dump(_autoscaling_config(gcs), f)
    # autoscaler v2 (KubeRay's and the cluster launcher's current one): it publishes the node types,
    # from which Ray Data learns that the cluster can grow and asks it to
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
           "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(port), "--num-cpus", "0",
         f"--autoscaling-config={temp}/autoscaling.json", "--include-dashboard=false", "--disable-usage-stats",
         "--temp-dir", temp, "--dashboard-agent-listen-port", str(_free_port()),
         "--ray-client-server-port", str(_free_port())], env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        stop_head(temp, port)
        pytest.fail(f"ray start --head exited {started.returncode}:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    yield gcs
    stop_head(temp, port)
    import shutil
    shutil.rmtree(temp, ignore_errors=True)


DRIVER = """
import json, os, sys, threading, time
import ray
from less_ray.extract.job import ExtractConfig, run_extract
address, data, ckpt, out = sys.argv[1:5]
seen = []
def watch():  # worker nodes alive, every half second, while the stage runs and after
    while True:
        seen.append(sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0))
        time.sleep(0.5)
if address != "local":
    ray.init(address=address)
    threading.Thread(target=watch, daemon=True).start()
else:
    ray.init(address="local", num_cpus=2, include_dashboard=False)
stores = run_extract(ExtractConfig(data=data, checkpoint=ckpt, out=out, kind="adam", dims=[16], shard_rows=8,
                                   precision="fp32", min_actors=int(sys.argv[5]), max_actors=2, actor_num_cpus=1))
during = max(seen) if seen else None
deadline = time.time() + 120
while address != "local" and time.time() < deadline and seen[-1] > 0:
    time.sleep(1)
print("RESULT " + json.dumps({"store": str(stores[16]), "max_workers": during, "workers_after": seen[-1] if seen else None,
                              "head_cpu": [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]}))
"""


# Ray Data asks the cluster for another node once its nodes are >= 75% used over a window (10 s by
# default, requests >= 10 s apart, kept up to 180 s): shortened here so that a 30-second stage shows
# the whole cycle; a real extraction runs for hours
RAY_DATA_AUTOSCALING = {"RAY_DATA_CLUSTER_UTIL_AVG_WINDOW_S": "2", "RAY_DATA_MIN_GAP_BETWEEN_AUTOSCALING_REQUESTS": "2",
                        "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": "10", "RAY_DATA_LOW_UTIL_REQUEST_RELEASE_DELAY_S": "2"}


def _extract(address: str, data, ckpt, out, min_actors: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", **RAY_DATA_AUTOSCALING)
    proc = subprocess.run([sys.executable, "-c", DRIVER, address, str(data), str(ckpt), str(out), str(min_actors)], env=env,
                          capture_output=True, text=True, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, (proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(line[0][len("RESULT "):])


def test_extraction_scales_up_from_no_workers_and_back_down_equal_to_a_fixed_cluster(autoscaling_head, tiny_model_dir,
                                                                                      tmp_path):
    from less_ray.data.demo import generate_pool
    from less_ray.data.io import write_jsonl
    from less_ray.store import read_manifest
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    ckpt = make_lora_checkpoint(tiny_model_dir, tmp_path / "ckpt", r=4)
    write_jsonl(generate_pool(160, seed=11), tmp_path / "pool.jsonl")
    # min_actors 2: Ray Data grows a pool past min_actors only into resources it sees (Ray 2.60,
    # measured here: with min_actors 1 a 50-shard stage kept 1 actor on 1 node), so the actors that
    # should run on an autoscaling cluster are asked for up front (cluster/README.md)
    scaled = _extract(autoscaling_head, tmp_path / "pool.jsonl", ckpt, tmp_path / "scaled", min_actors=2)
    assert scaled["max_workers"] >= 2, scaled  # started with none: the autoscaler added a node per actor
    assert scaled["workers_after"] == 0 and scaled["head_cpu"] == [0]  # and removed them once idle
    fixed = _extract("local", tmp_path / "pool.jsonl", ckpt, tmp_path / "fixed", min_actors=1)
    a, b = read_manifest(scaled["store"]), read_manifest(fixed["store"])
    assert a.count == b.count == 160 and len(a.shards) == 20
    assert [e["sha256"] for e in a.shards] == [e["sha256"] for e in b.shards]  # the same bytes, shard by shard

"""Another Ray on the same machine: a run's every process talks only to the run's own cluster.

A second head (`ray start --head` on other ports, its own temp dir so no other Ray user of this
machine is redirected to it) runs beside the embedded Ray that `ensure_ray` starts; a small Ray
Data stage's workers resolve "the" cluster with no address, as Ray Train's placement-group
cleaner does through the state API. Without the exported RAY_ADDRESS they resolve nothing (or
the latest `ray start` head); with it, their own cluster. Only the head this test started is
stopped, by its process group."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.slow  # a real Ray cluster or job: minutes on 2 cores

RUN = """
import json, os
import ray
from less_ray.ray_runtime import ensure_ray
from less_ray.testing.ray_probe import resolved_addresses
ensure_ray(num_cpus=2)
rows = ray.data.from_items([{"x": i} for i in range(4)]).map_batches(resolved_addresses, batch_size=2).take_all()
print("RESULT " + json.dumps({"driver_env": os.environ.get("RAY_ADDRESS"), "own": ray.get_runtime_context().gcs_address,
                              "rows": [{k: r[k] for k in ("env", "resolved", "own")} for r in rows]}))
ray.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture
def foreign_head():
    temp = tempfile.mkdtemp(prefix="lrh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(port),
                             "--num-cpus", "1", "--include-dashboard=false", "--disable-usage-stats",
                             "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port",
                             str(_free_port()), "--temp-dir", temp, "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0 or s.connect_ex((_node_ip(), port)) == 0:
                break
        assert head.poll() is None, "the second head did not start"
        time.sleep(0.5)
    else:
        pytest.fail("the second head did not open its GCS port")
    yield f"{_node_ip()}:{port}", head
    os.killpg(head.pid, signal.SIGTERM)  # only the head this test started
    try:
        head.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    time.sleep(1)
    try:
        os.killpg(head.pid, signal.SIGKILL)  # its children, if any outlived it
    except ProcessLookupError:
        pass
    import shutil
    shutil.rmtree(temp, ignore_errors=True)


def _node_ip() -> str:
    from ray._private.services import get_node_ip_address
    return get_node_ip_address()


def test_a_ray_data_stage_beside_a_second_local_cluster_talks_only_to_its_own(foreign_head):
    foreign, head = foreign_head
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True, timeout=400)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    res = json.loads(line[0][len("RESULT "):])
    own = res["own"]
    assert own != foreign and res["driver_env"] is None  # the driver's environment is left as it was
    assert len(res["rows"]) == 4
    for r in res["rows"]:  # every worker: its own cluster, in its environment and by resolution
        assert r == {"env": own, "resolved": own, "own": own}
    assert head.poll() is None  # the other cluster was left alone


def test_ensure_ray_leaves_the_drivers_environment_as_it_was(monkeypatch):
    """RAY_ADDRESS is set only while the embedded Ray starts: a process started later (a CLI run
    from this one) must not inherit the address of a Ray that is gone by then."""
    import ray
    from less_ray import ray_runtime
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_GCS_SERVER_PORT", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    assert ray_runtime.ensure_ray(num_cpus=1)
    first = ray.get_runtime_context().gcs_address
    assert "RAY_ADDRESS" not in os.environ and "RAY_GCS_SERVER_PORT" not in os.environ
    ray.shutdown()
    assert ray_runtime.ensure_ray(num_cpus=1)  # a fresh one, not the dead address
    assert ray.get_runtime_context().gcs_address != first
    ray.shutdown()


def test_the_token_file_is_made_owner_only(tmp_path, monkeypatch):
    from less_ray.ray_runtime import protect_auth_token
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("secret")
    token.chmod(0o644)  # as Ray left it
    assert protect_auth_token() == [str(token)]
    assert token.stat().st_mode & 0o777 == 0o600
    assert protect_auth_token() == []  # already private
    other = tmp_path / "tok"
    other.write_text("x")
    other.chmod(0o640)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(other))
    assert protect_auth_token() == [str(other)] and other.stat().st_mode & 0o777 == 0o600

"""End to end: a real head (`ray start --head`), the demo pipeline via `ray job submit`, the
artifacts checked, and only that head stopped."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from less_ray.testing.ray_heads import stop_head

pytestmark = pytest.mark.slow  # a real Ray cluster or job: minutes on 2 cores

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    """A throwaway head with auth disabled on both sides (STACK_NOTES: the CLI and the head must agree)."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent, agent_grpc, metrics = (_free_port() for _ in range(5))
    temp = Path("/tmp") / f"ray_e2e_{os.getpid()}"  # short: Ray's socket paths have a length limit
    # every port explicit: a fixed default (the job agent's 52365) held by another head on this
    # machine would route our jobs to that head
    started = subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(gcs), "--dashboard-port", str(dash),
                    "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                    "--metrics-export-port", str(metrics), "--include-dashboard", "true", "--temp-dir", str(temp),
                    "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:  # say why: CI's record shows only this message
        pytest.fail(f"ray start --head exited {started.returncode}:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    yield ray_bin, f"http://127.0.0.1:{dash}", env
    stop_head(str(temp), gcs)  # only this head
    shutil.rmtree(temp, ignore_errors=True)


def test_demo_pipeline_via_ray_job_submit(head, tmp_path):
    """Also the synthetic selection check: on the planted-family pool LESS's top 5% is >= 90% the
    target family, while a random 5% holds about its pool share."""
    ray_bin, address, env = head
    out = tmp_path / "demo"
    cmd = [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
           "python", "-m", "less_ray", "demo", "--out", str(out)]
    for _ in range(30):  # right after `ray start` the head's job agent may not be up yet
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=REPO)
        log = proc.stdout + proc.stderr
        if "No available agent to submit job" not in log:
            break
        time.sleep(4)
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log and "LESS picked" in log and "'arithmetic' examples" in log
    run = out / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert Path(summary["report"]).exists() and (run / "report.html").exists()
    assert summary["selected_share"] >= 0.9 > summary["pool_share"]
    assert abs(summary["random_share"] - summary["pool_share"]) <= 0.1  # 100 draws at p=0.1: sd 0.03
    stages = json.loads((run / "stages.json").read_text())
    assert {"warmup", "score", "select", "report"} <= set(stages)
    assert (run / "scores" / "demo_arithmetic" / "top_p0.05.jsonl").exists()
    assert json.loads((run / "eval" / "demo_arithmetic.json").read_text())["tasks"]["demo:arithmetic"]["n"] == 50

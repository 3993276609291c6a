"""End to end: a real head (`ray start --head`), the demo pipeline via `ray job submit`, the
artifacts checked, and only that head stopped."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    gcs, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"ray_e2e_{os.getpid()}"  # short: Ray's socket paths have a length limit
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(gcs), "--dashboard-port", str(dash),
                    "--include-dashboard", "true", "--temp-dir", str(temp), "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, text=True, timeout=180)
    yield ray_bin, f"http://127.0.0.1:{dash}", env
    # stop only this head: its processes all live under its own temp dir's session
    out = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(2)
    shutil.rmtree(temp, ignore_errors=True)


def test_demo_pipeline_via_ray_job_submit(head, tmp_path):
    ray_bin, address, env = head
    out = tmp_path / "demo"
    cmd = [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
           "python", "jobs/demo.py", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=REPO)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log and "selected share of demo/arithmetic" in log
    run = out / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert Path(summary["report"]).exists() and (run / "report.html").exists()
    assert summary["selected_share"] >= 0.9 > summary["pool_share"]
    stages = json.loads((run / "stages.json").read_text())
    assert {"warmup", "score", "select", "report"} <= set(stages)
    assert (run / "scores" / "demo_arithmetic" / "top_p0.05.jsonl").exists()
    assert json.loads((run / "eval" / "demo_arithmetic.json").read_text())["tasks"]["demo:arithmetic"]["n"] == 50

"""bench/gpu_suite.sh's CPU fallback runs end to end (small sizes) and writes its log and numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_cpu_fallback(tmp_path):
    env = {**os.environ, "GPU_SUITE_DEVICE": "cpu", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    log = (tmp_path / "gpu_suite.log").read_text()
    res = json.loads((tmp_path / "results.json").read_text())
    for kind in ("rademacher", "sjlt"):
        assert kind in log and res[kind]["ours_ex_per_s"] > 0 and res[kind]["loop_ex_per_s"] > 0
    assert res["peak_bf16"] > 0 and res["score_seconds"] > 0
    assert "score:" in log

"""One writer per folder: a second pipeline / score / extract on a held folder fails fast naming
the holder and leaves the folder untouched; a dead holder's lock is recovered."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from less_ray import run_lock
from less_ray.run_lock import HOLDER_FILE, LOCK_FILE, RunLock, RunLockBusy

HOLD = "import sys, time\nfrom less_ray.run_lock import acquire\nacquire(sys.argv[1], sys.argv[2])\nprint('held', flush=True)\ntime.sleep(300)\n"


@pytest.fixture
def holder(tmp_path):
    """Another process holding a folder's lock (as a running stage would); killed at the end."""
    procs = []

    def start(folder, stage="pipeline"):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), stage], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_a_second_writer_fails_fast_naming_the_holder(tmp_path, holder):
    p = holder(tmp_path / "run")
    t = time.time()
    with pytest.raises(RunLockBusy) as e:
        run_lock.acquire(tmp_path / "run", "score")
    assert time.time() - t < 2
    assert (f"{tmp_path / 'run'} is in use: `pipeline` (pid {p.pid} on host {socket.gethostname()}, since"
            in str(e.value)) and "one writer per folder" in str(e.value)
    assert json.loads((tmp_path / "run" / HOLDER_FILE).read_text())["pid"] == p.pid


def test_a_dead_holders_lock_is_recovered(tmp_path, holder, less_ray_log):
    p = holder(tmp_path / "run", "extract")
    os.kill(p.pid, signal.SIGKILL)  # dies holding it: lock file and sidecar stay behind
    p.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists() and (tmp_path / "run" / HOLDER_FILE).exists()
    with RunLock(tmp_path / "run", "pipeline"):
        assert json.loads((tmp_path / "run" / HOLDER_FILE).read_text())["pid"] == os.getpid()
        with RunLock(tmp_path / "run", "score"):  # re-entrant within one process
            pass
        assert (tmp_path / "run" / HOLDER_FILE).exists()
    assert f"recovered a stale lock of `extract` (pid {p.pid} on {socket.gethostname()}, dead" in less_ray_log.text
    assert not (tmp_path / "run" / HOLDER_FILE).exists()
    run_lock.acquire(tmp_path / "run", "again")  # free again
    run_lock.release(tmp_path / "run")


def test_a_second_pipeline_on_one_folder_fails_fast_without_touching_it(tmp_path, holder):
    from less_ray.pipeline import PipelineConfig, run_pipeline
    run = tmp_path / "run"
    run.mkdir()
    (run / "stages.json").write_text('{"warmup": {"state": "running"}}')
    (run / "scores" / "_parts").mkdir(parents=True)
    (run / "scores" / "_parts" / "00000.parquet").write_bytes(b"the first run's part")
    p = holder(run)
    before = snapshot(run)
    t = time.time()
    with pytest.raises(RunLockBusy, match=f"is in use: `pipeline` \\(pid {p.pid} on host"):
        run_pipeline(PipelineConfig(out=str(run), pool="pool.jsonl", targets={"t": "t.jsonl"}))
    assert time.time() - t < 5 and snapshot(run) == before


def test_a_second_score_or_extract_on_one_folder_fails_fast_without_touching_it(tmp_path, holder):
    from less_ray.extract.job import ExtractConfig, run_extract
    from less_ray.scoring.job import ScoreConfig, run_score
    out = tmp_path / "scores"
    (out / "_parts").mkdir(parents=True)
    (out / "_parts" / "00000.parquet").write_bytes(b"the first run's part")  # score would rmtree _parts
    p = holder(out, "score")
    before = snapshot(out)
    with pytest.raises(RunLockBusy, match=f"`score` \\(pid {p.pid} on host"):
        run_score(ScoreConfig(pool_stores=["nowhere"], out=str(out)))
    assert snapshot(out) == before
    ext = tmp_path / "extract"
    p = holder(ext, "extract")
    before = snapshot(ext)
    with pytest.raises(RunLockBusy, match=f"`extract` \\(pid {p.pid} on host"):
        run_extract(ExtractConfig(data="pool.jsonl", checkpoint="ck", out=str(ext)))
    assert snapshot(ext) == before


def test_the_command_line_prints_the_holder(tmp_path, holder, capsys):
    from less_ray.cli import main
    p = holder(tmp_path / "scores", "score")
    log = logging.getLogger("less_ray")
    handlers, level = log.handlers[:], log.level
    try:
        import numpy as np
        from less_ray.testing.synthetic_store import write_store
        store = write_store(tmp_path / "pool", ["a"], np.ones((1, 4), np.float32) / 2, kind="adam", checkpoint="c0",
                            avg_lr=1.0)
        (tmp_path / "score.yaml").write_text(f"pool_stores: [{store}]\n")
        assert main(["score", "--config", str(tmp_path / "score.yaml"), "--out", str(tmp_path / "scores")]) == 1
    finally:
        log.handlers[:] = handlers
        log.setLevel(level)
    assert f"less-ray score: error: {tmp_path / 'scores'} is in use: `score` (pid {p.pid}" in capsys.readouterr().err

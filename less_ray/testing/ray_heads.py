"""Stopping one Ray head that a test started, and nothing else (`ray stop` would end every Ray of
the user on the machine, the test session's own included)."""
from __future__ import annotations

import os
import re
import signal


def stop_head(temp: str, gcs_port: int) -> None:
    """SIGTERM, then SIGKILL after 10 s, every process of the head started with `--temp-dir temp`
    and GCS port `gcs_port`: its processes name the temp dir, or the port (`gcs_server_port=P`,
    `IP:P` in a GCS address: the fake autoscaler's worker nodes), on their command lines."""
    import psutil
    port = re.compile(rf"(gcs_server_port=|:){gcs_port}(?!\d)")
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and (str(temp) in cmd or ("ray" in cmd and port.search(cmd))):
            mine.append(p)
    for p in mine:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass

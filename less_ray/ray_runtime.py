"""Joining or starting Ray: one place for the choices every stage makes the same way."""
from __future__ import annotations

import logging
import os

log = logging.getLogger("less_ray")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or $RAY_ADDRESS); else start an embedded local Ray.
    Returns True when this call started Ray (the caller may shut it down). The embedded Ray
    keeps its dashboard: Ray Train V2's placement-group cleaner polls the state API it serves."""
    import ray
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local": a new Ray here, even if another `ray start` head runs on this machine
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)
    log.info("ray: %s", ray.cluster_resources())
    return True

"""Joining or starting Ray: one place for the choices every stage makes the same way."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from typing import Any

log = logging.getLogger("less_ray")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or $RAY_ADDRESS); else start an embedded local Ray.
    Returns True when this call started Ray (the caller may shut it down). The embedded Ray
    keeps its dashboard: Ray Train V2's placement-group cleaner polls the state API it serves.

    Every process of the embedded Ray talks only to it: its address is in RAY_ADDRESS while it
    starts, so its raylet and every worker inherit it, and code that resolves "the" cluster with
    no address (Ray Train's placement-group cleaner calls the state API that way) never picks
    another Ray running on the machine. The driver's own environment is restored afterwards: a
    process started later must not inherit the address of a Ray that may be gone by then."""
    import ray

    from .console import after_ray_init, ray_init_args
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **ray_init_args())
    else:
        _start_embedded(num_cpus, ray_init_args())
    after_ray_init()
    protect_auth_token()
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})
    return True


def protect_auth_token() -> list[str]:
    """Ray's token file (written by Ray with mode 644 where it generates one) readable by its
    owner only: chmod 600 `$RAY_AUTH_TOKEN_PATH` and `~/.ray/auth_token` where they are ours and
    open to others. Returns the paths changed."""
    from pathlib import Path
    changed = []
    for p in {Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"),
              Path.home() / ".ray" / "auth_token"}:
        try:
            st = p.stat()
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                p.chmod(0o600)
                changed.append(str(p))
        except OSError:
            continue
    if changed:
        log.info("ray: token file(s) %s made readable by their owner only (mode 600)", changed)
    return changed


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _start_embedded(num_cpus: int | None, init_args: dict) -> None:
    """A new Ray here ("local"), even if another head runs on this machine, on a GCS port chosen
    up front so that its address is in RAY_ADDRESS when its processes start."""
    import ray
    from ray._private.services import get_node_ip_address
    port = _free_port()
    planned = f"{get_node_ip_address()}:{port}"
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ["RAY_ADDRESS"], os.environ["RAY_GCS_SERVER_PORT"] = planned, str(port)
    try:
        ray.init(address="local", num_cpus=num_cpus, **init_args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    actual = ray.get_runtime_context().gcs_address
    if actual != planned:  # not expected: Ray took another port
        log.warning("ray: the embedded Ray runs at %s, not the planned %s: its workers see the wrong RAY_ADDRESS",
                    actual, planned)


@dataclass(kw_only=True)
class ActorPool:
    """A Ray Data stage's actor pool, autoscaling between min and max actors, and what each
    actor reserves (fractional CPUs on CPU clusters, 1 GPU per actor on GPU clusters)."""
    min_actors: int = 1
    max_actors: int = 2
    actor_num_cpus: float = 1.0
    actor_num_gpus: float = 0.0
    # memory each actor reserves from Ray, so Ray places no more actors on a node than fit
    # (None: the stage's own estimate where it has one, e.g. extract's from model and batch)
    actor_memory_gb: float | None = None
    # an actor that dies (killed for memory, a lost node) is restarted this often, then the stage
    # fails with the reason (Ray Data's default: forever). 0: fail at once; a rerun resumes from
    # the finished shards. On clusters that lose nodes (spot instances) set 2 or 3.
    actor_max_restarts: int = 0

    def pool_settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ActorPool)}

    def reserved_memory(self, memory_bytes: int | None) -> int | None:
        """What each actor reserves from Ray: actor_memory_gb when set, else the stage's estimate."""
        return int(self.actor_memory_gb * 2 ** 30) if self.actor_memory_gb else memory_bytes

    def map_batches_args(self, memory_bytes: int | None = None) -> dict[str, Any]:
        """The `Dataset.map_batches` arguments that place a callable class on this pool;
        `memory_bytes`: the stage's estimate, used when actor_memory_gb is not set."""
        import ray
        memory = self.reserved_memory(memory_bytes)
        return {"compute": ray.data.ActorPoolStrategy(min_size=self.min_actors, max_size=self.max_actors),
                "num_cpus": self.actor_num_cpus, "num_gpus": self.actor_num_gpus,
                **({"memory": memory} if memory else {}),
                "max_restarts": self.actor_max_restarts, "max_task_retries": self.actor_max_restarts}


@dataclass(kw_only=True)
class RayStage(ActorPool):
    """An actor pool and the Ray it runs on."""
    address: str | None = None  # Ray cluster; default $RAY_ADDRESS, else an embedded Ray
    num_cpus: int | None = None  # embedded Ray only

    def join_ray(self) -> bool:
        from .config import absolute_paths
        absolute_paths(self)  # actors run in their own folders: nothing relative may reach them
        return ensure_ray(self.address, self.num_cpus)

"""What a Ray worker resolves as "the" cluster when code asks with no address (tests of
ray_runtime.ensure_ray beside another Ray on the same machine). Lives in the package: Ray Data
UDFs defined in test files do not unpickle in workers."""
from __future__ import annotations

import os

import numpy as np


def resolved_addresses(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per row: this worker's RAY_ADDRESS, the cluster address an address-less call resolves to
    (as `ray.util.state` and Ray Train's placement-group cleaner do), and the worker's own GCS."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address
    n = len(batch["x"])
    resolved = canonicalize_bootstrap_address(None) or ""
    own = ray.get_runtime_context().gcs_address
    return {"x": batch["x"], "env": np.array([os.environ.get("RAY_ADDRESS", "")] * n, dtype=object),
            "resolved": np.array([resolved] * n, dtype=object), "own": np.array([own] * n, dtype=object),
            "pid": np.array([os.getpid()] * n)}

"""The seeded uniform score: the `random` selector's (`selectors.random_full`) and the report's baseline.

`seeded_uniform` gives each id a uniform [0, 1) number from a keyed hash of (seed, id). It depends
on the example's id and the seed only, not on pool order, sharding or the number of actors, so
the top k by it is a uniform random subset that is the same on every run with that seed, and a
smaller k selects a subset of a larger one.
"""
from __future__ import annotations

import hashlib

import numpy as np

RANDOM_SELECTOR = "random"  # the random selector's name (its folder in a run: <run>/selectors/random)


def seeded_uniform(ids: list[str], seed: int) -> np.ndarray:
    """A uniform [0, 1) number per id: the top 53 bits of blake2b(id, key=seed)."""
    key = str(seed).encode()
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "little") >> 11
                        for i in ids), dtype=np.float64, count=len(ids)) / float(1 << 53)

"""Which projector a store uses, and how many gradients wait for it: the choice of projector by name,
kept in core so the extract stage and the memory model (resources) both read it from below."""
from __future__ import annotations

PROJECTIONS = ("sjlt", "rademacher", "identity")
DEFAULT_DIMS = (8192,)  # LESS's d


def make_projector(kind: str, num_params: int, dims: list[int], seed: int, sjlt_s: int):
    from .projection import IdentityProjector, RademacherProjector
    from .sparse_projection import SparseJLProjector
    if kind == "identity":
        return IdentityProjector(num_params)
    if kind == "sjlt":
        return SparseJLProjector(num_params, dims, seed=seed, s=sjlt_s)
    if kind == "rademacher":
        return RademacherProjector(num_params, dims, seed=seed)
    raise ValueError(f"projection must be one of {PROJECTIONS}, not {kind!r}")


def projection_type(kind: str, sjlt_s: int) -> str:
    """The manifest's projection type: sjlt records its s ("sjlt-s1"), so stores of different s
    never score together."""
    return f"sjlt-s{sjlt_s}" if kind == "sjlt" else kind


def projection_batch(kind: str, batch_size: int, configured: int | None, buffer_gb: float, num_params: int) -> int:
    """Examples per projection pass: the configured number, or what the buffer budget holds
    (`buffer_gb` of float32 gradients). sjlt projects each batch as it goes."""
    if kind == "sjlt":  # nothing to share across batches
        return batch_size
    if configured:
        return max(configured, batch_size)
    fits = int(buffer_gb * 2 ** 30 // (4 * num_params))
    return max(batch_size, fits // batch_size * batch_size)

"""The projections' 32-bit mixer in plain Python integers (no overflow semantics to worry
about), written from `core/projection.py`'s docstring: the independent reference both
projection test files check the vectorised hashes against."""
M32 = 0xFFFFFFFF


def mix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x7FEB352D) & M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & M32
    return h ^ (h >> 16)

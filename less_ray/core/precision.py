"""Which precision is fast on this host: `precision: auto` resolved by measurement, never by name.

A bf16 path pays off only where the bf16 matmul beats fp32 on the machine that runs it. Measured
(one thread, 2048^2, torch 2.13.0 CPU): an Intel Xeon with AMX ran bf16 at 6.5x fp32, an AMD EPYC
Zen 4 at 2.4x, a Zen 5 at 4.4x, and an Intel Xeon with AVX512_BF16 but no AMX at 0.5x. The flags
alone do not decide it (AVX512_BF16 is on both the 2.4x and the 0.5x hosts), so `probe` times both
matmuls and `resolve_precision` decides from the times; the flags are recorded beside them.

The probe takes ~0.3 s and is cached per host (CPU model, flags, torch version, threads) in
`$LESS_RAY_CACHE` (default `~/.cache/less_ray`)/precision_probe.json, so a cluster's actors pay it
once per machine. A CUDA device needs no probe: bf16 runs on its tensor cores at the native rate.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "less")  # less: bf16, and the adam feature rounded to fp16 (LESS's cast)
# bf16 is chosen on a CPU when its matmul is at least this much faster than fp32's: extraction's
# element-wise part does not speed up with it (measured on the Zen 4: matmul 2.4x, extraction 1.5x),
# so a bf16 matmul only slightly faster would not pay for bf16's rounding
BF16_MIN_SPEEDUP = 1.3
MATRIX_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")


@dataclass(frozen=True)
class Host:
    """What `resolve_precision` decides from: the device, and on a CPU both measured matmul rates."""
    device: str  # "cpu" | "cuda"
    cpu_model: str = ""
    flags: tuple[str, ...] = ()  # the bf16 matrix flags present (MATRIX_FLAGS)
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None
    threads: int = 1
    torch_version: str = ""
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported()
    source: str = field(default="measured", compare=False)  # measured | cached

    def describe(self) -> str:
        if self.device == "cuda":
            return f"cuda ({'bf16 supported' if self.cuda_bf16 else 'no bf16'})"
        marks = ",".join(self.flags) or "no bf16 matrix flags"
        rate = (f"matmul fp32 {self.fp32_gflops:.0f} / bf16 {self.bf16_gflops:.0f} GFLOP/s"
                if self.fp32_gflops and self.bf16_gflops else "matmul not measured")
        return f"{self.cpu_model or 'cpu'} [{marks}], {rate} at {self.threads} thread(s) ({self.source})"


def resolve_precision(requested: str, host: Host) -> tuple[str, str]:
    """(precision, why) for a requested one of PRECISIONS on `host`; anything but auto is kept."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
    if requested != "auto":
        return requested, "as configured"
    if host.device == "cuda":
        return ("bf16", "cuda with bf16: LESS's precision at the tensor cores' rate") if host.cuda_bf16 else \
            ("fp32", "cuda without bf16 support")
    if not host.fp32_gflops or not host.bf16_gflops:
        return "fp32", "the matmul rates were not measured"
    ratio = host.bf16_gflops / host.fp32_gflops
    if ratio >= BF16_MIN_SPEEDUP:
        return "bf16", f"bf16 matmul {ratio:.2f}x fp32 on this CPU (>= {BF16_MIN_SPEEDUP})"
    return "fp32", f"bf16 matmul {ratio:.2f}x fp32 on this CPU (< {BF16_MIN_SPEEDUP}): fp32 is faster here"


def _cpuinfo(key: str) -> str | None:
    """The first `key : value` of /proc/cpuinfo, or None (no such file or line)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor()


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def matmul_gflops(dtype, n: int = 1024, reps: int = 5) -> float:
    """Best-of-reps rate of one n^3 matmul at the current thread count."""
    import torch
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # first call: kernel selection, page faults
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def cache_path() -> Path:
    return Path(os.environ.get("LESS_RAY_CACHE", Path.home() / ".cache" / "less_ray")) / "precision_probe.json"


def probe(device: str = "cpu", use_cache: bool = True, threads: int | None = None) -> Host:
    """This host's `Host`: on CUDA its bf16 support; on a CPU both matmul rates at `threads`
    (default: torch's current count), cached per host."""
    import torch
    if device.startswith("cuda"):
        return Host("cuda", cuda_bf16=bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
                    torch_version=torch.__version__)
    if threads is not None and threads != torch.get_num_threads():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return probe(device, use_cache)
        finally:
            torch.set_num_threads(before)
    model, flags, threads = cpu_model(), tuple(f for f in MATRIX_FLAGS if f in cpu_flags()), torch.get_num_threads()
    key = f"{model}|{','.join(flags)}|{torch.__version__}|{threads}"
    path = cache_path()
    if use_cache:
        try:
            got = json.loads(path.read_text()).get(key)
            if got:
                return Host(**{**got, "flags": tuple(got["flags"]), "source": "cached"})
        except (OSError, ValueError, TypeError):
            pass  # no cache, or an unreadable one: measure
    host = Host("cpu", model, flags, matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16), threads,
                torch.__version__)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = json.loads(path.read_text()) if path.exists() else {}
        cache[key] = {k: v for k, v in asdict(host).items() if k != "source"}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except (OSError, ValueError):
        pass  # a read-only home: the probe is cheap enough to repeat
    return host


def resolve_auto(device: str = "cpu", threads: float = 1) -> tuple[str, str]:
    """(precision, why) of `auto` on this machine's `device` at `threads`: the probe, then
    `resolve_precision`, the why naming the host (extraction and training both decide by it)."""
    host = probe(device, threads=max(1, int(threads)))
    precision, why = resolve_precision("auto", host)
    return precision, f"{why}; {host.describe()}"

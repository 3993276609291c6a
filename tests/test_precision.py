"""`precision: auto`: resolved from a host description by measured matmul rates, never by name."""
import json

import pytest

from less_ray.core import precision as P
from less_ray.core.precision import Host, resolve_precision

# the hosts the project has measured (one thread, 2048^2, torch 2.13.0 CPU; docs in the module)
AMX_XEON = Host("cpu", "Intel Xeon (AMX)", ("amx_bf16", "amx_tile", "avx512_bf16"), 159.0, 1033.0)
ZEN4 = Host("cpu", "AMD EPYC (Zen 4)", ("avx512_bf16",), 86.0, 206.0)
XEON_NO_AMX = Host("cpu", "Intel Xeon", ("avx512_bf16",), 161.0, 82.0)
NO_BF16_FLAGS = Host("cpu", "old cpu", (), 50.0, 3.0)


@pytest.mark.parametrize("host, want", [(AMX_XEON, "bf16"), (ZEN4, "bf16"), (XEON_NO_AMX, "fp32"),
                                        (NO_BF16_FLAGS, "fp32")])
def test_auto_follows_the_measured_rates(host, want):
    got, why = resolve_precision("auto", host)
    assert got == want, why
    assert f"{host.bf16_gflops / host.fp32_gflops:.2f}x" in why


def test_auto_ignores_the_flags_the_rates_contradict():
    """AVX512_BF16 is on the 2.4x host and on the 0.5x one: the same flags, opposite answers."""
    assert ZEN4.flags == XEON_NO_AMX.flags
    assert resolve_precision("auto", ZEN4)[0] != resolve_precision("auto", XEON_NO_AMX)[0]
    # and a host that is fast in bf16 without any flag we know of is still bf16
    assert resolve_precision("auto", Host("cpu", "future", (), 100.0, 400.0))[0] == "bf16"


def test_auto_threshold_and_unmeasured_hosts():
    edge = P.BF16_MIN_SPEEDUP
    assert resolve_precision("auto", Host("cpu", "x", (), 100.0, 100.0 * edge))[0] == "bf16"
    assert resolve_precision("auto", Host("cpu", "x", (), 100.0, 100.0 * edge * 0.99))[0] == "fp32"
    assert resolve_precision("auto", Host("cpu"))[0] == "fp32"


def test_cuda_is_bf16_where_supported():
    assert resolve_precision("auto", Host("cuda", cuda_bf16=True))[0] == "bf16"
    assert resolve_precision("auto", Host("cuda", cuda_bf16=False))[0] == "fp32"


def test_explicit_precision_is_kept_and_unknown_refused():
    for p in ("fp32", "bf16", "less"):
        assert resolve_precision(p, XEON_NO_AMX) == (p, "as configured")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", ZEN4)


def test_probe_measures_once_per_host_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LESS_RAY_CACHE", str(tmp_path))
    calls = []

    def fake_rate(dtype, n=1024, reps=5):
        calls.append(dtype)
        return 100.0 if "float32" in str(dtype) else 250.0

    monkeypatch.setattr(P, "matmul_gflops", fake_rate)
    first = P.probe("cpu")
    assert (first.fp32_gflops, first.bf16_gflops, first.source) == (100.0, 250.0, "measured")
    assert len(calls) == 2
    second = P.probe("cpu")
    assert len(calls) == 2 and second.source == "cached" and second == first
    saved = json.loads((tmp_path / "precision_probe.json").read_text())
    assert len(saved) == 1 and next(iter(saved.values()))["bf16_gflops"] == 250.0
    # another thread count is another host entry
    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if before != 1 else 2)
        P.probe("cpu")
        assert len(calls) == 4
    finally:
        torch.set_num_threads(before)


def test_probe_really_measures_both_rates(tmp_path, monkeypatch):
    monkeypatch.setenv("LESS_RAY_CACHE", str(tmp_path))
    host = P.probe("cpu", use_cache=False)
    assert host.fp32_gflops > 0.5 and host.bf16_gflops > 0.01
    assert host.cpu_model and set(host.flags) <= set(P.MATRIX_FLAGS)


@pytest.mark.parametrize("host, want", [(ZEN4, "bf16"), (XEON_NO_AMX, "fp32")])
def test_extract_auto_resolves_for_the_actors_host(monkeypatch, host, want):
    from less_ray.extract import job
    seen = {}

    def fake_probe(device, use_cache=True, threads=None):
        seen.update(device=device, threads=threads)
        return host

    monkeypatch.setattr(P, "probe", fake_probe)
    cfg = job.ExtractConfig(data="d.jsonl", checkpoint="ckpt", out="out", actor_num_cpus=2)
    got, why = job.resolved_precision(cfg)
    assert got == want and host.cpu_model in why
    assert seen == {"device": "cpu", "threads": 2}  # measured at the actors' thread count
    cfg.precision = "fp32"
    assert job.resolved_precision(cfg) == ("fp32", "as configured")
    # GPU actors from a driver without a GPU: bf16, saying so
    gpu = job.ExtractConfig(data="d.jsonl", checkpoint="ckpt", out="out", actor_num_gpus=1)
    import torch
    if not torch.cuda.is_available():
        got, why = job.resolved_precision(gpu)
        assert got == "bf16" and "GPU actors" in why

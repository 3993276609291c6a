"""Data selectors beside LESS, each a Ray Data job writing the same score folder (see `base`).

`SELECTOR_MODULES` maps a selector's name to the module (in this package) that registers it;
adding a selector is one line here plus its module. Modules are imported only when used.
"""
from .base import (ALL_TASK, PoolScorer, Selector, SelectorConfig, get_selector, load_selector_config, register,
                   run_selector, score_pool, selector_names)

SELECTOR_MODULES: dict[str, str] = {
    "random": "random_full",
    "full": "random_full",
    "rds": "rds",
    "rds_plus": "rds_plus",
    "kcenter": "kcenter",
    "kcenter_all": "kcenter",
    "el2n": "loss_stats", "grand": "loss_stats", "perplexity": "loss_stats", "learnability": "loss_stats",
    "alpagasus": "alpagasus",
    "deita": "deita",
    "mods": "mods",
    "instruction_mining": "instruction_mining",
    "deft_ucs": "deft_ucs",
    "fusion": "fusion",
}

__all__ = ["ALL_TASK", "PoolScorer", "SELECTOR_MODULES", "Selector", "SelectorConfig", "get_selector",
           "load_selector_config", "register", "run_selector", "score_pool", "selector_names"]

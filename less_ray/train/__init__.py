"""LESS steps 1 and 4 on Ray Train + DeepSpeed: warmup (LoRA, AdamW moments in every epoch
checkpoint) and target training on a selection."""
from .checkpoint import load_checkpoint_moments, read_state, read_warmup_manifest
from .config import (DeepSpeedSettings, LoraSettings, OptimSettings, RaySettings, ScalingSettings,
                     TrainConfig, WarmupConfig)
from .runner import run_train, run_warmup

__all__ = ["WarmupConfig", "TrainConfig", "LoraSettings", "OptimSettings", "ScalingSettings",
           "DeepSpeedSettings", "RaySettings", "run_warmup", "run_train", "load_checkpoint_moments",
           "read_state", "read_warmup_manifest"]

"""Typed configs of `less-ray warmup` and `less-ray train`; YAML maps onto them 1:1.

Defaults are LESS's (scripts/train/base_training_args.sh + the paper): LoRA r=128,
alpha=512, dropout 0.1 on q/k/v/o; AdamW lr 2e-5, betas (0.9, 0.999), eps 1e-8, no weight
decay, gradient clipping 1.0 (HF Trainer's default, which LESS keeps); linear schedule with
3% warmup; 4 epochs; effective batch 128; max length 2048; bf16 on GPU, on a CPU where measured faster.
The loss, as in LESS (HF Trainer), is each micro-batch's mean over its label tokens; an
optimizer step follows the average of those means over accumulation steps and workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Optional
from ..core.formatting import ChatFormat
from ..config import path_field


@dataclass
class LoraSettings:
    enabled: bool = True  # false = full fine-tune (target training only; warmup needs LoRA)
    r: int = 128
    alpha: int = 512
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class OptimSettings:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    scheduler: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = 0.03
    epochs: int = 4


@dataclass
class ScalingSettings:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # fractional is fine; never ask for more CPUs than exist
    effective_batch_size: int = 128  # per_device_batch_size x accumulation x num_workers
    per_device_batch_size: int = 1


@dataclass
class DeepSpeedSettings:
    zero_stage: int = 0  # 0-3
    # auto: bf16 on GPU; on a CPU bf16 for LoRA (ZeRO 0-2) where its measured bf16 matmul beats fp32
    # (the precision probe), else fp32 (engine.resolve_dtype). bf16 LoRA: the frozen base in bf16, the
    # adapter and AdamW in fp32; resolved before the run, recorded in config.yaml and every state
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False


@dataclass
class RaySettings:
    address: Optional[str] = None  # None: join a running Ray if initialised, else start one here
    num_cpus: Optional[int] = None  # for the embedded Ray only
    storage_path: Optional[str] = path_field("out", None)  # Ray Train storage (run state, resume checkpoints); default <out>/ray
    max_failures: int = 1  # worker failures to recover from (resume from the last epoch checkpoint)
    controller_failure_limit: int = -1  # Ray's default; tests set 0 so misconfigurations fail fast


@dataclass(kw_only=True)
class TrainingSettings:
    """How a model is trained: what warmup and target training (and the pipeline's options
    for them) share."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)

    def training_settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(TrainingSettings)}


@dataclass(kw_only=True)
class TrainingJob(TrainingSettings):
    """A training run on Ray: the settings, the examples' formatting, seeds and the Ray to use."""
    seed: int = 0  # LoRA init, epoch shuffles, dropout
    chat_format: ChatFormat = "less"  # less (LESS's tokens) | tulu_stripped | template
    max_seq_length: int = 2048
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass
class WarmupConfig(TrainingJob):
    pool: str = path_field("in")  # the candidate pool (schema JSONL/Parquet)
    out: str = path_field("out")
    base_model: str = path_field("model")  # local HF folder (a hub name only with LESS_RAY_ALLOW_HUB=1)
    percentage: float = 0.05
    data_seed: int = 3  # seeds the warmup draw (LESS advertises DATA_SEED=3 but never uses it for this)


@dataclass
class TrainConfig(TrainingJob):
    data: str = path_field("in")  # the selection (schema JSONL/Parquet); every record is trained on
    out: str = path_field("out")
    base_model: str = path_field("model")  # may differ from the warmup model (LESS-T)

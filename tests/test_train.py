"""Warmup / target training on Ray Train + DeepSpeed, checked against plain single-process torch.

The reference loop below is written from the spec, not from less_ray.train: peft LoRA with
the same seeded init, torch.optim.AdamW, HF's linear schedule, clipping, and the
data-parallel split (each worker's micro-batch loss is its own token mean; DeepSpeed
averages gradients over workers and accumulation steps).
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch

from less_ray.config import load_config, save_config
from less_ray.core.formatting import FormatConfig, collate, tokenize_records
from less_ray.data.io import read_records, write_jsonl

N_POOL, PERCENTAGE, DATA_SEED, SEED = 200, 0.11, 3, 0  # 22 warmup examples: a wrapped last step
LR, EPOCHS, WARMUP_RATIO, CLIP = 1e-3, 2, 0.2, 0.4  # norms here are ~0.4: clipping acts on some steps
PER_DEVICE, WORKERS, EFFECTIVE = 2, 2, 8  # accumulation 2
MAX_LEN, R, ALPHA = 128, 8, 16
TOL = 1e-5
# bf16 base: a last-bit difference in an fp32 adapter weight (ZeRO 2's reduction order) can flip the
# bf16 rounding of an activation, so equal steps agree less closely (measured: ZeRO 0 <= 1e-5,
# ZeRO 2 4e-5) while bf16's moments differ from the fp32 run's by ~1e-2
BF16_TOL = 2e-4


def _overrides(pool, out, model, stage, **extra):
    cfg = {
        "pool": str(pool), "out": str(out), "base_model": str(model), "percentage": PERCENTAGE,
        "data_seed": DATA_SEED, "seed": SEED, "max_seq_length": MAX_LEN,
        "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0},
        "optim": {"epochs": EPOCHS, "lr": LR, "warmup_ratio": WARMUP_RATIO, "max_grad_norm": CLIP},
        "scaling": {"num_workers": WORKERS, "effective_batch_size": EFFECTIVE,
                    "per_device_batch_size": PER_DEVICE, "cpus_per_worker": 1},
        "deepspeed": {"zero_stage": stage, "dtype": "float32"},  # auto may pick bf16 on this host
        "ray": {"max_failures": 1, "controller_failure_limit": 0},
    }
    cfg.update(extra)
    return cfg


# --- the independent reference -------------------------------------------------------------

def reference_run(model_dir, examples, epochs, lora=True, seed=SEED, dtype=torch.float32):
    """Plain torch: returns {epoch: (moments {name: (m, v)}, avg lr, per-step mean micro-batch loss)}
    and final trainable weights. dtype bf16: the base model in bf16 and the LoRA weights cast to
    fp32 by hand (plain torch AdamW on fp32 parameters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if lora:
        torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
                               autocast_adapter_dtype=False)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    n, batch = len(examples), PER_DEVICE * (EFFECTIVE // (PER_DEVICE * WORKERS)) * WORKERS
    accumulation = EFFECTIVE // (PER_DEVICE * WORKERS)
    steps = math.ceil(n / batch)
    total = steps * epochs
    sched = get_linear_schedule_with_warmup(opt, math.ceil(WARMUP_RATIO * total), total)
    out = {}
    for epoch in range(1, epochs + 1):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        order = np.concatenate([perm] * math.ceil(steps * batch / n))[: steps * batch]
        lrs, step_losses = [], []
        for s in range(steps):
            opt.zero_grad()
            micro = []
            for a in range(accumulation):
                for rank in range(WORKERS):
                    at = s * batch + (a * WORKERS + rank) * PER_DEVICE
                    b = collate([examples[i] for i in order[at:at + PER_DEVICE]], tok.pad_token_id)
                    loss = model(**b).loss
                    micro.append(loss.item())
                    (loss / (accumulation * WORKERS)).backward()
            step_losses.append(sum(micro) / len(micro))
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out[epoch] = ({k: (opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
                       for k, p in named}, sum(lrs) / len(lrs), step_losses)
    return out, {k: p.detach().clone() for k, p in named}


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _examples(path, model_dir):
    from less_ray.models import load_tokenizer
    from less_ray.train import WarmupConfig
    fmt = FormatConfig(WarmupConfig.__dataclass_fields__["chat_format"].default, MAX_LEN)  # what warmup trains on
    kept, _ = tokenize_records(read_records(path).records, load_tokenizer(model_dir), fmt)
    return kept


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180",  # fail, don't hang
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one actor process less per run
           "DS_ACCELERATOR": "cpu"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: os.environ.get(k, v) for k, v in env.items()})  # raylet and workers inherit
    if ray.is_initialized():
        ray.shutdown()
    # no dashboard: it costs ~10 s of CPU at start; Ray Train then logs that its
    # placement-group cleaner cannot reach the state API (harmless)
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never join a `ray start` head
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    from less_ray.data.demo import generate_pool
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    write_jsonl(generate_pool(N_POOL, seed=0), path)
    return path


@pytest.fixture(scope="module")
def warmup_reference(pool_file, tiny_model_dir, tmp_path_factory):
    pool = read_records(pool_file).records
    k = int(N_POOL * PERCENTAGE)
    chosen = [pool[i] for i in np.sort(np.random.default_rng(DATA_SEED).permutation(N_POOL)[:k])]
    path = tmp_path_factory.mktemp("ref") / "warmup.jsonl"
    write_jsonl(chosen, path)
    epochs, weights = reference_run(tiny_model_dir, _examples(path, tiny_model_dir), EPOCHS)
    return {"records": chosen, "epochs": epochs, "weights": weights}


@pytest.fixture(scope="module")
def warmup_reference_bf16(warmup_reference, tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref_bf16") / "warmup.jsonl"
    write_jsonl(warmup_reference["records"], path)
    epochs, weights = reference_run(tiny_model_dir, _examples(path, tiny_model_dir), EPOCHS, dtype=torch.bfloat16)
    return {"records": warmup_reference["records"], "epochs": epochs, "weights": weights}


# --- fast unit tests ------------------------------------------------------------------------

def test_micro_batches_cover_every_example_each_epoch():
    from less_ray.train.plan import micro_batches
    n, world, acc, per = 22, 2, 2, 2
    for epoch in (1, 2):
        per_rank = [micro_batches(n, 0, epoch, per, acc, world, r) for r in range(world)]
        assert len(per_rank[0]) == len(per_rank[1]) == 3 * acc  # ceil(22/8) steps
        seen = [i for mbs in per_rank for mb in mbs for i in mb]
        assert len(seen) == 24 and set(seen) == set(range(n))  # 2 wrapped around, none lost
    assert micro_batches(n, 0, 1, per, acc, world, 0) != micro_batches(n, 0, 2, per, acc, world, 0)


def test_lr_schedule_matches_hf():
    from transformers import get_linear_schedule_with_warmup
    from less_ray.train.plan import lr_factor, warmup_steps
    total = 37
    warm = warmup_steps(total, 0.03)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.03 * total), total)
    for step in range(total):
        assert lr_factor(step, total, warm) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_draw_uses_the_seed():
    from less_ray.data.demo import generate_pool
    from less_ray.train.runner import draw_warmup
    pool = generate_pool(100, seed=0)
    a, b, c = draw_warmup(pool, 0.1, 3), draw_warmup(pool, 0.1, 3), draw_warmup(pool, 0.1, 4)
    assert len(a) == 10 and a == b and a != c
    assert [r.id for r in a] == [r.id for r in pool if r in a]  # pool order kept


def test_accumulation_must_divide():
    from less_ray.train.plan import accumulation_steps
    assert accumulation_steps(128, 1, 4) == 32
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(10, 2, 4)


def test_training_dtype_auto_follows_the_hosts_measured_rates(monkeypatch):
    """deepspeed.dtype auto: bf16 on GPU; on a CPU bf16 for LoRA only where the probe measured bf16
    matmuls faster (the probe extraction uses), fp32 for a CPU full fine-tune; explicit dtypes kept."""
    from less_ray.core import precision
    from less_ray.train.engine import deepspeed_bf16, deepspeed_config, resolve_dtype
    hosts = {"zen4": precision.Host("cpu", "AMD EPYC (Zen 4)", ("avx512_bf16",), 86.0, 206.0),
             "xeon": precision.Host("cpu", "Intel Xeon", ("avx512_bf16",), 161.0, 82.0)}
    asked = []
    for name, host in hosts.items():
        monkeypatch.setattr(precision, "probe", lambda device, threads=None, host=host: asked.append(threads) or host)
        dtype, why = resolve_dtype("auto", use_gpu=False, lora=True, zero_stage=2, threads=2)
        assert dtype == {"zen4": "bfloat16", "xeon": "float32"}[name] and host.cpu_model in why, why
    assert asked == [2, 2]  # at the workers' thread count
    assert resolve_dtype("auto", use_gpu=False, lora=False)[0] == "float32"
    assert resolve_dtype("auto", use_gpu=False, lora=True, zero_stage=3)[0] == "float32"
    assert resolve_dtype("auto", use_gpu=True, lora=True)[0] == "bfloat16"
    assert resolve_dtype("float32", use_gpu=True, lora=True) == ("float32", "as configured")
    assert asked == [2, 2]  # none of those probed
    # LoRA in bf16 needs no DeepSpeed bf16 mode (fp32 adapter and AdamW over a bf16 base); a full
    # fine-tune in bf16 does
    assert not deepspeed_bf16("bfloat16", lora=True, zero_stage=2) and deepspeed_bf16("bfloat16", lora=False, zero_stage=0)
    assert deepspeed_bf16("bfloat16", lora=True, zero_stage=3) and not deepspeed_bf16("float32", lora=False, zero_stage=3)
    assert deepspeed_config(0, 1, 1, 1, 1.0, "bfloat16", lora=True)["bf16"] == {"enabled": False}
    assert deepspeed_config(1, 1, 1, 1, 1.0, "bfloat16", lora=False)["bf16"] == {"enabled": True}


def test_example_configs_load_and_round_trip(tmp_path):
    from pathlib import Path
    from less_ray.train import TrainConfig, WarmupConfig
    root = Path(__file__).resolve().parents[1] / "configs"
    for cls, name in ((WarmupConfig, "warmup_demo.yaml"), (TrainConfig, "train_demo.yaml")):
        cfg = load_config(cls, root / name)
        save_config(cfg, tmp_path / name)
        assert load_config(cls, tmp_path / name) == cfg
    defaults = load_config(WarmupConfig, None, {"pool": "p", "out": "o", "base_model": "m"})
    assert (defaults.lora.r, defaults.lora.alpha, defaults.lora.dropout) == (128, 512, 0.1)
    assert (defaults.optim.lr, defaults.optim.warmup_ratio, defaults.optim.epochs) == (2e-5, 0.03, 4)
    assert (defaults.scaling.effective_batch_size, defaults.max_seq_length, defaults.percentage) == (128, 2048, 0.05)


# --- Ray Train + DeepSpeed runs -------------------------------------------------------------

def _check_warmup_against_reference(out, ref, model_dir, stage, tol=TOL):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from less_ray.train import WarmupConfig, load_checkpoint_moments, read_state, read_warmup_manifest

    drawn = read_records(out / "warmup_data.jsonl").records
    assert drawn == ref["records"]
    ids_hash = hashlib.sha256(b"".join(r.id.encode() + b"\n" for r in drawn)).hexdigest()[:16]
    manifest = read_warmup_manifest(out)
    assert [c["epoch"] for c in manifest["checkpoints"]] == list(range(1, EPOCHS + 1))
    assert load_config(WarmupConfig, out / "config.yaml").deepspeed.zero_stage == stage
    for c in manifest["checkpoints"]:
        folder = out / "checkpoints" / f"epoch_{c['epoch']}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["adapter_config.json", "adapter_model.safetensors", "optimizer_moments.safetensors", "state.json"])
        want, want_lr, want_losses = ref["epochs"][c["epoch"]]
        state = read_state(folder)
        # the loss curve: every optimizer step's mean micro-batch loss, as plain torch computes it
        assert state["train"]["step_losses"] == pytest.approx(want_losses, rel=1e-4)
        assert state["epoch"] == c["epoch"] and state["global_step"] == 3 * c["epoch"]
        assert state["avg_lr"] == pytest.approx(want_lr, rel=1e-9) and c["avg_lr"] == state["avg_lr"]
        assert state["seed"] == SEED and state["data_hash"] == ids_hash and state["base_model"] == str(model_dir)
        assert state["adam"] == {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
        assert state["config"]["deepspeed"]["zero_stage"] == stage
        got = load_checkpoint_moments(folder)
        assert set(got) == set(want) and all(".lora_" in k for k in got)  # every LoRA param, both moments
        for name, (m, v) in want.items():
            gm, gv = got[name]
            assert gm.dtype == torch.float32 and gm.shape == m.shape and gv.shape == v.shape
            assert _rel(gm, m) <= tol and _rel(gv, v) <= tol, (name, _rel(gm, m), _rel(gv, v))
    # the last adapter holds the trained weights, and peft loads it
    last = out / "checkpoints" / f"epoch_{EPOCHS}"
    saved = load_file(str(last / "adapter_model.safetensors"))
    for name, w in ref["weights"].items():
        assert _rel(saved[name.replace(".default", "")], w) <= tol, name
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(last))


@pytest.mark.slow  # Ray Train + DeepSpeed
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_warmup_moments_match_plain_adamw(stage, ray_local, pool_file, tiny_model_dir, warmup_reference, tmp_path):
    from less_ray.train import WarmupConfig, run_warmup
    out = run_warmup(load_config(WarmupConfig, None, _overrides(pool_file, tmp_path / "w", tiny_model_dir, stage)))
    _check_warmup_against_reference(out, warmup_reference, tiny_model_dir, stage)


@pytest.mark.slow  # Ray Train + DeepSpeed
@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_warmup_trains_fp32_lora_over_a_bf16_base(stage, ray_local, pool_file, tiny_model_dir,
                                                      warmup_reference, warmup_reference_bf16, tmp_path):
    """deepspeed.dtype bfloat16 with LoRA: the base in bf16, the adapter, its gradients and AdamW's
    moments in fp32 (ZeRO 0-2); equal to plain torch AdamW over the same bf16 base."""
    from less_ray.train import WarmupConfig, load_checkpoint_moments, run_warmup
    over = _overrides(pool_file, tmp_path / "w", tiny_model_dir, stage)
    over["deepspeed"]["dtype"] = "bfloat16"
    out = run_warmup(load_config(WarmupConfig, None, over))
    assert load_config(WarmupConfig, out / "config.yaml").deepspeed.dtype == "bfloat16"
    _check_warmup_against_reference(out, warmup_reference_bf16, tiny_model_dir, stage, tol=BF16_TOL)
    # and not the fp32 run's: the bf16 base moved the moments far beyond that tolerance
    fp32 = warmup_reference["epochs"][EPOCHS][0]
    got = load_checkpoint_moments(out / "checkpoints" / f"epoch_{EPOCHS}")
    assert max(_rel(got[k][1], fp32[k][1]) for k in fp32) > 10 * BF16_TOL


@pytest.mark.slow  # Ray Train + DeepSpeed
def test_killed_worker_resumes_from_last_checkpoint(ray_local, pool_file, tiny_model_dir, warmup_reference,
                                                    tmp_path, monkeypatch):
    """Rank 1 exits mid-epoch 2 (ZeRO 1); Ray restarts the group from the epoch-1 checkpoint
    and the finished run is exactly the uninterrupted one."""
    from less_ray.train import WarmupConfig, loop, run_warmup
    marker = tmp_path / "failed_once"
    real_loop = loop.train_loop_per_worker

    def dying_loop(config):  # defined here, so Ray ships it to the workers by value
        import os

        from less_ray.train import plan
        real_batches = plan.micro_batches

        def micro_batches(n, seed, epoch, per_device, accumulation, world, rank):
            for step, idx in enumerate(real_batches(n, seed, epoch, per_device, accumulation, world, rank)):
                if (rank, epoch, step) == (1, 2, 3) and not marker.exists():  # rank 1, epoch 2, step 3 of 6
                    marker.write_text("exited")
                    os._exit(1)
                yield idx
        plan.micro_batches = micro_batches  # in this worker process only
        return real_loop(config)
    monkeypatch.setattr(loop, "train_loop_per_worker", dying_loop)
    out = run_warmup(load_config(WarmupConfig, None, _overrides(pool_file, tmp_path / "w", tiny_model_dir, 1)))
    assert marker.exists()
    _check_warmup_against_reference(out, warmup_reference, tiny_model_dir, 1)


@pytest.mark.slow  # Ray Train + DeepSpeed
def test_target_training_full_finetune_other_base(ray_local, pool_file, tmp_path):
    """LESS-T: full fine-tune of a different (smaller) base on a selection, ZeRO 2."""
    from transformers import AutoModelForCausalLM
    from less_ray.demo import TinyModelConfig, build_demo_model
    from less_ray.train import TrainConfig, read_state, run_train
    base = build_demo_model(tmp_path / "base", seed=1, n_pool=400,
                            model=TinyModelConfig(hidden_size=32, intermediate_size=64, num_heads=2))
    selection = tmp_path / "selection.jsonl"
    write_jsonl(read_records(pool_file).records[:16], selection)
    over = _overrides(pool_file, tmp_path / "t", base, 2, data=str(selection), lora={"enabled": False})
    del over["pool"], over["percentage"], over["data_seed"]
    over["optim"]["epochs"] = 1
    cfg = load_config(TrainConfig, None, over)
    out = run_train(cfg)
    assert load_config(TrainConfig, out / "config.yaml") == cfg
    state = read_state(out)
    assert state["epoch"] == 1 and state["global_step"] == 2 and state["base_model"] == str(base)
    trained = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    assert (out / "model" / "tokenizer.json").exists()
    _, want = reference_run(base, _examples(selection, base), epochs=1, lora=False)
    got = dict(trained.named_parameters())
    for name, w in want.items():
        assert _rel(got[name].detach(), w) <= TOL, name
    before = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    assert not torch.equal(before.lm_head.weight, got["lm_head.weight"])
    assert json.loads((out / "state.json").read_text())["config"]["lora"]["enabled"] is False

"""fp32 vs bf16 on this CPU for the #19 run's two remaining heavy pieces: held-out loss eval
(per example, SmolLM2) and LoRA training through the product's run_train."""
import json, sys, time, statistics
from pathlib import Path
import torch
from less_ray.data.io import read_records
from less_ray.eval.runner import EvalConfig, answer_loss, load_for_eval

RUN = Path("/work/runs/real19"); MODEL = RUN / "smollm2"
base = json.loads((RUN / "evals/base.loss.json").read_text())
torch.set_num_threads(2)
what = sys.argv[1]
if what == "eval":
    n = int(sys.argv[2])
    cfg = EvalConfig(model=str(MODEL), base_model=str(MODEL), chat_format="less", max_prompt_tokens=1024, batch_size=1)
    for dtype in ["bfloat16", "float32"]:
        m, tok = load_for_eval(str(MODEL), str(MODEL), dtype)
        t0 = time.time(); diffs = []
        for t in ["bbh", "mmlu", "tydiqa"]:
            recs = read_records(RUN / f"data/heldout_{t}.jsonl").records[:n]
            for r in recs:
                v = answer_loss([r], m, tok, cfg)["mean"]
                diffs.append(v - base["tasks"][t]["per_example"][r.id])
        dt = time.time() - t0
        print(json.dumps({"dtype": dtype, "examples": len(diffs), "seconds": round(dt, 1),
                          "mean_diff_vs_fp32_file": statistics.fmean(diffs),
                          "max_abs_diff": max(map(abs, diffs)), "sd_diff": statistics.pstdev(diffs)}), flush=True)
elif what == "train":
    from less_ray.train.config import (DeepSpeedSettings, LoraSettings, OptimSettings, RaySettings,
                                       ScalingSettings, TrainConfig)
    from less_ray.train.runner import run_train
    from less_ray.ray_runtime import ensure_ray
    ensure_ray(None, 2)
    n = int(sys.argv[2]); dtype = sys.argv[3]
    data = Path(f"/tmp/probe/train{n}.jsonl")
    lines = (RUN / "less/scores/bbh/top_p0.05.jsonl") if False else (RUN / "data/pool.jsonl")
    data.write_text("".join(lines.read_text().splitlines(True)[:n]))
    cfg = TrainConfig(data=str(data), out=f"/tmp/probe/train_{dtype}", base_model=str(MODEL), seed=0,
                      chat_format="less", max_seq_length=512, ray=RaySettings(num_cpus=2),
                      lora=LoraSettings(r=8, alpha=32, dropout=0.1),
                      scaling=ScalingSettings(num_workers=1, use_gpu=False, cpus_per_worker=2.0,
                                              effective_batch_size=8, per_device_batch_size=4),
                      optim=OptimSettings(lr=2e-4, epochs=1),
                      deepspeed=DeepSpeedSettings(zero_stage=0, dtype=dtype))
    t0 = time.time(); run_train(cfg)
    st = json.loads(Path(f"/tmp/probe/train_{dtype}/state.json").read_text())
    print(json.dumps({"dtype": dtype, "examples": n, "seconds": round(time.time() - t0, 1),
                      "state": {k: st[k] for k in list(st)[:12]}}, default=str), flush=True)

"""FLOPs of our gradient pass per token on SmolLM2-135M, LoRA r=128 q/k/v/o (torch flop_registry count: matmuls and attention,
the per-example LoRA products included), for the achieved-rate line in docs/speed.md (not a test)."""
import sys, torch
sys.path.insert(0, __import__("os").path.dirname(__file__)); sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")
torch.set_num_threads(1)
from bench_extract_core import flop_counter
from peft import LoraConfig, get_peft_model
from less_ray.models import load_model_and_tokenizer
from less_ray.core.grads import LoraGradientComputer
from less_ray.core.formatting import collate, TokenizedExample
base, tok = load_model_and_tokenizer("/tmp/smollm2")
model = get_peft_model(base, LoraConfig(r=128, lora_alpha=512, target_modules=["q_proj","k_proj","v_proj","o_proj"])).eval()
comp = LoraGradientComputer(model)
for T in (64, 114, 200):
    ex = [TokenizedExample(str(i), list(range(5, 5+T)), [-100]*(T//3) + list(range(5+T//3, 5+T)), False) for i in range(4)]
    with flop_counter() as fc:
        comp.run(collate(ex, 0), lambda k, g: None)
    print(T, "GFLOP per token", fc.total / (4*T) / 1e9, "per example", fc.total/4/1e9)

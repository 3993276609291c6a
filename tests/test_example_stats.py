"""Per-example loss, EL2N and GraNd on padded batches against one-example-at-a-time references.

The reference runs each example alone and unpadded through HF's own loss and full logits,
computes EL2N token by token with an explicit loop, and the gradient norm with plain
torch.autograd.grad; the base-model stats are checked against a separately loaded base model.
"""
import pytest
import torch

from less_ray.core.checkpoints import load_lora_checkpoint
from less_ray.core.example_stats import ExampleStatsComputer
from less_ray.core.formatting import IGNORE_INDEX, FormatConfig, collate, tokenize_records
from less_ray.data.demo import generate_pool
from less_ray.models import load_model_and_tokenizer
from less_ray.testing.fake_checkpoint import make_lora_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt_dir(tiny_model_dir, tmp_path_factory):
    return make_lora_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt"), seed=3)


@pytest.fixture(scope="module")
def model(tiny_model_dir, ckpt_dir):
    return load_lora_checkpoint(tiny_model_dir, ckpt_dir)[0]


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    pool = generate_pool(300)
    multi = [r for r in pool if sum(m["role"] == "assistant" for m in r.messages) > 1]
    kept, skipped = tokenize_records(pool[:4] + multi[:2], tiny_tokenizer, FormatConfig(max_seq_length=96))
    assert not skipped and len({len(e.input_ids) for e in kept}) >= 3  # padding is exercised
    return kept


def reference(model, ex, grads: bool):
    """loss, el2n, grad norm of one unpadded example."""
    ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
    out = model(input_ids=ids, labels=labels)
    el2n = []
    probs = torch.softmax(out.logits[0].double(), dim=-1)
    for t in range(len(ex.labels) - 1):
        y = ex.labels[t + 1]
        if y == IGNORE_INDEX:
            continue
        onehot = torch.zeros(probs.shape[1], dtype=torch.float64)
        onehot[y] = 1.0
        el2n.append(torch.linalg.vector_norm(probs[t] - onehot).item())
    norm = None
    if grads:
        params = [p for p in model.parameters() if p.requires_grad]
        g = torch.autograd.grad(out.loss, params)
        norm = torch.sqrt(sum((x.double() ** 2).sum() for x in g)).item()
    return out.loss.item(), sum(el2n) / len(el2n), norm


@pytest.mark.parametrize("pad", [0, 7])
def test_grad_stats_match_one_at_a_time(model, examples, pad):
    model.eval()
    res = ExampleStatsComputer(model).grad_stats(collate(examples, pad))
    for i, ex in enumerate(examples):
        loss, el2n, norm = reference(model, ex, grads=True)
        assert res["loss"][i].item() == pytest.approx(loss, rel=TOL, abs=TOL)
        assert res["el2n"][i].item() == pytest.approx(el2n, rel=TOL, abs=TOL)
        assert res["grand"][i].item() == pytest.approx(norm, rel=TOL, abs=1e-6)
        assert res["n_tokens"][i].item() == ex.n_label_tokens - (ex.labels[0] != IGNORE_INDEX)
    assert (res["grand"] > 1e-3).all()  # the LoRA path is live (random lora_B)


def test_forward_stats_checkpoint_and_base(model, examples, tiny_model_dir):
    model.eval()
    comp = ExampleStatsComputer(model)
    batch = collate(examples, 0)
    ck = comp.forward_stats(batch, adapter=True)
    base = comp.forward_stats(batch, adapter=False)
    plain, _ = load_model_and_tokenizer(tiny_model_dir)
    plain.eval()
    with torch.no_grad():
        for i, ex in enumerate(examples):
            loss, el2n, _ = reference(model, ex, grads=False)
            assert ck["loss"][i].item() == pytest.approx(loss, rel=TOL, abs=TOL)
            assert ck["el2n"][i].item() == pytest.approx(el2n, rel=TOL, abs=TOL)
            b_loss, b_el2n, _ = reference(plain, ex, grads=False)  # the base model, loaded on its own
            assert base["loss"][i].item() == pytest.approx(b_loss, rel=TOL, abs=TOL)
            assert base["el2n"][i].item() == pytest.approx(b_el2n, rel=TOL, abs=TOL)
    assert not torch.allclose(ck["loss"], base["loss"])  # the adapter changes the model


def test_el2n_bounds_hand_case():
    """A 2-token vocabulary by hand: p = (0.5, 0.5) for label 0 gives ‖(−0.5, 0.5)‖ = √0.5."""
    from less_ray.core.example_stats import token_stats
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    targets = torch.tensor([0, 0, 0])
    rows = torch.tensor([0, 1, 1])
    s = token_stats(logits, targets, rows, 2)
    assert s["el2n"][0].item() == pytest.approx(0.5 ** 0.5)
    assert s["el2n"][1].item() == pytest.approx((0.0 + 2 ** 0.5) / 2)  # right, then confidently wrong
    assert s["loss"][0].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert s["n_tokens"].tolist() == [1, 2]

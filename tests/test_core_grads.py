"""Batched per-example LoRA gradients and LESS features against a one-at-a-time reference.

The reference takes each example alone, unpadded, through HF's own loss and
torch.autograd.grad, and applies the Adam/projection/normalisation formulas written
out here independently of less_ray.core.grads.
"""
import pytest
import torch

from less_ray.core.checkpoints import MOMENTS_FILE, load_lora_checkpoint, load_moments
from less_ray.core.formatting import IGNORE_INDEX, FormatConfig, TokenizedExample, collate, tokenize_records
from less_ray.core.grads import LoraGradientComputer
from less_ray.core.projection import IdentityProjector, RademacherProjector
from less_ray.core.sparse_projection import SparseJLProjector
from less_ray.data.demo import generate_pool

TOL = 1e-4
PAD = 0  # not the pad token on purpose: whatever the padding id, nothing may leak from it
BETAS, EPS = (0.9, 0.999), 1e-8


@pytest.fixture(scope="module")
def ckpt_dir(tiny_model_dir, tmp_path_factory):
    """A warmup-style checkpoint: LoRA r=4 on q/k/v/o with random lora_B, random moments."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from less_ray.models import load_model_and_tokenizer
    base, _ = load_model_and_tokenizer(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(0)
    moments = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_B" in name:  # peft starts B at 0, which would make every lora_A gradient 0
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        moments[name + ".exp_avg"] = torch.randn(p.shape, generator=gen) * 1e-3
        moments[name + ".exp_avg_sq"] = (torch.randn(p.shape, generator=gen) * 1e-3) ** 2
    out = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(out)
    save_file(moments, str(out / MOMENTS_FILE))
    (out / "state.json").write_text("{}")
    return out


@pytest.fixture(scope="module")
def model(tiny_model_dir, ckpt_dir):
    return load_lora_checkpoint(tiny_model_dir, ckpt_dir)[0]


@pytest.fixture(scope="module")
def moments(ckpt_dir, model):
    return load_moments(ckpt_dir, model)


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    """Mixed lengths, two-turn conversations and a system message."""
    pool = generate_pool(300)
    multi = [r for r in pool if sum(m["role"] == "assistant" for m in r.messages) > 1]
    system = [r for r in pool if r.messages[0]["role"] == "system"]
    assert multi and system
    kept, skipped = tokenize_records(pool[:3] + multi[:2] + system[:1], tiny_tokenizer,
                                     FormatConfig(max_seq_length=96))
    assert not skipped and len({len(e.input_ids) for e in kept}) >= 3
    return kept


def _params(model):
    return [p for _, p in model.named_parameters() if p.requires_grad]


def reference_grad(model, ex: TokenizedExample) -> tuple[torch.Tensor, float]:
    """One example, unpadded: HF's mean token loss, plain autograd."""
    loss = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss
    grads = torch.autograd.grad(loss, _params(model))
    return torch.cat([g.reshape(-1) for g in grads]), loss.item()


def reference_feature(g, kind, moments, R):
    if kind == "adam":
        m = torch.cat([t.reshape(-1) for t in moments.exp_avg])
        v = torch.cat([t.reshape(-1) for t in moments.exp_avg_sq])
        m1 = BETAS[0] * m + (1 - BETAS[0]) * g
        v1 = BETAS[1] * v + (1 - BETAS[1]) * g ** 2
        g = m1 / (v1 + EPS).sqrt()
    f = g @ R.double() if R is not None else g
    return f / f.norm(), f.norm()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def references(model, examples):
    model.eval()
    return [reference_grad(model, e) for e in examples]


def test_per_example_grads_match_one_at_a_time(model, examples, references):
    computer = LoraGradientComputer(model)
    out = computer.per_example_grads(collate(examples, PAD))
    assert out["grads"].shape == (len(examples), computer.num_params)
    for i, (e, (g, loss)) in enumerate(zip(examples, references)):
        assert g.norm() > 0
        assert rel(out["grads"][i], g) <= TOL, i
        assert out["loss"][i].item() == pytest.approx(loss, rel=1e-5)
        assert out["n_tokens"][i].item() == sum(x != IGNORE_INDEX for x in e.labels[1:])
    # every block matters: lora_A and lora_B gradients are both non-zero
    for k, name in enumerate(computer.names):
        block = out["grads"][:, computer.offsets[k]:computer.offsets[k] + computer.sizes[k]]
        assert block.abs().sum() > 0, name


def _grouped(computer, examples, *args, **kw):
    """features_grouped over uneven batches, its per-batch results stitched back together."""
    parts = computer.features_grouped([collate(examples[a:b], PAD) for a, b in ((0, 2), (2, 3), (3, None))],
                                      *args, **kw)
    assert [len(p["loss"]) for p in parts] == [2, 1, len(examples) - 3]
    return {key: {d: torch.cat([p[key][d] for p in parts]) for d in parts[0][key]}
            for key in ("features", "norms")}


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("proj", ["rademacher", "sjlt", "identity"])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("split", [None, 0])
def test_features_match_reference(model, moments, examples, references, kind, proj, grouped, split):
    # split 0: every batch cut into one sub-batch per distinct length (the most cutting there is)
    computer = LoraGradientComputer(model, split_overhead=split)
    P = computer.num_params
    if proj == "identity":
        projector, mats = IdentityProjector(P), {P: None}
    elif proj == "sjlt":  # small steps so one parameter spans several hashed steps
        projector = SparseJLProjector(P, [64, 256], seed=7, s=2, step_rows=100)
        mats = {d: projector.matrix(d) for d in (64, 256)}
    else:  # small blocks so one parameter spans several generated blocks
        projector = RademacherProjector(P, [64, 256], seed=7, block_rows=100)
        mats = {d: projector.matrix(d) for d in (64, 256)}
    if grouped:  # several batches, one projection pass
        out = _grouped(computer, examples, kind, projector, moments=moments, betas=BETAS, eps=EPS)
    else:
        out = computer.features(collate(examples, PAD), kind, projector, moments=moments, betas=BETAS, eps=EPS)
    assert set(out["features"]) == set(mats)
    for d, R in mats.items():
        feats, norms = out["features"][d], out["norms"][d]
        assert feats.shape == (len(examples), d)
        for i, (g, _) in enumerate(references):
            ref, ref_norm = reference_feature(g.double(), kind, moments, R)
            if kind == "adam":  # the moments must not drown the gradient, or the test is weak
                assert rel(reference_feature(0 * g.double(), kind, moments, R)[0], ref) > 0.1
            assert rel(feats[i], ref) <= TOL, (d, i)
            assert norms[i].item() == pytest.approx(ref_norm.item(), rel=TOL)
        assert torch.allclose(feats.norm(dim=1), torch.ones(len(examples)), atol=1e-5)


def test_length_split_cuts_right_padded_batches_only(model, examples):
    batch = collate(examples, PAD)
    lengths = batch["attention_mask"].sum(1)
    parts = LoraGradientComputer(model, split_overhead=0)._length_split(batch)
    assert len(parts) == len(set(lengths.tolist()))
    assert sorted(torch.cat([rows for rows, _ in parts]).tolist()) == list(range(len(examples)))
    for rows, sub in parts:  # each sub-batch: its rows, trimmed to their own longest, nothing lost
        w = int(lengths[rows].max())
        assert sub["input_ids"].shape == (len(rows), w)
        assert torch.equal(sub["labels"], batch["labels"][rows, :w])
        assert int(sub["attention_mask"].sum()) == int(lengths[rows].sum())
    assert LoraGradientComputer(model, split_overhead=None)._length_split(batch) is None
    assert LoraGradientComputer(model, split_overhead=10 ** 6)._length_split(batch) is None
    left = {k: v.flip(1) for k, v in batch.items()}  # left padding: not cut (trimming would drop tokens)
    assert LoraGradientComputer(model, split_overhead=0)._length_split(left) is None


def test_features_do_not_depend_on_batch_company(model, moments, examples):
    computer = LoraGradientComputer(model)
    projector = RademacherProjector(computer.num_params, 128, seed=1)
    together = computer.features(collate(examples, PAD), "adam", projector, moments=moments)["features"][128]
    for i in (0, len(examples) - 1):
        alone = computer.features(collate([examples[i]], PAD), "adam", projector, moments=moments)
        assert rel(together[i], alone["features"][128][0]) <= 1e-5


def test_one_label_token_and_finite(model, moments, examples):
    one = examples[0]
    labels = [IGNORE_INDEX] * (len(one.labels) - 1) + [one.input_ids[-1]]
    single = TokenizedExample("one", one.input_ids, labels, False)
    batch = collate([single] + examples, PAD)
    computer = LoraGradientComputer(model)
    for kind in ("adam", "sgd"):
        out = computer.features(batch, kind, RademacherProjector(computer.num_params, 64), moments=moments)
        assert out["n_tokens"][0].item() == 1
        assert all(torch.isfinite(t).all() for t in (out["features"][64], out["norms"][64], out["loss"]))
    g, _ = reference_grad(model, single)
    assert rel(computer.per_example_grads(batch)["grads"][0], g) <= TOL


def test_no_label_tokens_is_an_error(model, examples):
    e = examples[0]
    empty = TokenizedExample("x", e.input_ids, [IGNORE_INDEX] * len(e.labels), False)
    with pytest.raises(ValueError, match="no label tokens"):
        LoraGradientComputer(model).per_example_grads(collate([e, empty], PAD))


def test_dropout_is_off_and_mode_restored(model, examples, references):
    computer = LoraGradientComputer(model)
    model.train()  # lora_dropout is 0.2: in train mode the gradients would be random
    try:
        a = computer.per_example_grads(collate(examples[:2], PAD))["grads"]
        assert model.training
    finally:
        model.eval()
    assert rel(a[0], references[0][0]) <= TOL


def test_checkpoint_loading(tiny_model_dir, ckpt_dir, model, moments, tmp_path):
    from safetensors.torch import load_file, save_file
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert moments.names == names and len(names) == 2 * 4 * 2  # A and B, 4 modules, 2 layers
    assert all(p.requires_grad for p in _params(model)) and not model.training
    stored = load_file(str(ckpt_dir / MOMENTS_FILE))
    assert torch.equal(moments.exp_avg_sq[3], stored[names[3] + ".exp_avg_sq"])
    # a missing key is named
    del stored[names[5] + ".exp_avg"]
    save_file(stored, str(tmp_path / MOMENTS_FILE))
    with pytest.raises(KeyError, match=names[5].replace(".", r"\.") + r"\.exp_avg"):
        load_moments(tmp_path, model)


def test_unsupported_trainable_parameter_is_named(model):
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    try:
        with pytest.raises(ValueError, match="embed_tokens"):
            LoraGradientComputer(model)
    finally:
        emb.requires_grad_(False)


def test_projector_size_mismatch(model):
    computer = LoraGradientComputer(model)
    with pytest.raises(ValueError, match="trainable parameters"):
        computer.features({}, "sgd", IdentityProjector(computer.num_params + 1))


def test_feature_cast_rounds_the_feature_before_projection(model, moments, examples, references):
    """precision less: the adam feature is rounded to fp16 before the projection (as LESS's
    `torch.stack(full_grads).to(torch.float16)`); the reference rounds the float64 feature."""
    computer = LoraGradientComputer(model, feature_cast=torch.float16)
    projector = SparseJLProjector(computer.num_params, 64, seed=2, s=2)
    R = projector.matrix(64)
    out = computer.features(collate(examples, PAD), "adam", projector, moments=moments, betas=BETAS, eps=EPS)
    m = torch.cat([t.reshape(-1) for t in moments.exp_avg]).double()
    v = torch.cat([t.reshape(-1) for t in moments.exp_avg_sq]).double()
    for i, (g, _) in enumerate(references):
        f = (BETAS[0] * m + (1 - BETAS[0]) * g.double()) / ((BETAS[1] * v + (1 - BETAS[1]) * g.double() ** 2) + EPS).sqrt()
        ref = f.half().double() @ R
        assert rel(out["features"][64][i], ref / ref.norm()) <= TOL, i


# the bf16 fast path's stated tolerances (bench/results/precision_cpu.txt measures SmolLM2 on real
# records): forming the per-example gradient as a bf16 matmul rounds each entry once, to bf16
BF16_BLOCK_TOL = 2 ** -7  # relative error of an example's gradient vs the same model's fp32-formed one
BF16_COS_SLACK = 2.0  # its features' distance from fp32's at most this many times LESS's own bf16's


def test_bf16_forms_per_example_gradients_in_bf16_within_rounding(tiny_model_dir, ckpt_dir, examples):
    """precision bf16: the per-example gradients are formed as bf16 matmuls (no fp32 copy of x and
    dy) and equal the same bf16 model's fp32-formed ones to bf16 rounding, padded rows included."""
    bf16 = load_lora_checkpoint(tiny_model_dir, ckpt_dir)[0].to(torch.bfloat16)
    batch = collate(examples, PAD)
    dtypes = []
    fast = LoraGradientComputer(bf16, split_overhead=None)
    fast.run(batch, lambda k, g: dtypes.append(g.dtype))
    assert set(dtypes) == {torch.bfloat16}
    got = fast.per_example_grads(batch)["grads"]
    ref = LoraGradientComputer(bf16, split_overhead=None, block_dtype=torch.float32).per_example_grads(batch)["grads"]
    for i in range(len(examples)):
        assert 0 < rel(got[i], ref[i]) <= BF16_BLOCK_TOL, i


def test_bf16_features_within_stated_tolerance_of_fp32(tiny_model_dir, ckpt_dir, moments, examples):
    """The fast path's features (adam and sgd) stay as close to the fp32 model's as LESS's own bf16
    (the model in bf16, gradients formed in fp32) does, within BF16_COS_SLACK."""
    fp32 = load_lora_checkpoint(tiny_model_dir, ckpt_dir)[0]
    bf16 = load_lora_checkpoint(tiny_model_dir, ckpt_dir)[0].to(torch.bfloat16)
    batch = collate(examples, PAD)
    for kind in ("adam", "sgd"):
        feats = {}
        for name, computer in (("fp32", LoraGradientComputer(fp32)),
                               ("bf16 formed in fp32", LoraGradientComputer(bf16, block_dtype=torch.float32)),
                               ("bf16", LoraGradientComputer(bf16))):
            projector = SparseJLProjector(computer.num_params, 256, seed=1)
            out = computer.features(batch, kind, projector, moments=moments, betas=BETAS, eps=EPS)
            assert out["features"][256].dtype == torch.float32 and torch.isfinite(out["features"][256]).all()
            feats[name] = out["features"][256]
        dist = {k: 1 - (feats[k] * feats["fp32"]).sum(1) for k in ("bf16 formed in fp32", "bf16")}
        assert dist["bf16"].max() <= BF16_COS_SLACK * dist["bf16 formed in fp32"].max() + 1e-6, (kind, dist)
        assert (feats["bf16"] * feats["fp32"]).sum(1).min() > 0.95, kind



@pytest.mark.parametrize("pooling", ["weighted_mean", "mean"])
@pytest.mark.parametrize("grouped, split", [(False, None), (False, 0), (True, 0)])
def test_pooled_hidden_states_from_the_gradient_pass_match_one_example_at_a_time(model, moments, examples, pooling,
                                                                                 grouped, split):
    """The extraction pass's embedding = RDS+'s (compute_influence_cosinesim.py, batch size 1):
    HF's hidden_states[-1] of the example alone, position weights (i + 1) / sum, L2-normalised."""
    computer = LoraGradientComputer(model, split_overhead=split, pooling=pooling)
    projector = RademacherProjector(computer.num_params, [64], seed=7, block_rows=100)
    if grouped:
        parts = computer.features_grouped([collate(examples[a:b], PAD) for a, b in ((0, 2), (2, 3), (3, None))],
                                          "adam", projector, moments=moments, betas=BETAS, eps=EPS)
        emb = torch.cat([p["embedding"] for p in parts])
    else:
        emb = computer.features(collate(examples, PAD), "adam", projector, moments=moments, betas=BETAS,
                                eps=EPS)["embedding"]
    assert emb.shape == (len(examples), model.config.hidden_size) and emb.dtype == torch.float32
    model.eval()
    for i, e in enumerate(examples):
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states[-1]
        w = torch.arange(hidden.size(1)).unsqueeze(0) + 1 if pooling == "weighted_mean" else torch.ones(1, hidden.size(1))
        w = w / w.sum(dim=1, keepdim=True)
        ref = torch.sum(hidden * w.unsqueeze(-1), dim=1)[0]
        ref = ref / torch.linalg.vector_norm(ref)
        assert rel(emb[i], ref) <= 1e-5, i
    plain = computer.features(collate(examples, PAD), "adam", projector, moments=moments, betas=BETAS, eps=EPS)
    assert "embedding" in plain and "embedding" not in LoraGradientComputer(model).features(
        collate(examples, PAD), "adam", projector, moments=moments, betas=BETAS, eps=EPS)

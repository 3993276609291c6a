"""The block-generated Rademacher projection: pinned scheme, invariances, JL behaviour."""
import math

import pytest
import torch

from less_ray.core.projection import (IdentityProjector, RademacherProjector, _group_keys_np, _row_keys_np,
                                      _sign_words_torch, _words_np, sign_block, sign_words)
from less_ray.core.sign_lookup import BAG_ROWS, STEP_ROWS, SignLookup

from hash_reference import M32, mix32


# --- the scheme in plain Python integers (no overflow semantics to worry about) ---------



def _ref_sign(seed, row, col):
    s = seed & (2 ** 64 - 1)
    seed_key = mix32(mix32((s & M32) ^ 0x5BD1E995) ^ (s >> 32))
    row_key = mix32(mix32((row & M32) ^ seed_key) ^ (row >> 32))
    group_key = mix32(((col // 32) * 0x9E3779B9 + 1) & M32)
    return 1.0 if (mix32(row_key ^ group_key) >> (col % 32)) & 1 else -1.0


@pytest.mark.parametrize("seed", [0, 12345, 2 ** 40 + 7])
def test_matches_python_reference(seed):
    rows = [0, 1, 31, 1000, 2 ** 31 + 5, 2 ** 33 + 1]
    cols = [0, 1, 31, 32, 33, 100, 8191]
    for r in rows:
        block = sign_block(seed, r, r + 1, 8192)[0]
        assert [block[c].item() for c in cols] == [_ref_sign(seed, r, c) for c in cols], r


def test_golden_words():
    # frozen: stored features are only comparable while these stay the same
    assert sign_words(0, 0, 2, 2).tolist() == [[1262928398, 3445026882], [2725460522, 2145693655]]


@pytest.mark.parametrize("seed,start", [(0, 0), (7, 12345), (2 ** 40 + 7, 2 ** 33 - 100)])
def test_numpy_and_torch_words_agree(seed, start):
    # CPU words come from numpy uint32 (wrapping), other devices' from torch int64 (masked):
    # the same words, also across the 2^32 row boundary
    assert torch.equal(sign_words(seed, start, start + 300, 70), _sign_words_torch(seed, start, start + 300, 70, "cpu"))


def test_projector_tiles_match_the_matrix():
    # the CPU projector multiplies tile by tile (rows x 256 columns); the result must be x @ R
    p = RademacherProjector(5000, [100, 700], seed=4)
    x = torch.randn(3, 5000)
    out = p.project(x)
    for d in (100, 700):
        assert rel(out[d], x.double() @ p.matrix(d).double()) <= 1e-5  # fp32 sums of 5000 terms


def test_matrix_independent_of_block_size():
    p = RademacherProjector(1000, [96, 300], seed=3)
    full = p.matrix(300)
    assert torch.equal(torch.cat([p.matrix(300, s, min(s + 77, 1000)) for s in range(0, 1000, 77)]), full)
    # nested dims: the 96-dim matrix is the first 96 columns, rescaled
    assert torch.equal(p.matrix(96).sign(), full[:, :96].sign())


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_projection_independent_of_batch_and_block_size():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1000, generator=gen)
    ref = x.double() @ RademacherProjector(1000, 300, seed=3).matrix(300).double()
    for block_rows in (None, 7, 64, 333, 5000):
        p = RademacherProjector(1000, [96, 300], seed=3, block_rows=block_rows)
        whole = p.project(x)
        assert rel(whole[300], ref) <= 1e-6
        # blocks fed out of order, rows one by one
        acc = p.new_accumulator(6, "cpu")
        for s in (600, 0, 250):
            e = {600: 1000, 0: 250, 250: 600}[s]
            p.accumulate(acc, x[:, s:e], s)
        pieces = p.finish(acc)
        one = p.project(x[2:3])
        for d in (96, 300):
            assert rel(pieces[d], whole[d]) <= 1e-6
            assert rel(one[d][0], whole[d][2]) <= 1e-6


def test_lookup_patterns_are_the_matrix_bits():
    # the lookup kernel's index: byte [bag, column j, chunk c], bit k = sign of row 512*bag + 8c + k
    n_cols, seed, start = 200, 5, 3 * STEP_ROWS + 64  # columns not a multiple of 64
    kernel = SignLookup(n_cols, 2, torch.float32)
    words, scratch = kernel.words_for(2 * BAG_ROWS)
    _words_np(_row_keys_np(seed, start, start + len(words)), _group_keys_np(2 * kernel.n_blocks), words, scratch)
    patterns = torch.from_numpy(kernel._patterns(2).astype("int64"))[:, :n_cols]  # [bag, column, chunk]
    bits = (patterns[..., None] >> torch.arange(8)) & 1  # [bag, column, chunk, k]
    signs = sign_block(seed, start, start + 2 * BAG_ROWS, n_cols)  # [row, column]
    expected = (signs > 0).long().reshape(2, BAG_ROWS // 8, 8, n_cols).permute(0, 3, 1, 2)
    assert torch.equal(bits, expected)


@pytest.mark.parametrize("kernel", ["lookup", "matmul"])
def test_cpu_kernels_match_the_matrix(kernel):
    # more rows than one generation step, row counts and offsets off every alignment (8, 64,
    # 512, 4096), widths off 64, batch 1 and 5, accumulators of either layout
    gen = torch.Generator().manual_seed(1)
    dim_in, dims = STEP_ROWS + 1500, [70, 333]
    x = torch.randn(5, dim_in, generator=gen, dtype=torch.float64)
    p = RademacherProjector(dim_in, dims, seed=8, cpu_kernel=kernel)
    ref = {d: x @ p.matrix(d).double() for d in dims}
    whole = p.project(x.float())
    cuts = [0, 3, 700, 701, 4096 + 13, dim_in]
    plain = torch.zeros(5, p.width)  # a caller's own [batch, width] accumulator
    for acc in (p.new_accumulator(5, "cpu"), plain):
        for s, e in zip(cuts[:-1], cuts[1:]):
            p.accumulate(acc, x[:, s:e].float(), s)
        pieces = p.finish(acc)
        for d in dims:
            assert rel(whole[d], ref[d]) <= 1e-5 and rel(pieces[d], ref[d]) <= 1e-5  # fp32 sums
    one = p.project(x[4:5].float())
    assert rel(one[333][0], ref[333][4]) <= 1e-5
    with pytest.raises(ValueError, match="cpu_kernel"):
        RademacherProjector(10, 4, cpu_kernel="fft")


def test_lookup_sub_batches_match_the_matrix(monkeypatch):
    # a batch larger than the kernel's sub-batch is served in pieces that share the pattern
    # indices (5 examples in sub-batches of 2, 2 and a partial 1); a real-size case too
    import less_ray.core.sign_lookup as sign_lookup
    gen = torch.Generator().manual_seed(2)
    for sub, batch, dim_in in ((2, 5, BAG_ROWS * 3 + 77), (sign_lookup.SUB_BATCH, sign_lookup.SUB_BATCH + 3, 600)):
        monkeypatch.setattr(sign_lookup, "SUB_BATCH", sub)
        x = torch.randn(batch, dim_in, generator=gen, dtype=torch.float64)
        p = RademacherProjector(dim_in, [40, 130], seed=5)
        out = p.project(x.float())
        assert p._lookup.sub == sub
        for d in (40, 130):
            assert rel(out[d], x @ p.matrix(d).double()) <= 1e-5


def test_entries_and_balance():
    d = 512
    R = RademacherProjector(4096, d, seed=11).matrix(d)
    entry = torch.tensor(1 / math.sqrt(d), dtype=torch.float32).item()
    assert set(R.unique().tolist()) == {-entry, entry}
    signs = R.sign()
    n = signs.numel()
    assert abs(signs.mean().item()) < 4 / math.sqrt(n)  # 4 sigma for fair coins
    # each row and column balanced, and rows/columns nearly uncorrelated (sd 1/sqrt(len))
    assert signs.mean(dim=1).abs().max() < 5 / math.sqrt(d)
    assert signs.mean(dim=0).abs().max() < 5 / math.sqrt(4096)
    rows = signs[:200] @ signs[:200].T / d
    cols = signs[:, :200].T @ signs[:, :200] / 4096
    assert (rows - torch.eye(200)).abs().max() < 6 / math.sqrt(d)
    assert (cols - torch.eye(200)).abs().max() < 6 / math.sqrt(4096)
    # every bit position of the 32-bit words is used evenly
    per_bit = signs.reshape(4096, d // 32, 32).mean(dim=(0, 1))
    assert per_bit.abs().max() < 5 / math.sqrt(n / 32)


def test_seeds_differ():
    a, b = (RademacherProjector(2000, 256, seed=s).matrix(256) for s in (0, 1))
    agree = (a == b).float().mean().item()
    assert abs(agree - 0.5) < 0.01


def test_johnson_lindenstrauss():
    """d = 2048, eps = 0.2. Achlioptas (2003):
    P(|‖Px‖² − ‖x‖²| > eps‖x‖²) ≤ 2exp(−d(eps²/2 − eps³/3)/2) = 4e-8; by polarisation
    (‖x±y‖² for unit x, y) |<Px,Py> − <x,y>| ≤ eps with probability ≥ 1 − 1.6e-7 per pair,
    so 40 vectors (780 pairs) fail with probability < 2e-4."""
    d, eps = 2048, 0.2
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3000, generator=gen, dtype=torch.float64)
    x[20:] = x[:20] + 0.5 * x[20:]  # correlated pairs as well as near-orthogonal ones
    x[-1] = 0
    x[-1, 17] = 3.0  # a one-hot vector
    px = RademacherProjector(3000, d, seed=9).project(x.float())[d].double()
    u, pu = x / x.norm(dim=1, keepdim=True), px / x.norm(dim=1, keepdim=True)
    assert ((pu @ pu.T) - (u @ u.T)).abs().max() <= eps
    ratio = pu.norm(dim=1) ** 2
    assert (ratio - 1).abs().max() <= eps
    # and not merely within the bound: the spread is what a Rademacher matrix gives (sd sqrt(2/d))
    assert 0.5 * math.sqrt(2 / d) < (ratio - 1).std().item() < 1.5 * math.sqrt(2 / d)


def test_identity_projector():
    x = torch.randn(3, 50)
    p = IdentityProjector(50)
    acc = p.new_accumulator(3, "cpu")
    p.accumulate(acc, x[:, 20:], 20)
    p.accumulate(acc, x[:, :20], 0)
    assert torch.equal(p.finish(acc)[50], x)
    with pytest.raises(ValueError):
        p.accumulate(acc, x, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_same_matrix_on_gpu():
    for seed, start in ((0, 0), (123, 2 ** 33)):
        cpu = sign_block(seed, start, start + 300, 8192)
        gpu = sign_block(seed, start, start + 300, 8192, device="cuda")
        assert torch.equal(cpu, gpu.cpu())

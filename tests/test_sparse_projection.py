"""The sparse JL projection (projection: sjlt): pinned scheme, dense float64 reference,
invariances, Johnson-Lindenstrauss behaviour."""
import math

import numpy as np
import pytest
import torch

from less_ray.core.sparse_projection import SparseJLProjector, sparse_indices, sparse_words

from hash_reference import M32, mix32


# --- the scheme in plain Python integers, written from the module docstring ---------------



def _ref_entries(seed, dim, s, row):
    """[(column, sign)] of one input row: one bucket in each of the s blocks of the d outputs."""
    u = seed & (2 ** 64 - 1)
    seed_key = mix32(mix32((u & M32) ^ 0x5BD1E995) ^ (u >> 32))
    out = []
    for j in range(s):
        k = mix32(seed_key ^ mix32(((64 * dim + j) * 0x9E3779B9 + 1) & M32))
        h = mix32(mix32((row & M32) ^ k) ^ (row >> 32))
        lo, hi = j * dim // s, (j + 1) * dim // s
        out.append((lo + (((h >> 1) * (hi - lo)) >> 31), 1.0 if h & 1 else -1.0))
    return out


def _ref_matrix(seed, dim, s, rows):
    m = np.zeros((len(rows), dim))
    for r, row in enumerate(rows):
        for col, sign in _ref_entries(seed, dim, s, row):
            m[r, col] += sign / math.sqrt(s)
    return torch.from_numpy(m)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("seed, dim, s", [(0, 64, 1), (12345, 100, 3), (2 ** 40 + 7, 8192, 4)])
def test_indices_match_python_reference(seed, dim, s):
    rows = [0, 1, 31, 1000, 2 ** 31 + 5, 2 ** 32 - 1, 2 ** 32, 2 ** 33 + 1]
    for row in rows:
        want = _ref_entries(seed, dim, s, row)
        for device_path in ("cpu", "torch"):
            if device_path == "cpu":  # the numpy uint32 path
                got = sparse_indices(seed, dim, s, row, row + 1)[:, 0].tolist()
            else:  # the torch int64 path every other device runs
                h = sparse_words(seed, dim, s, row, row + 1)[:, 0].tolist()
                got = [(j * dim // s) + (((w >> 1) * ((j + 1) * dim // s - j * dim // s)) >> 31)
                       + dim * (1 - (w & 1)) for j, w in enumerate(h)]
            assert got == [c + (0 if sg > 0 else dim) for c, sg in want], (row, device_path)


@pytest.mark.parametrize("start", [0, 2 ** 32 - 100])
def test_numpy_and_torch_paths_agree(start):
    """CPU (numpy) and GPU (torch) index computations are the same function, over a range."""
    from less_ray.core import sparse_projection as sp
    for dim, s in ((8192, 1), (1000, 7)):
        a = sparse_indices(3, dim, s, start, start + 5000)
        h = sparse_words(3, dim, s, start, start + 5000)
        b = torch.stack([(((h[j] >> 1) * (hi - lo)) >> 31) + lo + dim * (1 - (h[j] & 1))
                         for j, (lo, hi) in enumerate(sp._block_bounds(dim, s))])
        assert torch.equal(a, b)


@pytest.mark.parametrize("s", [1, 3])
def test_features_match_dense_float64_reference(s):
    """Blocks fed as a backward feeds them (uneven, out of order) vs x @ S in float64, S the dense
    form of the same sparse matrix built from the pure-Python scheme."""
    P, dims = 700, [64, 100]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, P, generator=gen, dtype=torch.float64)
    proj = SparseJLProjector(P, dims, seed=11, s=s, step_rows=64)
    acc = proj.new_accumulator(5, "cpu")
    cuts = [0, 17, 300, 301, 555, P]
    for a, b in reversed(list(zip(cuts, cuts[1:]))):
        proj.accumulate(acc, x[:, a:b].float(), a)
    out = proj.finish(acc)
    for d in dims:
        S = _ref_matrix(11, d, s, range(P))
        assert torch.allclose(proj.matrix(d), S)
        assert rel(out[d], x @ S) <= 1e-5, d
        # each row: exactly s nonzeros of size 1/sqrt(s), one per block
        nz = (S != 0).sum(dim=1)
        assert (nz == s).all() and torch.allclose(S.abs().sum(1), torch.full((P,), math.sqrt(s), dtype=S.dtype))


def test_independent_of_batch_block_size_order_kernel_and_cache():
    P, d = 5000, 256
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, P, generator=gen)
    ref = SparseJLProjector(P, d, seed=4, s=2).project(x.double().float())[d].double()
    want = x.double() @ SparseJLProjector(P, d, seed=4, s=2).matrix(d)
    assert rel(ref, want) <= 1e-6
    for kernel in ("scatter", "rows", "index_add"):
        for step_rows, cache in ((37, 1024.0), (4096, 0.0)):
            proj = SparseJLProjector(P, d, seed=4, s=2, step_rows=step_rows, index_cache_mb=cache, kernel=kernel)
            # examples one at a time and in pairs, blocks in a shuffled order
            for rows in ([0], [1, 2], list(range(3, 9))):
                acc = proj.new_accumulator(len(rows), "cpu")
                cuts = sorted({0, P, *torch.randint(1, P, (6,), generator=gen).tolist()})
                blocks = list(zip(cuts, cuts[1:]))
                for i in torch.randperm(len(blocks), generator=gen).tolist():
                    a, b = blocks[i]
                    proj.accumulate(acc, x[rows, a:b], a)
                got = proj.finish(acc)[d]
                assert rel(got, ref[rows]) <= 1e-6, (kernel, step_rows, rows)


def test_a_dims_sketch_does_not_depend_on_the_others():
    x = torch.randn(3, 2000)
    alone = SparseJLProjector(2000, 128, seed=5, s=2).project(x)[128]
    both = SparseJLProjector(2000, [64, 128], seed=5, s=2).project(x)
    assert torch.allclose(alone, both[128], atol=1e-6)
    assert both[64].shape == (3, 64)


def test_unbiased_inner_products():
    """E[<Sx, Sy>] = <x, y>: the mean over 600 seeds is within 4 standard errors."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 40, generator=gen, dtype=torch.float64)
    y = y + 0.7 * x
    for s in (1, 4):
        vals = []
        for seed in range(600):
            p = SparseJLProjector(40, 16, seed=seed, s=s).project(torch.stack([x, y]).float())[16].double()
            vals.append((p[0] @ p[1]).item())
        vals = torch.tensor(vals)
        se = vals.std() / math.sqrt(len(vals))
        assert abs(vals.mean() - x @ y) <= 4 * se, (s, vals.mean(), x @ y, se)


@pytest.mark.parametrize("s", [1, 4])
def test_johnson_lindenstrauss(s):
    """d = 2048: for these (dense and one-hot) vectors the error of unit inner products has
    sd ~ sqrt(1/d) = 0.022 per pair (CountSketch's variance, (1/d)(|x|^2|y|^2 + <x,y>^2 - 2 sum x_i^2 y_i^2));
    0.15 is ~7 sd. The squared-norm ratios spread as the theory says (sd sqrt(2/d) for dense x)."""
    d = 2048
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3000, generator=gen, dtype=torch.float64)
    x[20:] = x[:20] + 0.5 * x[20:]
    x[-1] = 0
    x[-1, 17] = 3.0  # one-hot
    px = SparseJLProjector(3000, d, seed=9, s=s).project(x.float())[d].double()
    u, pu = x / x.norm(dim=1, keepdim=True), px / x.norm(dim=1, keepdim=True)
    assert ((pu @ pu.T) - (u @ u.T)).abs().max() <= 0.15
    ratio = pu.norm(dim=1) ** 2
    assert abs(ratio[-1].item() - 1) < 1e-6  # a one-hot vector keeps its norm exactly
    dense = ratio[:-1]
    assert 0.5 * math.sqrt(2 / d) < (dense - 1).std().item() < 1.5 * math.sqrt(2 / d)


def test_seeds_and_dims_give_different_sketches():
    a = SparseJLProjector(5000, 512, seed=0).indices(0, 5000)
    b = SparseJLProjector(5000, 512, seed=1).indices(0, 5000)
    assert (a == b).float().mean().item() < 0.01
    # buckets and signs balanced
    cols = a[0] % 512
    counts = torch.bincount(cols, minlength=512).double()
    assert counts.std() < 2 * math.sqrt(5000 / 512)
    assert abs((a[0] < 512).double().mean().item() - 0.5) < 0.03


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        SparseJLProjector(100, 8, s=9)
    with pytest.raises(ValueError):
        SparseJLProjector(100, 0)
    p = SparseJLProjector(100, 8)
    with pytest.raises(ValueError):
        p.accumulate(p.new_accumulator(1, "cpu"), torch.zeros(1, 10), 95)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_same_features_on_gpu():
    x = torch.randn(4, 300_000)
    for s in (1, 4):
        cpu = SparseJLProjector(300_000, 8192, seed=3, s=s).project(x)[8192]
        gpu = SparseJLProjector(300_000, 8192, seed=3, s=s).project(x.cuda())[8192].cpu()
        assert rel(gpu, cpu) <= 1e-6

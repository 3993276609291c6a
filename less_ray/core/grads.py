"""Per-example LoRA gradients for a whole batch, and LESS's gradient features from them.

LESS loops over examples one at a time (one backward each). Here one backward of
sum_b loss_b gives every example's gradient at once: examples do not interact, so the
gradient that reaches example b's activations is that of loss_b alone. For each LoRA
Linear (y = x W^T), a forward hook keeps its input x and a tensor hook on y receives
dy during the backward; example b's weight gradient is then sum_t dy[b,t]^T x[b,t].

Each parameter's block [B, p_k] is handed on as soon as its dy arrives (adam transform,
then projection), so memory is bounded by the largest block, not the full gradient. The
backward asks autograd only for the gradient w.r.t. the input embeddings (made a leaf by
a hook): that walks every LoRA layer without computing the summed parameter gradients,
which nobody needs. A pre-hook on the lm_head keeps only the positions that predict a
label, so logits are [N_labels, V], never [B, T, V].
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .formatting import IGNORE_INDEX, length_groups
from .pooling import POOLINGS, pooled
from .projection import Projector

FeatureKind = Literal["adam", "sgd"]
BlockSink = Callable[[int, torch.Tensor], None]  # (parameter index, per-example block [B, p_k])


@dataclass
class Moments:
    """Adam moments of a checkpoint, one fp32 tensor per trainable parameter, in model order."""
    names: list[str]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    # (betas, eps, device) -> per parameter (b1 * m, b2 * v + eps): the parts of the adam feature
    # that do not depend on the gradient, computed once per checkpoint instead of once per batch
    _scaled: dict = field(default_factory=dict, repr=False, compare=False)

    def to(self, device) -> "Moments":
        return Moments(self.names, [t.to(device) for t in self.exp_avg], [t.to(device) for t in self.exp_avg_sq])

    def scaled(self, k: int, betas: tuple[float, float], eps: float, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(betas), eps, str(device))
        if key not in self._scaled:
            self._scaled.clear()  # one setting at a time: keep memory at one copy
            self._scaled[key] = {}
        cache = self._scaled[key]
        if k not in cache:
            m = self.exp_avg[k].to(device, torch.float32).reshape(1, -1)
            v = self.exp_avg_sq[k].to(device, torch.float32).reshape(1, -1)
            cache[k] = (betas[0] * m, betas[1] * v + eps)
        return cache[k]


def adam_feature(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """LESS's Adam feature: the next Adam step direction, no bias correction, eps inside the root."""
    b1, b2 = betas
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g * g
    return m_new / torch.sqrt(v_new + eps)


def adam_feature_fused(g: torch.Tensor, b1_m: torch.Tensor, b2_v_eps: torch.Tensor,
                       betas: tuple[float, float]) -> torch.Tensor:
    """`adam_feature` in four passes over [B, p] instead of nine, from the checkpoint's
    precomputed b1*m and b2*v + eps (eps added before the g^2 term: a rounding-level difference)."""
    num = torch.add(b1_m, g, alpha=1 - betas[0])
    den = torch.addcmul(b2_v_eps, g, g, value=1 - betas[1]).sqrt_()
    return num.div_(den)


class LoraGradientComputer:
    """Batched per-example gradients w.r.t. a (peft) model's trainable parameters.

    Every trainable parameter must be the weight or bias of a torch.nn.Linear (LoRA's
    lora_A / lora_B); anything else (DoRA magnitudes, trainable embeddings) is refused
    by name. Blocks are flattened like `p.view(-1)` and ordered like `named_parameters()`.
    Gradient checkpointing must be off (recomputation would fire the hooks twice).
    """

    def __init__(self, model: torch.nn.Module, feature_cast: torch.dtype | None = None,
                 split_overhead: int | None | Literal["auto"] = "auto", block_dtype: torch.dtype | None = None,
                 pooling: Literal["mean", "weighted_mean"] | None = None):
        """feature_cast: round each (adam-transformed) gradient block to this dtype before the
        projection, as LESS does (`torch.stack(full_grads).to(torch.float16)`); None: fp32 as is.
        block_dtype: the dtype the per-example gradients are formed in; None: the model's own.
        A bf16 model forms them as bf16 matmuls (fp32 accumulation inside oneDNN's and cuBLAS's
        kernels, the result rounded to bf16 once: the precision of LESS's own `p.grad` in a bf16
        model), at the matrix units' rate and with no fp32 copies of x and dy; torch.float32
        forms them from fp32 copies (the reference the bf16 path is tested against).
        split_overhead: `features` cuts a right-padded batch into groups of similar length when
        that computes fewer positions, counting this many positions per extra forward/backward
        (`formatting.length_groups`); None: never. "auto": 64 on CPU (measured: a batch of 16 with
        lengths 103-329 computes 2,518 positions instead of 5,264), None on GPU (unmeasured: a GPU
        favours few large launches).
        pooling: also return "embedding" [B, H], the final hidden states (the lm_head's input, after
        the final norm) pooled over each example's tokens — mean, or weighted_mean (token i of n
        weighted i / (1 + .. + n): RDS+'s representation) — and L2-normalised, fp32: taken from
        this same forward, so a representation-based selector costs no pass of its own."""
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be None or one of {POOLINGS}, not {pooling!r}")
        self.pooling = pooling
        self.model = model
        self.feature_cast = feature_cast
        self.block_dtype = block_dtype
        if split_overhead == "auto":
            on_gpu = next(model.parameters()).device.type != "cpu"
            split_overhead = None if on_gpu else 64
        self.split_overhead = split_overhead
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters (load the adapter with is_trainable=True)")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        sizes = [p.numel() for _, p in named]
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.sizes = sizes
        self.num_params = sum(sizes)
        index = {id(p): k for k, (_, p) in enumerate(named)}
        # module -> (index of its weight, index of its bias or None)
        self._linears: dict[torch.nn.Module, tuple[int | None, int | None]] = {}
        covered = set()
        for _, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            w = index.get(id(mod.weight))
            b = index.get(id(mod.bias)) if mod.bias is not None else None
            if w is None and b is None:
                continue
            if w is None:
                raise ValueError("a Linear with a trainable bias but a frozen weight is not supported")
            self._linears[mod] = (w, b)
            covered.update(k for k in (w, b) if k is not None)
        missing = [self.names[k] for k in range(len(named)) if k not in covered]
        if missing:
            raise ValueError(f"trainable parameters that are not nn.Linear weights/biases (unsupported): "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")

    # -- the batched backward --------------------------------------------------------------

    def run(self, batch: dict[str, torch.Tensor], sink: BlockSink,
            on_logits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
            ) -> dict[str, torch.Tensor]:
        """One forward + one backward; `sink(k, block)` gets every parameter's [B, p_k]
        per-example gradient in the block dtype (fp32 zeros for parameters the forward did not use).
        `on_logits(logits [N, V], targets [N], rows [N])`, if given, sees the detached label-position
        logits (row = example index), so other per-token statistics need no second forward.
        Returns loss [B] (mean token loss per example) and n_tokens [B]."""
        device = next(self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)
        attention = batch["attention_mask"].to(device)
        labels = batch["labels"].to(device)
        # position t predicts label t+1 (HF's shift); only those positions reach the lm_head
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        n_tokens = predicts.sum(dim=1)
        if (n_tokens == 0).any():
            bad = torch.nonzero(n_tokens == 0).flatten().tolist()
            raise ValueError(f"examples at batch rows {bad} have no label tokens after the causal shift "
                             f"(their mean loss is 0/0)")
        state = _Capture(self, attention.bool(), predicts, sink)
        was_training = self.model.training
        self.model.eval()  # dropout off: features must be deterministic
        try:
            with torch.enable_grad(), state.hooks():
                logits = self.model(input_ids=input_ids, attention_mask=attention).logits
                if logits.shape[:-1] != (int(n_tokens.sum()),):
                    raise RuntimeError(f"expected logits for the {int(n_tokens.sum())} label positions, got "
                                       f"shape {tuple(logits.shape)}: the model does not apply its output "
                                       f"embedding to the last hidden states as-is")
                targets = labels[:, 1:][predicts[:, :-1]]
                tok = F.cross_entropy(logits.float(), targets, reduction="none")
                rows = torch.nonzero(predicts)[:, 0]
                if on_logits is not None:
                    on_logits(logits.detach(), targets, rows)
                loss = torch.zeros(len(labels), device=device, dtype=tok.dtype).index_add(0, rows, tok)
                loss = loss / n_tokens
                if not state.anchors:
                    raise RuntimeError("the input-embedding hook did not fire")
                torch.autograd.grad(loss.sum(), state.anchors)
        finally:
            self.model.train(was_training)
        state.flush_unused(input_ids.shape[0], device)
        out = {"loss": loss.detach(), "n_tokens": n_tokens}
        if self.pooling is not None:
            out["embedding"] = state.embedding
        return out

    def per_example_grads(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full [B, P] gradients (audits and tests; P can be large)."""
        out = {}

        def sink(k, block):
            if "grads" not in out:
                out["grads"] = torch.zeros(block.shape[0], self.num_params, device=block.device)
            out["grads"][:, self.offsets[k]:self.offsets[k] + self.sizes[k]] = block

        res = self.run(batch, sink)
        return {**res, "grads": out["grads"]}

    def features(self, batch: dict[str, torch.Tensor], kind: FeatureKind, projector: Projector,
                 moments: Moments | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> dict:
        """LESS features: adam (pool) or sgd (targets), projected, L2-normalised.

        Returns features {dim: [B, dim]} (unit rows), norms {dim: [B]} (before
        normalising), loss [B], n_tokens [B]."""
        self._check_kind(kind, projector, moments)
        parts = self._length_split(batch)
        if parts is not None:
            return _merge([self._features(sub, kind, projector, moments, betas, eps) for _, sub in parts],
                          [rows for rows, _ in parts])
        return self._features(batch, kind, projector, moments, betas, eps)

    def _features(self, batch, kind, projector, moments, betas, eps) -> dict:
        acc = {}

        def sink(k, g):
            if not acc:
                acc["a"] = projector.new_accumulator(g.shape[0], g.device)
            projector.accumulate(acc["a"], self._cast(self._transform(k, g, kind, moments, betas, eps)),
                                 self.offsets[k])

        res = self.run(batch, sink)
        return {**_normalised(projector.finish(acc["a"])), **res}

    def features_grouped(self, batches: list[dict[str, torch.Tensor]], kind: FeatureKind, projector: Projector,
                         moments: Moments | None = None, betas: tuple[float, float] = (0.9, 0.999),
                         eps: float = 1e-8) -> list[dict]:
        """`features` of several batches, projected together: each batch's per-example (adam)
        gradients are kept whole, fp32, in one [N, P] buffer (N = all their examples), and one
        projection pass serves all N. The projection matrix is generated once per pass, so
        this divides its cost by N instead of the batch size (results equal `features`' up to
        float summation order). One dict per batch, as `features` returns."""
        if len(batches) == 1 or not getattr(projector, "grouping_helps", True):
            # a projector with no per-pass cost to share (sparse JL) takes each batch's blocks
            # as the backward produces them: no [N, P] buffer
            return [self.features(b, kind, projector, moments, betas, eps) for b in batches]
        self._check_kind(kind, projector, moments)
        split = [self._length_split(b) or [(None, b)] for b in batches]
        flat = self._grouped([sub for parts in split for _, sub in parts], kind, projector, moments, betas, eps)
        out = []
        for parts in split:
            mine, flat = flat[:len(parts)], flat[len(parts):]
            out.append(mine[0] if parts[0][0] is None else _merge(mine, [rows for rows, _ in parts]))
        return out

    def _length_split(self, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, dict]] | None:
        """[(rows, sub-batch)] when cutting the batch by length computes fewer positions
        (padding costs as much as a real token); None to keep it whole. Only right-padded
        batches (collate's) are cut: a sub-batch is its rows trimmed to their own longest."""
        attention = batch["attention_mask"]
        if self.split_overhead is None or attention.shape[0] < 2:
            return None
        lengths = attention.sum(dim=1)
        width = attention.shape[1]
        right_padded = torch.arange(width, device=attention.device)[None, :] < lengths[:, None]
        if not torch.equal(attention.bool(), right_padded):
            return None
        groups = length_groups(lengths.tolist(), self.split_overhead)
        if len(groups) < 2:
            return None
        parts = []
        for g in groups:
            rows = torch.tensor(g, device=attention.device)
            w = int(lengths[rows].max())
            parts.append((rows, {k: batch[k][rows, :w] for k in ("input_ids", "attention_mask", "labels")}))
        return parts

    def _grouped(self, batches, kind, projector, moments, betas, eps) -> list[dict]:
        sizes = [len(b["input_ids"]) for b in batches]
        buf, runs = None, []
        for i, batch in enumerate(batches):

            def sink(k, g, row=sum(sizes[:i])):
                nonlocal buf
                if buf is None:
                    buf = torch.empty(sum(sizes), self.num_params, device=g.device, dtype=torch.float32)
                g = self._cast(self._transform(k, g, kind, moments, betas, eps))
                buf[row:row + len(g), self.offsets[k]:self.offsets[k] + self.sizes[k]] = g

            runs.append(self.run(batch, sink))
        out = _normalised(projector.project(buf))
        del buf
        results, row = [], 0
        for n, res in zip(sizes, runs):
            results.append({"features": {d: f[row:row + n] for d, f in out["features"].items()},
                            "norms": {d: f[row:row + n] for d, f in out["norms"].items()}, **res})
            row += n
        return results

    def _check_kind(self, kind, projector, moments) -> None:
        if projector.dim_in != self.num_params:
            raise ValueError(f"projector expects {projector.dim_in} inputs, the model has "
                             f"{self.num_params} trainable parameters")
        if kind == "adam":
            if moments is None:
                raise ValueError("adam features need the checkpoint's optimizer moments")
            if len(moments.exp_avg) != len(self.names):
                raise ValueError(f"moments for {len(moments.exp_avg)} parameters, model has {len(self.names)}")
        elif kind != "sgd":
            raise ValueError(f"unknown feature kind {kind!r}; expected adam or sgd")

    def _cast(self, g: torch.Tensor) -> torch.Tensor:
        return g if self.feature_cast is None else g.to(self.feature_cast)

    @staticmethod
    def _transform(k, g, kind, moments, betas, eps) -> torch.Tensor:
        if kind != "adam":
            return g
        return adam_feature_fused(g, *moments.scaled(k, betas, eps, g.device), betas)


def _merge(parts: list[dict], rows: list[torch.Tensor]) -> dict:
    """Per-sub-batch results (tensors or {dim: tensor} with one row per example) back into one
    result in the batch's own row order."""
    order = torch.cat(rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)

    def join(values):
        if isinstance(values[0], dict):
            return {k: join([v[k] for v in values]) for k in values[0]}
        return torch.cat(values)[inverse.to(values[0].device)]

    return {k: join([p[k] for p in parts]) for k in parts[0]}


def _normalised(raw: dict[int, torch.Tensor]) -> dict:
    norms = {d: f.norm(dim=1) for d, f in raw.items()}
    # a zero vector stays zero rather than becoming NaN
    feats = {d: f / norms[d].clamp_min(torch.finfo(f.dtype).tiny)[:, None] for d, f in raw.items()}
    return {"features": feats, "norms": norms}


class _Capture:
    """Hook state for one batch: inputs kept at forward, blocks emitted at backward."""

    def __init__(self, computer: LoraGradientComputer, token_mask: torch.Tensor, predicts: torch.Tensor,
                 sink: BlockSink):
        self.c = computer
        self.mask = token_mask  # [B, T] real tokens
        self.no_padding = bool(token_mask.all())
        self.predicts = predicts  # [B, T] positions whose logits enter the loss
        self.sink = sink
        self.anchors: list[torch.Tensor] = []
        self.embedding: torch.Tensor | None = None
        self.pending: dict[torch.nn.Module, int] = {}  # calls whose dy has not arrived yet
        self.partial: dict[int, torch.Tensor] = {}  # for modules called more than once
        self.emitted: set[int] = set()

    @contextmanager
    def hooks(self):
        handles = [self.c.model.get_input_embeddings().register_forward_hook(self._on_embed)]
        head = self.c.model.get_output_embeddings()
        if head is None:
            raise ValueError("the model has no output embedding (lm_head) to hook")
        handles.append(head.register_forward_pre_hook(self._on_head))
        handles += [m.register_forward_hook(self._on_linear) for m in self.c._linears]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _on_head(self, module, args):
        if self.c.pooling is not None:  # the final hidden states [B, T, H], pooled before they are cut
            e = pooled(args[0].detach().float(), self.mask, self.c.pooling)
            self.embedding = e / e.norm(dim=1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
        # logits only where a label is predicted: [N, V] instead of [B, T, V], and the
        # lm_head's backward likewise (other positions have zero gradient anyway)
        return (args[0][self.predicts],) + tuple(args[1:])

    def _on_embed(self, module, args, out):
        leaf = out if out.requires_grad else out.detach().requires_grad_(True)
        self.anchors.append(leaf)
        return leaf

    def _on_linear(self, module, args, out):
        x = args[0].detach()
        self.pending[module] = self.pending.get(module, 0) + 1
        out.register_hook(lambda dy: self._on_grad(module, x, dy))

    def _masked(self, dy: torch.Tensor) -> torch.Tensor:
        """dy [B, T, out] in the block dtype, zero at padding positions. No loss depends on a
        padding position, so dy is 0 there already; zeroing it makes that explicit, whatever
        the attention implementation (padding x is finite: collate right-pads, so no attention
        row is fully masked). A batch without padding skips the pass."""
        dy = dy.to(self.c.block_dtype or dy.dtype).reshape(*self.mask.shape, dy.shape[-1])
        return dy if self.no_padding else torch.where(self.mask[:, :, None], dy, 0.0)

    def _per_example(self, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """[B, out, in]: sum over each example's own positions of dy^T x (dy from `_masked`)."""
        B, T = self.mask.shape
        x = x.to(self.c.block_dtype or x.dtype).reshape(B, -1, x.shape[-1])
        if x.shape[1] != T:
            raise ValueError(f"a LoRA layer saw {x.shape[1]} positions per example, the batch has {T}")
        return torch.bmm(dy.transpose(1, 2), x)

    def _on_grad(self, module, x, dy):
        w, b = self.c._linears[module]
        dy = self._masked(dy)  # once, for the weight and the bias
        blocks = {w: self._per_example(x, dy).reshape(self.mask.shape[0], -1)}  # [B, out*in]
        if b is not None:
            blocks[b] = dy.sum(1, dtype=torch.float32)
        self.pending[module] -= 1
        for k, g in blocks.items():
            if k in self.partial:  # a module called more than once: its calls summed in fp32
                g = self.partial.pop(k) + g
            if self.pending[module] > 0:
                self.partial[k] = g.float()
            else:
                self.emitted.add(k)
                self.sink(k, g)

    def flush_unused(self, batch: int, device) -> None:
        if self.partial:
            raise RuntimeError("some LoRA layers got fewer gradients than forward calls "
                               "(gradient checkpointing on?)")
        for k in range(len(self.c.names)):
            if k not in self.emitted:
                self.sink(k, torch.zeros(batch, self.c.sizes[k], device=device))

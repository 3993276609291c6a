"""Per-example statistics of a model on a padded batch: loss, EL2N, LoRA gradient norm (GraNd).

All three are per example over its label (assistant) tokens t = 1..n, with p_t = softmax(logits_t)
predicting label y_t (HF's causal shift):
- loss  = (1/n) Σ_t −log p_t[y_t]                   the mean token loss LESS trains on;
- el2n  = (1/n) Σ_t ‖p_t − onehot(y_t)‖₂             EL2N ("Deep learning on a data diet") per token,
                                                     averaged over tokens (a sequence has no single
                                                     error vector; the mean keeps lengths comparable);
- grand = ‖∇_θ loss‖₂ over the trainable (LoRA) parameters θ — the exact per-example gradient
          norm, from the batched per-example machinery of `grads.py` (one backward per batch).
Only label positions reach the lm_head (logits [N_labels, V], never [B, T, V]), and padding
never enters: rows are right-padded with attention 0 and labels −100.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from .formatting import IGNORE_INDEX
from .grads import LoraGradientComputer


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions whose logits predict a label (position t predicts label t+1)."""
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    n = predicts.sum(dim=1)
    if (n == 0).any():
        bad = torch.nonzero(n == 0).flatten().tolist()
        raise ValueError(f"examples at batch rows {bad} have no label tokens after the causal shift")
    return predicts


def token_stats(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                n_examples: int) -> dict[str, torch.Tensor]:
    """Per-example mean token loss and EL2N from label-position logits [N, V] (fp32 math)."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    tok_loss = -logp.gather(1, targets[:, None]).squeeze(1)
    err = logp.exp()
    err[torch.arange(len(targets), device=err.device), targets] -= 1.0
    tok_el2n = err.norm(dim=1)
    n = torch.zeros(n_examples, device=logits.device).index_add(0, rows, torch.ones_like(tok_loss))
    mean = lambda v: torch.zeros(n_examples, device=logits.device).index_add(0, rows, v) / n  # noqa: E731
    return {"loss": mean(tok_loss), "el2n": mean(tok_el2n), "n_tokens": n.long()}


@contextmanager
def _labels_only_head(model: torch.nn.Module, predicts: torch.Tensor):
    """The lm_head sees only the label positions' hidden states: logits [N, V]."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("the model has no output embedding (lm_head) to hook")
    handle = head.register_forward_pre_hook(lambda mod, args: (args[0][predicts],) + tuple(args[1:]))
    try:
        yield
    finally:
        handle.remove()


class ExampleStatsComputer:
    """Loss / EL2N (forward only) and GraNd (one batched backward) for a model, batch by batch.

    `model` may be a plain causal LM or a peft model; `adapter=False` evaluates a peft model's
    base (its adapter disabled), so one loaded checkpoint gives both base and checkpoint stats.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._grads: LoraGradientComputer | None = None

    def _device(self):
        return next(self.model.parameters()).device

    def _adapter(self, enabled: bool):
        if enabled:
            return nullcontext()
        if not hasattr(self.model, "disable_adapter"):
            raise ValueError("adapter=False needs a peft model (one with disable_adapter())")
        return self.model.disable_adapter()

    @torch.no_grad()
    def forward_stats(self, batch: dict[str, torch.Tensor], adapter: bool = True) -> dict[str, torch.Tensor]:
        """loss [B], el2n [B], n_tokens [B] with dropout off."""
        dev = self._device()
        labels = batch["labels"].to(dev)
        predicts = label_positions(labels)
        was_training = self.model.training
        self.model.eval()
        try:
            with self._adapter(adapter), _labels_only_head(self.model, predicts):
                logits = self.model(input_ids=batch["input_ids"].to(dev),
                                    attention_mask=batch["attention_mask"].to(dev)).logits
        finally:
            self.model.train(was_training)
        if logits.dim() != 2:
            raise RuntimeError(f"expected label-position logits [N, V], got shape {tuple(logits.shape)}")
        targets = labels[:, 1:][predicts[:, :-1]]
        return token_stats(logits, targets, torch.nonzero(predicts)[:, 0], len(labels))

    def grad_stats(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """loss [B], el2n [B], grand [B] (exact ‖∇ loss‖₂ over trainable parameters), n_tokens [B]:
        one forward + one backward (the adapter enabled)."""
        if self._grads is None:
            self._grads = LoraGradientComputer(self.model)
        sq: dict[str, torch.Tensor] = {}
        seen: dict[str, dict] = {}

        def sink(k, block):
            sq["s"] = sq["s"] + block.pow(2).sum(1) if "s" in sq else block.pow(2).sum(1)

        def on_logits(logits, targets, rows):
            seen["stats"] = token_stats(logits, targets, rows, batch["labels"].shape[0])

        res = self._grads.run(batch, sink, on_logits=on_logits)
        return {**seen["stats"], "loss": res["loss"], "grand": sq["s"].sqrt(), "n_tokens": res["n_tokens"]}

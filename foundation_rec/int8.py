"""Int8 inference copies of a model's linear layers, for ID generation on a CPU.

Cold IDs of a 20k-item catalog are the model's arithmetic: about 7 TFLOP of fp32 matrix products
for Yelp, which 2 CPU cores run at 100-150 GFLOP/s (``benchmarks/RESULTS.md``, *Cold IDs*). An int8
matrix product (``torch._int_mm``) runs about 5x faster there. :func:`quantize` returns a copy of a
model whose encoder and decoder linear layers are :class:`Int8Linear`: weights rounded to int8 with
one scale per output channel, activations rounded to int8 with one scale per row (token) at each
call, the product accumulated in int32 and scaled back to float. The output layer stays float (ID
tokens are chosen from its logits), and so do attention, norms and embeddings.

The IDs are not bit-identical to fp32 generation: a near-tie between two candidates can flip.
``benchmarks/catalog_ids.py`` measures the share of items that keep their ID, and the README's
results say what it does to zero-shot accuracy. It is an inference path only (no gradients), and
:func:`available` says whether this torch build has the int8 kernel.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from .errors import FoundationRecError


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` as int8 per output channel and ``x`` as int8 per row (symmetric, 127 levels)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))  # [out, in]; int8 tells T5 not to cast
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        q = torch.round(rows / scale).to(torch.int8)
        y = torch._int_mm(q, self.weight.t()).float() * (scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


@functools.cache
def available() -> bool:
    """Whether ``torch._int_mm`` runs on this build's CPU (it is a private torch function; checked once)."""
    try:
        a = torch.ones(17, 16, dtype=torch.int8)
        return bool((torch._int_mm(a, a.t().contiguous()) == 16).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize(model: nn.Module, keep: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """A copy of ``model`` (on the CPU) whose ``nn.Linear`` layers, except those named in ``keep``, are :class:`Int8Linear`."""
    if not available():
        raise FoundationRecError(f"int8 ID generation needs torch._int_mm on the CPU, which torch {torch.__version__} lacks; use precision 'fp32'")
    if next(model.parameters()).device.type != "cpu":
        raise FoundationRecError("int8 ID generation runs on a CPU; use precision 'fp32' on a GPU")
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        for child, layer in list(module.named_children()):
            if isinstance(layer, nn.Linear) and child not in keep:
                setattr(module, child, Int8Linear(layer))
    return twin.train(False)

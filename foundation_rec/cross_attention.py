"""Cross-attention of beams over one copy of their prompt's encoder keys and values.

An encoder-decoder model in beam search keeps, per decoder layer, the cross-attention keys and
values of every *row* (beam), and reordering the cache after each step copies them all: for the
ID generator (4 beams, 4 layers, prompts of ~25-64 tokens) that copy was 58% of a search's time,
though the beams of one prompt share the same keys and values.

Here the cross-attention cache keeps one row per prompt. :func:`grouped` makes the model's
cross-attention layers, in this thread, pack each prompt's beam queries into one query block
(``[prompts, heads, slots * t, d]``), attend once over that prompt's keys, and unpack. It is an
attention implementation registered with transformers (:data:`NAME`) that calls ``sdpa``
unchanged for every other layer, thread and call, so setting it on a model changes nothing else.
Results equal the copying path's up to float rounding (a test checks both paths' logits).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

NAME = "foundation_rec_grouped_sdpa"
_state = threading.local()


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def cross_modules(model) -> set[int]:
    """Ids of ``model``'s cross-attention modules (T5's ``EncDecAttention``); empty for other architectures."""
    return {id(m) for name, m in model.named_modules() if name.endswith("EncDecAttention")}


def enable(model) -> bool:
    """Switch ``model`` (an sdpa encoder-decoder) to :data:`NAME`; False when it cannot use it (then nothing changes)."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "is_encoder_decoder", False) or not cross_modules(model):
        return False
    if config._attn_implementation == NAME:
        return True
    if config._attn_implementation != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # masks as for sdpa (an unknown name gets none)
    model.set_attn_implementation(NAME)
    return True


@contextlib.contextmanager
def grouped(modules: set[int], origin: torch.Tensor) -> Iterator[None]:
    """Within the block, in this thread, cross-attention layers in ``modules`` read row ``i``'s keys
    and values from prompt ``origin[i]`` of a cache holding one row per prompt."""
    previous = getattr(_state, "group", None)
    _state.group = (modules, origin)
    try:
        yield
    finally:
        _state.group = previous


def _attention(module, query, key, value, attention_mask, **kwargs):
    group = getattr(_state, "group", None)
    if group is None or id(module) not in group[0]:
        if _math_applies(module, query, kwargs):  # the encoder's self-attention, at inference
            return _math(query, key, value, _additive(attention_mask, kwargs.get("position_bias"), key), kwargs.get("scaling")), None
        return _sdpa(module, query, key, value, attention_mask, **kwargs)
    origin = group[1]
    rows, heads, t, dim = query.shape
    prompts = key.shape[0]
    order = torch.argsort(origin, stable=True)
    counts = torch.bincount(origin, minlength=prompts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(origin)
    slot[order] = torch.arange(rows, device=origin.device) - starts[origin[order]]
    slots = int(counts.max())
    packed = query.new_zeros(prompts, heads, slots, t, dim)
    packed[origin, :, slot] = query
    any_row = torch.zeros(prompts, dtype=torch.long, device=origin.device).scatter_(0, origin, torch.arange(rows, device=origin.device))
    mask = None if attention_mask is None else _per_prompt(attention_mask, any_row)  # a row's mask is its prompt's
    bias = kwargs.get("position_bias")
    bias = _additive(mask, None if bias is None else _per_prompt(bias, any_row), key)  # [n, 1|h, t|1, T]
    if _math_applies(module, query, kwargs, grouped=True):
        out = _math(packed.view(prompts, heads, slots * t, dim), key, value, bias, kwargs.get("scaling"), slots)
    else:
        bias = None if bias is None else _tile(bias, slots, t)
        kwargs = {**kwargs, "is_causal": False, "position_bias": None}
        out, _ = _sdpa(module, packed.view(prompts, heads, slots * t, dim), key, value, bias, **kwargs)
    return out.view(prompts, slots, t, heads, -1)[origin, slot], None


def _math_applies(module, query, kwargs, grouped: bool = False) -> bool:
    """Plain matmul-softmax-matmul instead of sdpa: on a CPU at inference (no dropout), for attention that is not
    causal (the encoder's, and grouped cross-attention). There, sdpa's kernel with a float mask (T5's position
    bias) is 2-5x slower for these short sequences."""
    inference = query.device.type == "cpu" and not torch.is_grad_enabled() and not kwargs.get("dropout")
    return inference and (grouped or not getattr(module, "is_decoder", True))


def _additive(mask: torch.Tensor | None, bias: torch.Tensor | None, key: torch.Tensor) -> torch.Tensor | None:
    """One float mask to add to the attention logits: ``bias`` where ``mask`` (bool, or additive float) lets a
    query attend, the dtype's minimum elsewhere (as ``sdpa_attention_forward`` combines them)."""
    if mask is None or bias is None:
        if mask is not None and mask.dtype == torch.bool:
            return torch.zeros((), dtype=key.dtype, device=key.device).masked_fill(~mask, torch.finfo(key.dtype).min)
        return mask if bias is None else bias
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.finfo(key.dtype).min)
    return bias + mask


def _math(query, key, value, bias, scaling, slots: int = 1) -> torch.Tensor:
    """``softmax(q k^T * scaling + bias) v`` as ``[b, t, h, d]``; with ``slots`` > 1 the queries are ``slots``
    blocks sharing one ``bias`` ``[b, h|1, t|1, T]``."""
    weights = torch.matmul(query, key.transpose(2, 3))
    if scaling is not None and scaling != 1.0:
        weights = weights * scaling
    if bias is not None:
        b, h, q, k = weights.shape
        weights = (weights.view(b, h, slots, q // slots, k) + bias[:, :, None]).view(b, h, q, k) if slots > 1 else weights + bias
    return torch.matmul(torch.softmax(weights, dim=-1), value).transpose(1, 2).contiguous()


def _per_prompt(mask: torch.Tensor, any_row: torch.Tensor) -> torch.Tensor:
    return mask if mask.shape[0] == 1 else mask[any_row]


def _tile(mask: torch.Tensor, slots: int, t: int) -> torch.Tensor:
    """A ``[n, 1|h, t|1, T]`` mask or bias for ``slots * t`` packed queries (the same for every slot)."""
    return mask if mask.shape[2] == 1 else mask.repeat(1, 1, slots, 1)

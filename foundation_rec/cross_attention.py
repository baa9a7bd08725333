"""Attention of beams over one copy of their prompt's keys and values.

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

A decoder-only model has the same waste in its self-attention: every beam's cache row holds a copy
of its prompt's keys and values, and each step concatenates and reorders them all (on the 4-layer
recommender, 20 beams over Yelp, that was 45% of a search's time). :func:`shared_prompt` keeps the
prompt's keys and values once per prompt (``prefix``) and only the generated tokens' in the
model's cache: each beam's queries attend to both with one softmax over prompt and generated keys.
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


def self_modules(model) -> dict[int, int]:
    """Id -> layer index of a decoder-only model's self-attention modules (Llama-style ``self_attn`` with a
    ``layer_idx``); empty for encoder-decoders and other architectures."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", True):
        return {}
    return {id(m): m.layer_idx for name, m in model.named_modules() if name.endswith("self_attn") and isinstance(getattr(m, "layer_idx", None), int)}


def enable(model) -> bool:
    """Switch ``model`` (an sdpa encoder-decoder, or a decoder-only model with :func:`self_modules`) to :data:`NAME`;
    False when it cannot use it (then nothing changes)."""
    config = getattr(model, "config", None)
    if config is None or not (cross_modules(model) if getattr(config, "is_encoder_decoder", False) else self_modules(model)):
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


@contextlib.contextmanager
def shared_prompt(modules: dict[int, int], origin: torch.Tensor, keys: list, values: list, prompt_mask: torch.Tensor) -> Iterator[None]:
    """Within the block, in this thread, self-attention layer ``modules[id]`` of row ``i`` attends to prompt
    ``origin[i]``'s keys and values (``keys[layer]``, ``values[layer]``: ``[prompts, kv heads, P, d]``, padding
    where ``prompt_mask`` ``[prompts, P]`` is 0) and then causally to the row's own keys in the model's cache."""
    previous = getattr(_state, "prefix", None)
    bias = torch.zeros(prompt_mask.shape, dtype=keys[0].dtype, device=prompt_mask.device).masked_fill(prompt_mask == 0, torch.finfo(keys[0].dtype).min)
    _state.prefix = (modules, origin, _slots(origin, len(prompt_mask)), keys, values, bias[:, None, None, :])  # slots: once per call, not per layer
    try:
        yield
    finally:
        _state.prefix = previous


def _slots(origin: torch.Tensor, prompts: int) -> tuple[torch.Tensor, int]:
    """Each row's slot among its prompt's rows (``origin[i]``: row ``i``'s prompt), and the most rows of one prompt."""
    order = torch.argsort(origin, stable=True)
    counts = torch.bincount(origin, minlength=prompts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(origin)
    slot[order] = torch.arange(len(origin), device=origin.device) - starts[origin[order]]
    return slot, int(counts.max())


def _pack(x: torch.Tensor, origin: torch.Tensor, slots: tuple[torch.Tensor, int], prompts: int) -> torch.Tensor:
    """Rows ``x`` ``[rows, h, t, d]`` as ``[prompts, h, slots * t, d]`` (row ``i`` in slot ``slot[i]`` of prompt ``origin[i]``, zeros
    in unused slots; ``slots``: :func:`_slots`)."""
    _, heads, t, dim = x.shape
    packed = x.new_zeros(prompts, heads, slots[1], t, dim)
    packed[origin, :, slots[0]] = x
    return packed.view(prompts, heads, -1, dim)


def _prefix_attention(module, query, key, value, state, scaling) -> torch.Tensor:
    """``[rows, t, h, d]``: one softmax over the row's prompt keys (shared per prompt) and its own causal keys."""
    modules, origin, slots, keys, values, bias = state
    layer = modules[id(module)]
    prefix_k, prefix_v = keys[layer], values[layer]
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value, prefix_k, prefix_v = (x.repeat_interleave(groups, dim=1) for x in (key, value, prefix_k, prefix_v))
    heads, t = query.shape[1:3]
    prompts, length = len(prefix_k), prefix_k.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    packed = _pack(query, origin, slots, prompts)
    on_prompt = (torch.matmul(packed, prefix_k.transpose(2, 3)) * scale + bias).view(prompts, heads, -1, t, length)[origin, :, slots[0]]
    own = torch.matmul(query, key.transpose(2, 3)) * scale  # [rows, h, t, T]: the generated tokens so far, the last t new
    span = key.shape[2]
    later = torch.arange(span, device=query.device)[None, :] > torch.arange(span - t, span, device=query.device)[:, None]
    own = own.masked_fill(later, torch.finfo(own.dtype).min)
    weights = torch.softmax(torch.cat([on_prompt, own], dim=-1), dim=-1)
    from_prompt = _pack(weights[..., :length].contiguous(), origin, slots, prompts)
    out = torch.matmul(from_prompt, prefix_v).view(prompts, heads, -1, t, value.shape[-1])[origin, :, slots[0]]
    return (out + torch.matmul(weights[..., length:], value)).transpose(1, 2).contiguous()


def _attention(module, query, key, value, attention_mask, **kwargs):
    prefix = getattr(_state, "prefix", None)
    if prefix is not None and id(module) in prefix[0]:
        return _prefix_attention(module, query, key, value, prefix, kwargs.get("scaling")), None
    group = getattr(_state, "group", None)
    if group is None or id(module) not in group[0]:
        if _math_applies(module, query, kwargs):  # the encoder's self-attention, at inference
            return _math(query, key, value, _additive(attention_mask, kwargs.get("position_bias"), key), kwargs.get("scaling")), None
        return _sdpa(module, query, key, value, attention_mask, **kwargs)
    origin = group[1]
    rows, heads, t = query.shape[:3]
    prompts = key.shape[0]
    slot, slots = _slots(origin, prompts)
    packed = _pack(query, origin, (slot, slots), prompts)
    any_row = torch.zeros(prompts, dtype=torch.long, device=origin.device).scatter_(0, origin, torch.arange(rows, device=origin.device))
    mask = None if attention_mask is None else _per_prompt(attention_mask, any_row)  # a row's mask is its prompt's
    bias = kwargs.get("position_bias")
    bias = _additive(mask, None if bias is None else _per_prompt(bias, any_row), key)  # [n, 1|h, t|1, T]
    if _math_applies(module, query, kwargs, grouped=True):
        out = _math(packed, key, value, bias, kwargs.get("scaling"), slots)
    else:
        bias = None if bias is None else _tile(bias, slots, t)
        kwargs = {**kwargs, "is_causal": False, "position_bias": None}
        out, _ = _sdpa(module, packed, key, value, bias, **kwargs)
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

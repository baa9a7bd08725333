"""Int8 inference copies of a model's linear layers, for ID generation on a CPU.

Cold IDs of a 20k-item catalog are the model's arithmetic: about 7 TFLOP of fp32 matrix products
for Yelp, which 2 CPU cores run at 100-150 GFLOP/s (``benchmarks/RESULTS.md``, *Cold IDs*). An int8
matrix product (``torch._int_mm``) runs about 5x faster there on a CPU with AVX-512 VNNI. :func:`quantize` returns a copy of a
model whose encoder and decoder linear layers are :class:`Int8Linear`: weights rounded to int8 with
one scale per output channel, activations rounded to int8 with one scale per row (token) at each
call, the product accumulated in int32 and scaled back to float. The output layer stays float (ID
tokens are chosen from its logits), and so do attention, norms and embeddings.

Whether int8 pays depends on the CPU. The speed-ups above were measured on an AMD EPYC with
AVX-512 VNNI (int8 dot products in one instruction); on a 2-core AMD EPYC without AVX-512, int8 IDs
of MovieLens-100k took 71.6 s against 10.4 s in fp32, seven times slower. :func:`choose` (the API's
and the demo's ``id_precision="auto"``) therefore times the model's own linear layer shapes in fp32
and in int8 once per CPU, torch build and thread count, takes int8 only when it is at least
:data:`MIN_INT8_SPEEDUP` times faster, and caches that choice with the timings and the CPU's flags
(:func:`cpu_features`) under ``<cache>/id_precision/``.

The IDs are not bit-identical to fp32 generation: a near-tie between two candidates can flip.
``python -m benchmarks.ids catalog`` measures the share of items that keep their ID, and the README's
results say what it does to zero-shot accuracy. It is an inference path only (no gradients), and
:func:`available` says whether this torch build has the int8 kernel.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .errors import FoundationRecError
from .paths import cache_dir

MIN_INT8_SPEEDUP = 1.1  # int8 IDs can differ from fp32's on near-ties, so int8 must be this much faster to be chosen
# CPU flags that decide int8 speed: x86 vector widths and int8 dot-product units, Arm's int8 dot products
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
              "asimddp", "i8mm", "sve")
PROBE_VERSION = 1  # bump when the timing below changes: cached choices are then made again


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


@functools.cache
def cpu_features() -> dict:
    """``{"cpu": model name, "flags": [...]}``: the CPU and those of its :data:`INT8_FLAGS` it has (from
    ``/proc/cpuinfo`` on Linux; elsewhere the processor's name and no flags)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            name = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    return {"cpu": name, "flags": [f for f in INT8_FLAGS if f in flags]}


def linear_shapes(model: nn.Module, keep: tuple[str, ...] = ("lm_head",)) -> list[list[int]]:
    """``[in_features, out_features, count]`` of the ``nn.Linear`` layers :func:`quantize` would replace."""
    counts: dict[tuple[int, int], int] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear) and name.rsplit(".", 1)[-1] not in keep:
            shape = (layer.in_features, layer.out_features)
            counts[shape] = counts.get(shape, 0) + 1
    return [[i, o, n] for (i, o), n in sorted(counts.items())]


def _seconds_per_call(layer: nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        layer(x)
    return (time.perf_counter() - start) / calls


def time_linears(shapes: list[list[int]], rows: int, repeats: int = 5, budget_s: float = 2.0) -> dict[str, float]:
    """Seconds of one pass of ``rows`` rows through layers of these ``[in, out, count]`` shapes, in fp32 and in
    int8 (:class:`Int8Linear`, activation rounding included): per shape the least of ``repeats`` timings after a
    warm-up (fewer, but at least two, once ``budget_s`` is spent), the two paths taking turns so that other work
    on the machine slows both alike."""
    generator = torch.Generator().manual_seed(0)
    cases = []
    for n_in, n_out, count in shapes:
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.normal_(0, n_in ** -0.5, generator=generator)
        x = torch.randn(rows, n_in, generator=generator)
        cases.append((linear, Int8Linear(linear), x, count, max(1, 2**22 // (rows * n_in * n_out))))
    best = {"fp32": [math.inf] * len(cases), "int8": [math.inf] * len(cases)}
    start = time.perf_counter()
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms up
            if repeat > 2 and time.perf_counter() - start > budget_s:
                break
            for k, (linear, quantized, x, _, calls) in enumerate(cases):
                for precision, layer in (("fp32", linear), ("int8", quantized)):
                    seconds = _seconds_per_call(layer, x, calls)
                    if repeat:
                        best[precision][k] = min(best[precision][k], seconds)
    return {f"{p}_s": sum(s * case[3] for s, case in zip(times, cases, strict=True)) for p, times in best.items()}


def faster(fp32_s: float, int8_s: float) -> str:
    """The precision these timings call for: ``int8`` when it is at least :data:`MIN_INT8_SPEEDUP` times faster, else ``fp32``."""
    return "int8" if int8_s > 0 and fp32_s >= MIN_INT8_SPEEDUP * int8_s else "fp32"


def choose(model: nn.Module, rows: int, *, refresh: bool = False) -> dict:
    """The arithmetic of ID generation that is faster for ``model`` on this machine (``id_precision="auto"``).

    Times ``model``'s linear layer shapes on ``rows`` rows (:func:`time_linears`) once per CPU, flags, torch
    build, thread count and shapes, and caches the record as ``<cache>/id_precision/<key>.json``; ``refresh``
    times again. The record holds ``precision`` (the choice, :func:`faster`), ``fp32_s``, ``int8_s``,
    ``int8_speedup``, ``key`` (what it was timed on, with the CPU's flags), ``measured`` and ``file``.
    Without the int8 kernel there is nothing to time: ``precision`` is ``fp32`` and ``reason`` says why."""
    features = cpu_features()
    if not available():
        return {"precision": "fp32", "reason": f"torch {torch.__version__} has no int8 kernel on this CPU", "key": features}
    key = {"probe": PROBE_VERSION, **features, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "shapes": linear_shapes(model), "rows": rows}
    if not key["shapes"]:
        return {"precision": "fp32", "reason": "the model has no linear layer that int8 would replace", "key": key}
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    file = cache_dir() / "id_precision" / f"{digest}.json"
    if file.is_file() and not refresh:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            if record.get("key") == key:
                return record
        except (OSError, ValueError):
            pass  # unreadable: time again and write it anew
    timing = time_linears(key["shapes"], rows)
    record = {"key": key, **{k: round(v, 7) for k, v in timing.items()}, "measured": datetime.now(UTC).isoformat(timespec="seconds"),
              "file": str(file)}
    record["precision"] = faster(record["fp32_s"], record["int8_s"])
    record["int8_speedup"] = round(record["fp32_s"] / max(record["int8_s"], 1e-12), 3)
    try:
        atomic.write_json(file, record)
    except OSError:
        pass  # a read-only cache: the choice holds for this process, and the next one times again
    return record


def describe(record: dict) -> str:
    """One clause on a :func:`choose` record, saying why ``auto`` chose as it did (for logs and the demo's page)."""
    if "reason" in record:
        return f"auto: {record['reason']}"
    flags = ", ".join(record["key"]["flags"]) or "none of " + ", ".join(INT8_FLAGS[:6])
    return (f"auto: int8 runs the generator's layers at {record['int8_speedup']:.2f}x fp32's speed on this CPU, whose int8-relevant "
            f"flags are {flags}; int8 is chosen from {MIN_INT8_SPEEDUP:.1f}x")

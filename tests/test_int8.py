"""Int8 ID generation (int8.py): the int8 linear layer's arithmetic, the quantized copy, and the generator's precision setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_idgen import TEXTS, tiny_generator
from torch import nn

from foundation_rec import int8
from foundation_rec.api import FoundationRec
from foundation_rec.errors import FoundationRecError
from foundation_rec.idgen import IDGenConfig, IDGenerator
from foundation_rec.paths import cache_dir

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(not int8.available(), reason="torch._int_mm is missing")]


def test_int8_linear_is_exact_on_values_on_the_int8_grid():
    """Weight rows and input rows that peak at 127 are their own int8 codes (scale 1), so the product is
    the exact integer one: x W^T + b, worked by hand."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[127.0, 3.0], [2.0, 127.0]]))
        linear.bias.copy_(torch.tensor([0.5, -1.0]))
    got = int8.Int8Linear(linear)(torch.tensor([[127.0, -2.0], [127.0, -1.0]]))
    assert torch.equal(got, torch.tensor([[127 * 127 - 2 * 3 + 0.5, 2 * 127 - 2 * 127 - 1.0], [127 * 127 - 3 + 0.5, 2 * 127 - 127 - 1.0]]))


def test_int8_linear_is_within_a_percent_of_fp32_on_gaussian_data():
    torch.manual_seed(0)
    linear = nn.Linear(256, 1024)
    x = torch.randn(3, 40, 256)
    ref, got = linear(x), int8.Int8Linear(linear)(x)
    assert got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()).item() < 0.01
    assert not torch.equal(got, ref)  # it is int8 arithmetic, not the float layer


def test_quantize_copies_the_model_and_keeps_the_output_layer_float(cold):
    model = cold.backbone.hf_model
    twin = int8.quantize(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    replaced = [n for n, m in twin.named_modules() if isinstance(m, int8.Int8Linear)]
    assert replaced == [n for n in linears if not n.endswith("lm_head")] and replaced
    assert isinstance(twin.lm_head, nn.Linear) and not any(isinstance(m, int8.Int8Linear) for m in model.modules())


@pytest.fixture(scope="module")
def cold() -> IDGenerator:
    return tiny_generator()


def test_int8_precision_gives_unique_ids_close_to_fp32(cold):
    fp32 = cold.assign(TEXTS, set(), progress=False)
    quick = IDGenerator(cold.backbone, dataclasses.replace(cold.config, precision="int8"))
    ids = quick.assign(TEXTS, set(), progress=False)
    assert len(set(ids.ids)) == len(TEXTS) and all(ids.ids)
    assert isinstance(quick.inference_model().encoder.block[0].layer[0].SelfAttention.q, int8.Int8Linear)
    assert cold.inference_model() is cold.backbone.hf_model  # fp32 runs the model itself
    assert sum(a == b for a, b in zip(ids.ids, fp32.ids)) >= len(TEXTS) // 2


def test_the_int8_copy_follows_the_weights():
    """Training changes the weights in place; the next generation quantizes them again, never a stale copy."""
    generator = tiny_generator()
    generator.config = dataclasses.replace(generator.config, precision="int8")
    first = generator.inference_model()
    assert generator.inference_model() is first
    with torch.no_grad():
        generator.backbone.hf_model.encoder.block[0].layer[0].SelfAttention.q.weight.mul_(2)
    again = generator.inference_model()
    assert again is not first
    new, old = again.encoder.block[0].layer[0].SelfAttention.q, first.encoder.block[0].layer[0].SelfAttention.q
    assert torch.allclose(new.weight_scale, 2 * old.weight_scale)  # same int8 codes, twice the scale


def test_an_unknown_precision_is_one_line():
    with pytest.raises(FoundationRecError, match="precision='fp16' is not an ID precision; use 'fp32' or 'int8'"):
        IDGenerator(tiny_generator().backbone, IDGenConfig(precision="fp16"))


# ----- id_precision="auto": the arithmetic that is faster on the machine running it -----

DECISIVE = 1.5  # a fresh timing is compared with the recorded one only when both are this far from a tie


def decisive(fp32_s: float, int8_s: float) -> bool:
    ratio = fp32_s / int8_s
    return ratio >= DECISIVE * int8.MIN_INT8_SPEEDUP or ratio <= 1 / DECISIVE


def generator_sized() -> nn.Module:
    """Linear layers of the default generator's shapes (d_model 256, d_ff 1024), where int8 may pay on this CPU."""
    return nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))


@pytest.mark.parametrize("which", ["tiny generator", "generator-sized layers"])
def test_auto_chooses_the_arithmetic_that_is_faster_as_timed_here(cold, which):
    """The choice is the faster of the two recorded timings (int8 only when at least MIN_INT8_SPEEDUP faster), the
    record names this CPU's flags, a second call reads the cache, and a fresh timing agrees where either is clear."""
    model, rows = (cold.backbone.hf_model, 64) if which == "tiny generator" else (generator_sized(), 256)
    record = int8.choose(model, rows)
    assert record["precision"] == int8.faster(record["fp32_s"], record["int8_s"])
    if record["precision"] == "int8":
        assert record["int8_s"] * int8.MIN_INT8_SPEEDUP <= record["fp32_s"]  # never a path slower than fp32
    assert record["key"]["flags"] == int8.cpu_features()["flags"] and record["key"]["shapes"] == int8.linear_shapes(model)
    assert record["key"]["torch"] == torch.__version__ and record["key"]["threads"] == torch.get_num_threads()
    again = int8.choose(model, rows)
    assert again == record and (cache_dir() / "id_precision").is_dir()  # timed once, then read back
    fresh = int8.time_linears(record["key"]["shapes"], rows)
    if decisive(record["fp32_s"], record["int8_s"]) and decisive(**fresh):
        assert int8.faster(**fresh) == record["precision"], (record, fresh)


def test_the_faster_rule_prefers_fp32_on_a_near_tie():
    assert int8.faster(fp32_s=1.0, int8_s=0.5) == "int8"
    assert int8.faster(fp32_s=1.0, int8_s=0.95) == "fp32"  # int8 IDs can differ on near-ties: a 5% gain does not pay for that
    assert int8.faster(fp32_s=1.0, int8_s=7.0) == "fp32"  # a CPU without AVX-512 VNNI


def test_cpu_features_are_the_int8_flags_of_proc_cpuinfo():
    features = int8.cpu_features()
    assert set(features["flags"]) <= set(int8.INT8_FLAGS) and features["cpu"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        listed = {w for line in cpuinfo.read_text().splitlines() if line.split(":")[0].strip() in ("flags", "Features")
                  for w in line.split(":", 1)[1].split()}
        assert features["flags"] == [f for f in int8.INT8_FLAGS if f in listed]


def test_the_api_applies_the_cached_choice(tiny_checkpoint):
    model = FoundationRec.from_pretrained(tiny_checkpoint, device="cpu", id_precision="auto")
    choice = model.id_precision_choice
    assert model.generator.config.precision == choice["precision"] in ("fp32", "int8")
    assert Path(choice["file"]).parent == cache_dir() / "id_precision" and choice["file"].endswith(".json")
    again = FoundationRec.from_pretrained(tiny_checkpoint, device="cpu", id_precision="auto")
    assert again.id_precision_choice == choice  # the second start reads the choice, it does not time again
    assert FoundationRec.from_pretrained(tiny_checkpoint, device="cpu", id_precision="fp32").id_precision_choice is None
    assert int8.describe(choice).startswith("auto: ") and "flags are" in int8.describe(choice)

"""Int8 ID generation (int8.py): the int8 linear layer's arithmetic, the quantized copy, and the generator's precision setting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_idgen import TEXTS, tiny_generator
from torch import nn

from foundation_rec import int8
from foundation_rec.errors import FoundationRecError
from foundation_rec.idgen import IDGenConfig, IDGenerator

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

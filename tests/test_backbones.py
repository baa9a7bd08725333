"""Backbone loading: presets, tokenizer determinism, save/load round trips, LoRA, quantization guard, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from foundation_rec.backbones import BackboneConfig, load_backbone, train_tokenizer
from foundation_rec.errors import FoundationRecError

TEXTS = [
    "title: Maybelline Great Lash Mascara; brand: Maybelline",
    "title: Red Matte Lipstick & Liner",
    "title: Call of Duty: World at War; genres: Action",
    "title: The Great Greek; categories: Diners, Greek",
] * 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(BackboneConfig(preset="tiny", device="cpu"), tokenizer_texts=TEXTS)


def test_tiny_preset(tiny):
    assert tiny.family == "seq2seq" and tiny.seq2seq and tiny.device.type == "cpu"
    tok = tiny.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tiny.hf_model.config.decoder_start_token_id == 0 and tiny.hf_model.config.vocab_size == len(tok)
    ids = tok("Great Lash Mascara!")["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == "great lash mascara!"
    assert tok.decode(tok("Zyxwv 42")["input_ids"], skip_special_tokens=True) == "zyxwv 42"  # unseen words are spelled, not <unk>


def test_tokenizer_and_init_are_deterministic(tiny):
    assert train_tokenizer(TEXTS).get_vocab() == tiny.tokenizer.get_vocab()
    assert train_tokenizer().get_vocab() == train_tokenizer().get_vocab()  # the built-in word list
    again = load_backbone(BackboneConfig(preset="tiny", device="cpu"), tokenizer_texts=TEXTS)
    other = load_backbone(BackboneConfig(preset="tiny", device="cpu", seed=1), tokenizer_texts=TEXTS)
    weight = "shared.weight"
    assert torch.equal(again.model.state_dict()[weight], tiny.model.state_dict()[weight])
    assert not torch.equal(other.model.state_dict()[weight], tiny.model.state_dict()[weight])


def test_save_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path / "bb", extra={"note.json": {"a": 1}})
    assert (tmp_path / "bb" / "model.safetensors").is_file() and (tmp_path / "bb" / "note.json").is_file()
    loaded = load_backbone(BackboneConfig(name_or_path=str(tmp_path / "bb"), device="cpu"))
    assert loaded.family == "seq2seq" and loaded.tokenizer.padding_side == "right"
    assert loaded.tokenizer(TEXTS)["input_ids"] == tiny.tokenizer(TEXTS)["input_ids"]
    for (name, a), b in zip(tiny.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_causal_family_detected_from_a_local_directory(tiny, tmp_path):
    tok = tiny.tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    loaded = load_backbone(BackboneConfig(name_or_path=str(tmp_path / "llama"), device="cpu"))
    assert loaded.family == "causal" and loaded.tokenizer.padding_side == "left"


def test_lora_trains_only_adapters_and_round_trips(tmp_path):
    backbone = load_backbone(BackboneConfig(preset="tiny", device="cpu", lora_r=4), tokenizer_texts=TEXTS)
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainable_count = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad)
    assert trainable_count < sum(p.numel() for p in backbone.model.parameters()) / 10
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    enc = backbone.tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    for _ in range(2):  # lora_B starts at zero, so lora_A only moves from the second step on
        loss = backbone.hf_model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        torch.optim.SGD([p for p in backbone.model.parameters() if p.requires_grad], lr=1.0).step()
        backbone.model.zero_grad()
    changed = {n for n, p in backbone.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable

    backbone.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    loaded = load_backbone(BackboneConfig(name_or_path=str(tmp_path / "lora"), device="cpu"))
    assert sum(p.numel() for p in loaded.model.parameters() if p.requires_grad) == trainable_count
    backbone.model.train(False)
    with torch.no_grad():
        expected = backbone.hf_model(**enc, labels=enc["input_ids"]).logits
        assert torch.allclose(loaded.hf_model(**enc, labels=enc["input_ids"]).logits, expected, atol=1e-5)


def test_quantization_on_cpu_is_a_clear_error():
    with pytest.raises(FoundationRecError, match="--load-in-4bit needs a CUDA GPU; drop it on CPU"):
        load_backbone(BackboneConfig(preset="tiny", device="cpu", load_in_4bit=True))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (BackboneConfig(), "pass --preset NAME or --model"),
        (BackboneConfig(preset="tiny", name_or_path="x"), "pass --preset NAME or --model"),
        (BackboneConfig(preset="huge"), "unknown preset 'huge'"),
        (BackboneConfig(preset="tiny", dtype="int3"), "unknown dtype"),
        (BackboneConfig(preset="tiny", device="tpu9"), "unknown device"),
        (BackboneConfig(name_or_path="/no/such/model/dir"), "cannot load model"),
        (BackboneConfig(name_or_path="/no/such/model.gguf"), "GGUF file"),
    ],
)
def test_user_errors(config, message):
    with pytest.raises(FoundationRecError, match=message):
        load_backbone(config)


def test_lora_load_is_quiet_on_cpu():
    """Attaching LoRA imports peft (and through it bitsandbytes); neither may print notes a user reads as errors."""
    code = ("from foundation_rec.backbones import BackboneConfig, load_backbone\n"
            "load_backbone(BackboneConfig(preset='tiny-causal', lora_r=4), tokenizer_texts=['a b c', 'd e f'])\n"
            "import sys; assert 'peft' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr

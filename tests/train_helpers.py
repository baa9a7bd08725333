"""Tiny models for the trainer tests: the ``tiny`` backbone preset for the ID generator and the recommender."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from foundation_rec.backbones import Backbone, BackboneConfig, load_backbone
from foundation_rec.idgen import IDGenConfig, IDGenerator
from foundation_rec.recommender import GenerativeRecommender
from foundation_rec.train import share_tokenizer

FAST_IDS = IDGenConfig(num_beams=4, num_beam_groups=2, max_id_tokens=4, length_steps=1, max_input_tokens=32)


def tiny_backbone(texts, seed: int, decoder_only: bool = False, saved=None) -> Backbone:
    """The ``tiny`` T5 preset (or the backbone saved in ``saved``), or a 1-layer Llama with the same trained tokenizer."""
    if saved is not None:
        return load_backbone(BackboneConfig(name_or_path=str(saved), device="cpu"))
    backbone = load_backbone(BackboneConfig(preset="tiny", device="cpu", seed=seed), tokenizer_texts=texts)
    if decoder_only:
        torch.manual_seed(seed)
        tok = backbone.tokenizer
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        backbone = Backbone(model=LlamaForCausalLM(config), tokenizer=tok, family="causal", config=backbone.config)
    return backbone


def tiny_models(texts, seed: int = 0, decoder_only: bool = False, saved=None):
    """``(recommender, generator, save_models)`` sharing one tokenizer; ``saved``: a checkpoint to load them from."""
    rec_backbone = tiny_backbone(texts, seed, decoder_only, saved and saved / "recommender")
    gen_backbone = tiny_backbone(texts, seed + 1, saved=saved and saved / "generator")
    share_tokenizer(rec_backbone, gen_backbone)

    def save_models(folder):
        rec_backbone.save(folder / "recommender")
        gen_backbone.save(folder / "generator")

    return GenerativeRecommender(rec_backbone.model, rec_backbone.tokenizer), IDGenerator(gen_backbone, FAST_IDS), save_models

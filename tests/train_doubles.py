"""Test doubles for the trainer tests: a word-level tokenizer, tiny T5 models and a minimal ID generator.

The generator double implements exactly the interface :class:`foundation_rec.train.Trainer` uses, so the
trainer's tests do not depend on the real ID generator's internals.
"""

from __future__ import annotations

import re

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from foundation_rec.decoding import beam_search


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the lower-cased words of ``texts`` plus the prompt templates' words."""
    from foundation_rec.prompts import ANONYMOUS_USER, SEPARATOR, TEMPLATES

    words = ["<pad>", "</s>", "<unk>", *map(str, range(100))]
    for text in [*texts, *TEMPLATES, ANONYMOUS_USER, SEPARATOR, "user"]:
        words += re.findall(r"\w+|[^\w\s]", text.replace("{user}", "").replace("{history}", ""))
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5(vocab_size: int, seed: int) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config)


def tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(config)


class GeneratorDouble:
    """A T5 that maps item text to an ID: teacher-forced distributions, beam-search IDs made unique by a suffix."""

    def __init__(self, model, tokenizer, id_words: int = 2):
        self.model, self.tokenizer, self.id_words = model, tokenizer, id_words

    def _encode(self, texts):
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def token_distributions(self, texts, id_token_ids):
        input_ids, mask = self._encode(texts)
        width = max(len(t) for t in id_token_ids)
        labels = torch.tensor([list(t) + [0] * (width - len(t)) for t in id_token_ids])
        logits = self.model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
        return logits.softmax(-1)

    def keyword_ids(self, texts):
        return [" ".join(re.findall(r"\w+", t.lower())[: self.id_words]) for t in texts]

    @torch.no_grad()
    def generate_ids(self, texts, rank=0, world=1, gather=lambda x: x):
        mine = list(range(rank, len(texts), world))
        input_ids, mask = self._encode([texts[i] for i in mine])
        out = beam_search(self.model, input_ids, mask, num_beams=2, max_new_tokens=3, eos_token_id=1, pad_token_id=0,
                          bad_token_mask=torch.arange(self.model.config.vocab_size) == 2)
        words = [self.tokenizer.decode(s[0], skip_special_tokens=True).strip() or "item" for s in out.sequences]
        ordered = dict(gather(list(zip(mine, words))))
        seen, ids = set(), []
        for i in range(len(texts)):
            base, n, candidate = ordered[i], 1, ordered[i]
            while candidate in seen:
                n += 1
                candidate = f"{base} {self.keyword_ids([str(n)])[0]}"
            seen.add(candidate)
            ids.append(candidate)
        return ids

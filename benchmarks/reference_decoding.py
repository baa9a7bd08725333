"""The reference that :func:`foundation_rec.decoding.item_search` is checked (``tests/test_decoding.py``)
and benchmarked (``benchmarks/decoding.py``) against: Hugging Face ``model.generate`` with a
``prefix_allowed_tokens_fn`` that walks a dict trie, IDGenRec's original constrained decoding.

Not part of the package: nothing in ``foundation_rec`` decodes this way.
"""

from __future__ import annotations

import torch

from foundation_rec.decoding import BeamSearchOutput
from foundation_rec.trie import Trie


def dict_trie(trie: Trie) -> dict:
    """The trie as nested Python dicts ``{token: child}``; a leaf holds ``{-1: item}`` (for the reference)."""
    root: dict = {}
    for item, sequence in enumerate(trie.sequences()):
        node = root
        for token in sequence:
            node = node.setdefault(token, {})
        node[-1] = item
    return root


@torch.inference_mode()
def reference_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    prefix_trie: dict | None = None,
    bad_token_mask: torch.Tensor | None = None,
    decoder_start_token_id: int | None = None,
    length_penalty: float = 1.0,
) -> BeamSearchOutput:
    """The baseline :func:`~foundation_rec.decoding.item_search` is checked and benchmarked against: ``model.generate`` with
    ``num_beams = num_return_sequences = num_beams`` and, given ``prefix_trie`` (:func:`dict_trie`),
    a ``prefix_allowed_tokens_fn`` that walks the dict trie from its root for every beam at every step
    (IDGenRec's original constrained decoding). Output in :class:`BeamSearchOutput` form."""
    from transformers import GenerationConfig

    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    prompt = 1 if seq2seq else input_ids.shape[1]

    def allowed(_batch_id: int, sent: torch.Tensor) -> list[int]:
        node = prefix_trie
        for token in sent.tolist()[prompt:]:
            node = node.get(token)
            if node is None:  # a filler beam beyond the catalog: end it
                return [eos_token_id]
        return [token for token in node if token >= 0] or [eos_token_id]

    config = GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        early_stopping=False,
        length_penalty=length_penalty,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        decoder_start_token_id=decoder_start_token_id if seq2seq else None,
        suppress_tokens=None if bad_token_mask is None else bad_token_mask.nonzero().flatten().tolist(),
        return_dict_in_generate=True,
        output_scores=True,
    )
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        prefix_allowed_tokens_fn=allowed if prefix_trie is not None else None,
    )
    sequences = out.sequences[:, prompt:]
    after_eos = (sequences == eos_token_id).long().cumsum(-1) - (sequences == eos_token_id).long() > 0
    sequences = sequences.masked_fill(after_eos, pad_token_id).view(len(input_ids), num_beams, -1)
    items = []
    for row in sequences.flatten(0, 1).tolist():
        node = prefix_trie or {}
        for token in row[: row.index(eos_token_id) + 1 if eos_token_id in row else 0]:
            node = node.get(token, {})
        items.append(node.get(-1, -1))
    items = torch.tensor(items, device=sequences.device).view(sequences.shape[:2])
    return BeamSearchOutput(sequences=sequences, scores=out.sequences_scores.view(items.shape), items=items)

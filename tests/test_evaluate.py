"""The evaluation harness on the tiny Beauty fixture, with a hand-checkable recommender."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from foundation_rec.corpora import load_corpus
from foundation_rec.errors import FoundationRecError
from foundation_rec.evaluate import Examples, evaluate, evaluate_examples, examples, write_report


class HistoryFirst:
    """Recommends the history (latest first), then every other item in row order; pads with -1."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def recommend(self, histories, k):
        out = np.full((len(histories), k), -1)
        for i, hist in enumerate(histories):
            seen = list(dict.fromkeys(hist[::-1].tolist()))
            row = seen + [j for j in range(self.n_items) if j not in seen]
            out[i, : min(k, len(row))] = row[:k]
        return out


@pytest.fixture
def beauty(fixture_data):
    # sequences [0,1,2,3,4], [4,3,2], [1,0], [2]: test targets 4, 2, 0; the one-item user is excluded
    return load_corpus("amazon2014-beauty", fixture_data)


def test_examples_and_exclusion_count(beauty):
    ex = examples(beauty)
    assert ex.targets.tolist() == [4, 2, 0]
    assert [h.tolist() for h in ex.histories] == [[0, 1, 2, 3], [4, 3], [1]]
    assert (ex.users_total, ex.users_excluded, ex.sampled) == (4, 1, False)


def test_hand_checked_metrics(beauty):
    result = evaluate(beauty, HistoryFirst(5), "history-first", progress=False)
    # lists [3,2,1,0,4], [3,4,0,1,2], [1,0,2,3,4]: target ranks 4, 4, 1
    assert result["metrics"]["R@5"] == 1.0 and result["metrics"]["R@10"] == 1.0
    assert result["metrics"]["N@5"] == pytest.approx((2 / math.log2(6) + 1 / math.log2(3)) / 3)
    assert (result["users_evaluated"], result["users_excluded"], result["catalog_size"]) == (3, 1, 5)
    assert result["exclude_history"] is False and result["sampled"] is False
    # with history excluded the lists become [4], [0,1,2], [0,2,3,4]: ranks 0, 2, 0
    excluded = evaluate(beauty, HistoryFirst(5), "history-first", exclude_history=True, progress=False)
    assert excluded["metrics"]["N@5"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_sample_is_fixed_and_reported(beauty):
    first, again = examples(beauty, max_users=2, seed=3), examples(beauty, max_users=2, seed=3)
    assert first.sampled and len(first) == 2 and first.targets.tolist() == again.targets.tolist()
    assert not examples(beauty, max_users=50).sampled
    with pytest.raises(FoundationRecError, match="--max-users must be at least 1"):
        examples(beauty, max_users=0)


def test_bad_recommender_is_refused(beauty):
    class OutOfCatalog:
        def recommend(self, histories, k):
            return np.full((len(histories), k), 5)

    with pytest.raises(FoundationRecError, match="outside the catalog"):
        evaluate(beauty, OutOfCatalog(), "bad", progress=False)

    class WrongShape:
        def recommend(self, histories, k):
            return np.zeros((len(histories), k - 1), dtype=np.int64)

    with pytest.raises(FoundationRecError, match="expected integers"):
        evaluate(beauty, WrongShape(), "bad", progress=False)


def test_report_files(beauty, tmp_path):
    result = evaluate(beauty, HistoryFirst(5), "history-first", progress=False)
    json_path, md_path = write_report([result], tmp_path / "out", "run", {"note": "x"})
    payload = json.loads(json_path.read_text())
    assert payload["note"] == "x" and payload["results"][0]["method"] == "history-first"
    table = md_path.read_text()
    assert "| amazon2014-beauty | history-first | kept | 3 all | 5 |" in table and "R@10" in table


def test_every_table_row_names_its_history_setting(beauty, tmp_path):
    """Kept and excluded rows of one method are told apart by the history column, in the table and the report."""
    from foundation_rec.evaluate import evaluate_settings, markdown_table

    kept, excluded = evaluate_settings(beauty, HistoryFirst(5), "history-first", (False, True), progress=False)
    table = markdown_table([kept, excluded])
    assert table.splitlines()[0].startswith("| corpus | method | history | users |")
    assert [line.split(" | ")[1:3] for line in table.splitlines()[2:]] == [["history-first", "kept"], ["history-first", "excluded"]]
    assert write_report([kept, excluded], tmp_path, "run")[1].read_text() == table


def test_one_ranking_pass_gives_both_history_settings(fixture_data):
    """evaluate_settings scores history kept and excluded from one call of the recommender, exactly as two evaluate calls do."""
    from foundation_rec.baselines import Popularity
    from foundation_rec.corpora import load_corpus
    from foundation_rec.evaluate import evaluate, evaluate_settings

    corpus = load_corpus("amazon2014-beauty", fixture_data)
    model = Popularity.fit(corpus)
    calls = []
    counted = type("Counted", (), {"recommend": lambda self, h, k: calls.append(k) or model.recommend(h, k)})()
    kept, excluded = evaluate_settings(corpus, counted, "popularity", (False, True), progress=False)
    assert calls == [10 + 20]
    assert kept["metrics"] == evaluate(corpus, model, "popularity", progress=False)["metrics"]
    assert excluded["metrics"] == evaluate(corpus, model, "popularity", exclude_history=True, progress=False)["metrics"]
    assert (kept["exclude_history"], excluded["exclude_history"]) == (False, True)


class ByUser:
    """Recommends item ``users[i]`` first (the harness must pass each example's own user), then row order."""

    def recommend(self, histories, k, users):
        return np.asarray([[u] + [j for j in range(k + 1) if j != u][: k - 1] for u in users])


def test_evaluate_examples_passes_users_and_gathers_shards():
    """Pre-built examples: users reach the recommender in order; a gather of two shards scores both, by hand."""
    shard = Examples("test", [np.array([5]), np.array([6])], np.array([2, 0]), users_total=2, users_excluded=0, sampled=False, users=[2, 3])
    # example 0: item 2 is ranked first (hit at rank 1); example 1: user 3 first, then 0 -> hit at rank 2
    alone = evaluate_examples(shard, ByUser(), "by-user", n_items=30)[0]
    assert alone["R@5"] == 1.0 and alone["N@5"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    twice = evaluate_examples(shard, ByUser(), "by-user", n_items=30, gather=lambda rows: rows + rows)[0]
    assert twice == pytest.approx(alone)
    other = Examples("test", [np.array([5]), np.array([5])], np.array([9, 10]), users_total=2, users_excluded=0, sampled=False, users=[1, 1])
    mixed = evaluate_examples(shard, ByUser(), "by-user", n_items=30, gather=lambda rows: rows + evaluate_rows(other))[0]
    # the other shard ranks [1, 0, 2, ..., 9]: item 9 is a hit at rank 10, item 10 a miss
    assert mixed["R@10"] == pytest.approx(3 / 4) and mixed["N@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 4)


def evaluate_rows(ex):
    ranked = ByUser().recommend(ex.histories, 10, ex.users)
    return [(r.tolist(), int(t), h.tolist()) for r, t, h in zip(ranked, ex.targets, ex.histories)]

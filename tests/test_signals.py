"""Platform signals: counts, the repeat mixture, the two protocols, bad counts files (foundation_rec.signals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foundation_rec.content_prior import ContentScorer, PriorRanking, load_scorer
from foundation_rec.errors import FoundationRecError
from foundation_rec.signals import NEVER, PlatformCounts, read_counts_file, repeat_mixture, repeat_statistics


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_repeat_statistics_by_hand():
    """Sequences [0 1 0 2] and [3 4]: next items 1 (new), 0 (repeat, last seen 2 steps back, history without a
    repeat), 2 (new, history [0 1 0] has a repeat), 4 (new). Without repeats: 1 of 3; with: 0 of 1."""
    rate, age = repeat_statistics(np.array([0, 4, 6]), np.array([0, 1, 0, 2, 3, 4]), max_history=4)
    assert rate == (pytest.approx(1 / 3), 0.0)
    assert age.tolist() == pytest.approx(np.array([1, 2, 1, 1]) / 5)


def test_counts_from_sequences_popularity_and_recent():
    stamps = np.arange(10, dtype=np.float64)  # the latest tenth: the last interaction only
    counts = PlatformCounts.from_sequences(np.array([0, 10]), np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6]), 8, stamps)
    assert counts.popularity.tolist() == [3, 2, 1, 1, 1, 1, 1, 0]
    assert counts.recent.tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    assert PlatformCounts.from_sequences(np.array([0, 2]), np.array([0, 1]), 2).recent.tolist() == [1, 1]  # no timestamps: overall


def test_repeat_mixture_by_hand():
    """Three items, history [1]; counts say a history item comes back with probability 0.5. Item 1 gets
    log(0.5 * 1); items 0 and 2 share the other half by their softmax over new items only."""
    logits = torch.tensor([[0.0, 5.0, math.log(3.0)]])
    counts = PlatformCounts(np.ones(3), np.ones(3), (0.5, 0.5), None)
    out = repeat_mixture(logits, [np.array([1])], counts)
    assert out.exp().tolist()[0] == pytest.approx([0.5 * 0.25, 0.5, 0.5 * 0.75])
    strict = repeat_mixture(logits, [np.array([1])], None)  # the user never repeated: no repeat expected
    assert strict[0, 1].item() == NEVER and strict[0, [0, 2]].exp().tolist() == pytest.approx([0.25, 0.75])


def test_counts_protocol_ranks_the_popular_next_item_first_and_strict_does_not_see_counts():
    """Texts say nothing (the history's vector is orthogonal to every candidate); the platform's logs say item 7
    is what everyone takes. With counts it comes first; strict ranks by text alone and never reads the counts."""
    vectors = torch.eye(10)
    scorer = ContentScorer(10, 20)
    scorer.signals.weights.data = torch.tensor([1.0, 0.5, 0.0])
    counts = PlatformCounts.from_popularity(np.array([1, 1, 1, 1, 1, 1, 1, 500, 1, 1]))
    history = [np.array([0])]
    assert PriorRanking(scorer, vectors, counts).recommend(history, 1)[0, 0] == 7
    strict = PriorRanking(scorer, vectors).recommend(history, 10)[0]
    assert strict[0] != 7 and strict[-1] == 0  # all new items tie on text; the user's own item comes last
    assert torch.equal(scorer.log_prior(history, vectors), scorer.log_prior(history, vectors, None))


def test_repeats_come_first_for_a_user_who_repeats():
    """Strict: a user who went back to item 2 twice is expected to repeat (rho = 2/5, of which item 2, the latest,
    gets 1 / (1 + 1/2 + 1/4)); new items share 3/5 by a flat text softmax (temperature 1), so item 2 comes first."""
    vectors = unit_vectors(30, 8, 0)
    scorer = ContentScorer(8, 20)
    scorer.log_temperature.data.fill_(0.0)
    history = [np.array([2, 5, 2, 9, 2])]
    assert PriorRanking(scorer, vectors).recommend(history, 3)[0, 0] == 2


@pytest.mark.parametrize(("name", "content", "message"), [
    ("counts.csv", "item_id,count\na,3\nzzz,1\n", "counts.csv:3: item 'zzz' is not in the catalog; drop the line or add the item"),
    ("counts.csv", "item_id,count\na,-2\n", "counts.csv:2: count '-2' is not a non-negative number; write a count of 0 or more"),
    ("counts.csv", "item_id,count\na,many\n", "counts.csv:2: count 'many' is not a non-negative number"),
    ("counts.jsonl", '{"item_id": "a", "count": 1}\n{"item_id": "b", "count": "x"}\n', "counts.jsonl:2: count 'x' is not a non-negative number"),
    ("log.csv", "user_id,item_id\nu,a\nu,nope\n", "log.csv:3: item 'nope' is not in the catalog"),
])
def test_a_bad_counts_file_is_one_line_naming_file_line_and_fix(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(FoundationRecError) as err:
        read_counts_file(tmp_path / name, ["a", "b"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_counts_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "counts.csv").write_bytes("item_id,count\ncaf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(FoundationRecError, match=r"counts\.csv:2: byte 17 \(0xe9\) is not UTF-8; save the file as UTF-8") as err:
        read_counts_file(tmp_path / "counts.csv", ["a"])
    assert "\n" not in str(err.value)


def test_an_interactions_file_gives_popularity_and_repeat_rates(tmp_path):
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\nu,a,3\nu,b,1\nu,a,5\nv,b,2\n", encoding="utf-8")
    counts = read_counts_file(tmp_path / "log.csv", ["a", "b", "c"])
    assert counts.popularity.tolist() == [2, 2, 0]
    assert counts.repeat_rate == (pytest.approx(0.5), 0.0)  # u: b, a (new), a (a repeat of a, 1 step back)


def test_a_saved_scorer_keeps_its_signal_weights_and_fit_record(tmp_path):
    """The weights and the fit's record survive save and load, so a loaded scorer ranks as the trained one."""
    scorer = ContentScorer(8, 20)
    scorer.signals.weights.data = torch.tensor([1.2, 0.3, 0.1])
    scorer.record = {"signals": {"weights": [1.2, 0.3, 0.1], "corpora": ["a"]}}
    scorer.save(tmp_path)
    loaded = load_scorer(tmp_path)
    assert loaded.record == scorer.record
    assert torch.equal(loaded.signals.weights, scorer.signals.weights)
    vectors, history = unit_vectors(30, 8, 0), [np.array([2, 5, 2, 9, 2])]
    counts = PlatformCounts.from_popularity(np.arange(30.0))
    assert torch.equal(loaded.log_prior(history, vectors, counts), scorer.log_prior(history, vectors, counts))

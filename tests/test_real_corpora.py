"""All 15 real corpora build and their statistics match the published counts in SOURCES.md."""

from __future__ import annotations

import pytest

from foundation_rec.corpora import load_corpus, resolve_names

# users, items, interactions as published in ../shared/corpora/SOURCES.md
PUBLISHED = {
    "amazon2014-beauty": (22_332, 12_086, 198_215),
    "amazon2014-toys": (19_124, 11_758, 165_247),
    "amazon2014-clothing": (39_230, 22_948, 277_534),
    "amazon2014-health": (38_329, 18_427, 343_831),
    "amazon2014-electronics": (28_566, 15_743, 241_198),
    "amazon2014-book": (38_234, 38_519, 517_167),
    "amazon2018-games": (50_597, 16_874, 453_637),
    "amazon2018-electronics": (43_462, 23_133, 374_989),
    "amazon2018-office": (4_905, 2_420, 53_258),
    "amazon2018-scientific": (8_317, 4_344, 58_492),
    "yelp": (30_431, 20_033, 316_354),
    "steam": (10_369, 3_593, 126_824),
    "movielens-1m": (6_040, 3_416, 999_611),
    "movielens-100k": (943, 1_682, 100_000),
    "goodreads": (23_089, 16_833, 180_240),
}

pytestmark = pytest.mark.corpora


def test_every_recipe_is_published():
    assert sorted(resolve_names("everything")) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counts_match_sources(name, real_data):
    corpus = load_corpus(name, real_data)
    stats = corpus.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == PUBLISHED[name]
    texts = corpus.items["text"]
    assert all(texts)
    assert sum(t.startswith("title: ") for t in texts) >= 0.998 * len(texts)  # a few Office items have no title
    assert not any("&amp;" in t or "&quot;" in t or "  " in t for t in texts)


def test_enrichment_coverage(real_data):
    assert load_corpus("steam", real_data).meta["enrich"] == {"joined": 3593, "unmatched": 0}
    ml = load_corpus("movielens-1m", real_data).meta["enrich"]
    assert ml["joined"] >= 3300 and ml["joined"] + ml["ambiguous"] + ml["unmatched"] == 3416

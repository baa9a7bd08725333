"""Tiny models for the trainer tests: the ``tiny`` backbone preset for the ID generator, ``tiny`` or ``tiny-causal`` for the recommender."""

from __future__ import annotations

import json

import numpy as np

from foundation_rec.backbones import Backbone, BackboneConfig, load_backbone
from foundation_rec.bundle import ModelBundle, share_tokenizer
from foundation_rec.idgen import IDGenConfig, IDGenerator

FAST_IDS = IDGenConfig(num_beams=4, num_beam_groups=2, max_id_tokens=4, length_steps=1, max_input_tokens=32)


def tiny_backbone(texts, seed: int, decoder_only: bool = False, saved=None) -> Backbone:
    """The ``tiny`` T5 preset, the ``tiny-causal`` Llama preset (``decoder_only``) or the backbone saved in ``saved``."""
    if saved is not None:
        return load_backbone(BackboneConfig(name_or_path=str(saved), device="cpu"))
    return load_backbone(BackboneConfig(preset="tiny-causal" if decoder_only else "tiny", device="cpu", seed=seed), tokenizer_texts=texts)


def tiny_models(texts, seed: int = 0, decoder_only: bool = False, saved=None) -> ModelBundle:
    """A :class:`ModelBundle` of a tiny recommender and generator sharing one tokenizer; ``saved``: a checkpoint to load them from."""
    rec_backbone = tiny_backbone(texts, seed, decoder_only, saved and saved / "recommender")
    gen_backbone = tiny_backbone(texts, seed + 1, saved=saved and saved / "generator")
    share_tokenizer(rec_backbone, gen_backbone)
    return ModelBundle(rec_backbone, IDGenerator(gen_backbone, FAST_IDS))


WORDS = ["amber", "basin", "cobalt", "dune", "ember", "fjord", "granite", "harbor", "iris", "jasper", "kelp", "lagoon", "marble", "nectar",
         "onyx", "prairie", "quartz", "reef", "saffron", "tundra", "umber", "velvet", "willow", "yarrow", "zinc", "acorn", "birch", "cedar"]


def strides_platform(folder, items: int = 40, users: int = 300, length: int = 8, seed: int = 0) -> None:
    """A platform whose next item follows from order, not text: forty items named by two random words, each user walking
    their circle with a stride of their own (1, 2, 3, 5 or 7)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    names = [" ".join(rng.choice(WORDS, 2, replace=False)) for _ in range(items)]
    (folder / "items.jsonl").write_text("".join(json.dumps({"item_id": f"i{k}", "title": n}) + "\n" for k, n in enumerate(names)), encoding="utf-8")
    lines = ["user_id,item_id,timestamp"]
    for u in range(users):
        start, step = int(rng.integers(items)), int(rng.choice([1, 2, 3, 5, 7]))
        lines += [f"u{u},i{(start + step * t) % items},{1_700_000_000 + t}" for t in range(length)]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "recipe.toml").write_text('platform = "strides"\nrole = "target"\n', encoding="utf-8")

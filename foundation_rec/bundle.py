"""One model bundle: a checkpoint's recommender, ID generator and ID table, saved and loaded together.

A bundle folder (every checkpoint of ``pretrain``, ``best/`` and ``checkpoint/``) holds::

    recommender/   save_pretrained folder of the recommender (+ content.safetensors, scorer.safetensors)
    generator/     save_pretrained folder of the ID generator + idgen.json (its ID settings)
    ids/ids.json   the textual ID of every item of the corpora it was trained on

:meth:`ModelBundle.save_pretrained` writes it atomically; :meth:`ModelBundle.from_pretrained` reads
it (the ID settings from ``generator/idgen.json``, never rebuilt from run arguments); the trainer
writes the same files into its staged checkpoint (:meth:`ModelBundle.write`) and reloads weights in
place (:meth:`ModelBundle.load_weights`) when it resumes or picks ``best/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import atomic, checkpoint
from .backbones import SCRATCH_PRESETS, Backbone, BackboneConfig, load_backbone
from .content import ContentProjection, load_projection
from .content_prior import ContentScorer, load_scorer
from .errors import FoundationRecError
from .idgen import TABLE_FILE, IDGenerator, IDTable
from .recommender import GenerativeRecommender

VOCAB_ERROR = (
    "the ID generator and the recommender use different tokenizers; soft ID embeddings need one shared vocabulary: "
    "build both from the same --backbone/--preset"
)


def share_tokenizer(source: Backbone, target: Backbone) -> None:
    """Give backbone ``target`` the tokenizer of backbone ``source`` (soft ID embeddings need one vocabulary).

    A from-scratch model whose own tokenizer had another size gets its embedding matrices resized;
    pretrained backbones must already share a vocabulary.
    """
    if target.tokenizer.get_vocab() == source.tokenizer.get_vocab():
        target.tokenizer = source.tokenizer
        return
    if target.config.preset not in SCRATCH_PRESETS:
        raise FoundationRecError(VOCAB_ERROR)
    target.tokenizer = source.tokenizer
    target.hf_model.resize_token_embeddings(len(source.tokenizer), mean_resizing=False)


@dataclass
class ModelBundle:
    """The recommender's backbone and content modules, the ID generator, and the ID table."""

    rec: Backbone
    generator: IDGenerator
    content: ContentProjection | None = None
    scorer: ContentScorer | None = None
    table: IDTable = field(default_factory=IDTable)

    def __post_init__(self):
        self._recommender: GenerativeRecommender | None = None

    @property
    def recommender(self) -> GenerativeRecommender:
        """The recommender view the trainer, the API and zero-shot use (built on first use, with the content modules set by then)."""
        if self._recommender is None:
            self._recommender = GenerativeRecommender(self.rec.model, self.rec.tokenizer, self.content, self.scorer)
        return self._recommender

    def write(self, folder: Path) -> None:
        """Write ``recommender/``, ``generator/`` and ``ids/`` into ``folder`` (an already staged directory)."""
        self.rec.save(folder / "recommender", modules=[m for m in (self.content, self.scorer) if m is not None])
        self.generator.save(folder / "generator")
        self.table.save(folder / "ids")

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the bundle to ``folder`` atomically (a temporary folder, then renamed into place)."""
        with atomic.staged_dir(folder) as tmp:
            self.write(tmp)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "auto") -> ModelBundle:
        """Read a bundle written by :meth:`save_pretrained` or by the trainer (a checkpoint folder)."""
        folder = Path(folder)
        rec = load_backbone(BackboneConfig(name_or_path=str(folder / "recommender"), device=str(device)))
        generator = IDGenerator.load(folder / "generator", device=str(rec.device))
        share_tokenizer(rec, generator.backbone)
        table = IDTable.load(folder / "ids") if (folder / "ids" / TABLE_FILE).is_file() else IDTable()
        return cls(rec, generator, load_projection(folder / "recommender", rec.device), load_scorer(folder / "recommender"), table)

    def load_weights(self, folder: str | Path) -> None:
        """Load a saved bundle's weights and ID table into these already-built models, in place."""
        folder = Path(folder)
        checkpoint.load_weights(self.rec.model, folder / "recommender")
        checkpoint.load_weights(self.generator.backbone.model, folder / "generator")
        for module, loader in ((self.content, load_projection), (self.scorer, load_scorer)):
            saved = loader(folder / "recommender")
            if module is not None and saved is not None:
                module.load_state_dict(saved.state_dict())
        self.table = IDTable.load(folder / "ids")

"""The ID generator: a language model that reads an item's text and writes a short, unique textual ID.

An ID is a few lowercase words (:func:`normalize_id`), e.g. ``title: Maybelline Great Lash Mascara;
brand: Maybelline`` -> ``maybelline great lash mascara``.

Uniqueness follows IDGenRec's Algorithm 1 (Tan et al., SIGIR 2024), batched
(:meth:`IDGenerator.assign`): every pending item gets ``num_beams`` candidates from diverse beam
search (:func:`foundation_rec.decoding.id_search`, ``num_beam_groups`` groups, diversity penalty
``lambda``); in item order, each item takes its best candidate that is not taken yet. Items whose
candidates are all taken run again with ``lambda`` raised by ``penalty_step`` up to ``max_penalty``;
after that the ID length grows by ``length_step`` tokens (both the longest ID and the shortest one
allowed, so the model has to write more words) and ``lambda`` restarts from its initial value. Items
still colliding after ``length_steps`` longer lengths get the best candidate plus a word of their own
text not yet in the ID, or else a counter (``2``, ``3``, ...): this last resort cannot fail, and
:class:`Assignment` counts how often it was used. The ``taken`` set can be shared between calls, so
IDs are unique across a whole pre-training pool (:func:`build_table`). With two or more beam groups,
a retry at a higher ``lambda`` replays group 0 of the first search at the same lengths (the penalty
never touches group 0; :class:`~foundation_rec.decoding.FirstGroup`), so retries feed half the rows.
``IDGenConfig.precision = "int8"`` runs generation with int8 linear layers on a CPU (:mod:`foundation_rec.int8`).

Starting point, before any recommendation training:

* a pretrained instruct model (the ``smollm2-135m`` preset) is prompted through its chat template
  for a short tag;
* a from-scratch model (``tiny``, ``t5-cpu`` and the causal ones) generates in *extractive* mode
  (``IDGenConfig.extractive``): each item's ID may only use tokens of its own text's field values
  (a per-item ``[B, V]`` mask inside the batched beam search and on the training logits, no token
  twice in one ID, and a sub-word piece only after the piece it follows in the item's text), so even
  an untrained model writes IDs made of the item's own words. Each step's softmax runs over those
  tokens only (as :meth:`IDGenerator.logits` normalises in
  training), so the output layer computes a few dozen logits per beam instead of the whole
  vocabulary (``vocab_subset`` of :func:`~foundation_rec.decoding.id_search`). It is
  also taught extractive IDs with :func:`warmup` (the first informative words of the title,
  :func:`keyword_id`), which teaches it which of those words to pick and in what order.

Generation only allows word tokens (letters and digits) and EOS, so IDs never contain punctuation or
line breaks. :meth:`IDGenerator.token_distributions` is the differentiable path used when training
the generator: teacher-forced per-token probabilities of given ID token sequences.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import atomic, cross_attention, int8
from .backbones import Backbone, BackboneConfig, load_backbone
from .decoding import FirstGroup, id_search
from .errors import FoundationRecError

TABLE_FILE = "ids.json"
PRECISIONS = ("fp32", "int8")  # IDGenConfig.precision
CONFIG_FILE = "idgen.json"
SYSTEM_PROMPT = "You write a short tag of two to five words that names an item. Answer with the tag only."
# few-shot turns shown to an instruct model before the item (candidates equal to an answer are dropped)
EXAMPLES = (
    ("title: Maybelline New York Great Lash Washable Mascara, Blackest Black; brand: Maybelline", "maybelline great lash mascara"),
    ("title: Lucky Dragon Noodle House; categories: Chinese, Noodles, Restaurants", "lucky dragon noodle house"),
    ("title: The Silent Lighthouse; description: A keeper alone on a northern island finds a message.", "silent lighthouse novel"),
)
_EXAMPLE_IDS = frozenset(answer for _, answer in EXAMPLES)

# dropped from extractive IDs: function words and pack/unit words
STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it", "its", "of", "on", "or", "the"}
    | {"this", "to", "with", "without", "pack", "pcs", "pc", "count", "ct", "oz", "fl", "ml", "lb", "lbs", "x"}
)


def normalize_id(text: str) -> str:
    """Lowercase ASCII words separated by single spaces: accents and apostrophes dropped, other punctuation splits words."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace("'", "")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def field_values(text: str) -> list[str]:
    """The values of an item text ``key: value; key: value`` (the corpus format), keys dropped."""
    return [re.sub(r"^[\w ]+?:\s*", "", part) for part in text.split("; ")]


def keyword_id(text: str, max_words: int = 4) -> str:
    """Extractive ID: the first ``max_words`` distinct non-stopword words of the item's first field (its title).

    Falls back to the words of all field values when the title has no informative word.
    """
    values = field_values(text)
    for source in (values[0], " ".join(values)):
        words = [w for w in dict.fromkeys(normalize_id(source).split()) if w not in STOPWORDS]
        if words:
            return " ".join(words[:max_words])
    return normalize_id(" ".join(values))


def encode_ids(tokenizer, ids: Sequence[str]) -> list[list[int]]:
    """Token ids of each textual ID followed by EOS (the form the trie and the generator use)."""
    encoded = tokenizer(list(ids), add_special_tokens=False)["input_ids"]
    return [row + [tokenizer.eos_token_id] for row in encoded]


@dataclass
class IDGenConfig:
    """Settings of ID generation (Algorithm 1) and of the generator's inputs: the one source of their defaults
    (``pretrain``'s ``--id-*`` flags take them; :meth:`from_run` maps the flags back; a checkpoint keeps them in
    ``generator/idgen.json``). ``IDGenConfig() == IDGenConfig.from_run({})``."""

    num_beams: int = field(default=6, metadata={"help": "candidates per item (diverse beam search)"})
    num_beam_groups: int = field(default=2, metadata={"help": "diverse beam search groups (from_run: 2 for an even beam count, else 1)"})
    diversity_penalty: float = field(default=0.5, metadata={"help": "initial diversity penalty lambda"})
    penalty_step: float = field(default=0.5, metadata={"help": "lambda increase after a collision"})
    max_penalty: float = field(default=2.0, metadata={"help": "largest lambda before the ID gets longer"})
    max_id_tokens: int = field(default=10, metadata={"help": "initial longest ID, in tokens (without EOS)"})
    length_step: int = field(default=2, metadata={"help": "tokens added to the shortest and longest ID per length increase"})
    length_steps: int = field(default=3, metadata={"help": "length increases before the last-resort fallback"})
    max_input_tokens: int = field(default=128, metadata={"help": "item text is cut to this many tokens"})
    batch_size: int = field(default=32, metadata={"help": "items per forward pass"})
    extractive: bool = field(default=False, metadata={"help": "an ID may only use tokens of the item's own text (from-scratch generators)"})
    precision: str = field(default="fp32", metadata={"help": "arithmetic of ID generation: 'fp32', or 'int8' (CPU only: encoder and decoder linear "
                                                              "layers in int8, about 1.5x faster with AVX-512 VNNI and slower without AVX-512; "
                                                              "a near-tie between candidates can flip, see int8.py)"})

    @classmethod
    def from_run(cls, run: Mapping[str, Any]) -> IDGenConfig:
        """The settings a pre-training run's arguments (``RunArguments`` as a dict, as saved in a checkpoint) ask for."""
        beams = int(run.get("id_beams", cls.num_beams))
        return cls(num_beams=beams, num_beam_groups=2 if beams % 2 == 0 else 1, max_id_tokens=int(run.get("id_max_tokens", cls.max_id_tokens)),
                   max_input_tokens=int(run.get("id_input_tokens", cls.max_input_tokens)), extractive=run.get("id_extractive") == "yes",
                   batch_size=int(run.get("id_gen_batch_size", cls.batch_size)))

    def schedule(self) -> list[tuple[float, int, int]]:
        """The ``(lambda, min_new_tokens, max_new_tokens)`` of each round of Algorithm 1."""
        steps = max(0, round((self.max_penalty - self.diversity_penalty) / self.penalty_step)) if self.penalty_step > 0 else 0
        penalties = [self.diversity_penalty + i * self.penalty_step for i in range(steps + 1)]
        return [
            (lam, 1 + j * self.length_step, self.max_id_tokens + j * self.length_step)
            for j in range(self.length_steps + 1)
            for lam in penalties
        ]


@dataclass
class Assignment:
    """Result of :meth:`IDGenerator.assign`: one ID per item, and how they were found.

    ``rounds``: per round of Algorithm 1, its ``penalty``, ``min_tokens``, ``max_tokens``, the number
    of ``items`` it ran on and how many it ``resolved``; ``fallbacks``: items given the last-resort ID.
    """

    ids: list[str]
    rounds: list[dict] = field(default_factory=list)
    fallbacks: int = 0


class IDGenerator:
    """Writes textual IDs for item texts with a :class:`~foundation_rec.backbones.Backbone`."""

    def __init__(self, backbone: Backbone, config: IDGenConfig | None = None):
        self.backbone = backbone
        self.config = config or IDGenConfig()
        if self.config.num_beams % self.config.num_beam_groups:
            raise FoundationRecError(
                f"num_beams={self.config.num_beams} is not a multiple of num_beam_groups={self.config.num_beam_groups}"
            )
        if self.config.precision not in PRECISIONS:
            raise FoundationRecError(f"precision={self.config.precision!r} is not an ID precision; use 'fp32' or 'int8'")
        self._int8: tuple[int, nn.Module] | None = None  # (weights' version, int8 copy) of the backbone's model
        self._bad_tokens: torch.Tensor | None = None
        self._continuation: torch.Tensor | None = None

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def inference_model(self) -> nn.Module:
        """The model :meth:`candidates` runs: the backbone's, or with ``precision="int8"`` its int8 copy
        (:func:`foundation_rec.int8.quantize`), made again whenever the weights have changed since."""
        model = self.backbone.hf_model
        if self.config.precision == "fp32":
            return model
        version = hash((id(model), *(p._version for p in model.parameters())))
        if self._int8 is None or self._int8[0] != version:
            self._int8 = (version, int8.quantize(model))
        return self._int8[1]

    # ----------------------------------------------------------------------------- inputs

    def inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenized model inputs: the item text (seq2seq) or a prompt asking for a tag (causal, left-padded)."""
        tok, limit = self.tokenizer, self.config.max_input_tokens
        if self.backbone.seq2seq:
            enc = tok(list(texts), truncation=True, max_length=limit, padding=True, padding_side="right", return_tensors="pt")
        else:
            cut = tok.batch_decode(tok(list(texts), truncation=True, max_length=limit, add_special_tokens=False)["input_ids"])
            prompts = [_prompt(tok, t) for t in cut]
            enc = tok(prompts, padding=True, padding_side="left", add_special_tokens=not tok.chat_template, return_tensors="pt")
        device = self.backbone.device
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def bad_token_mask(self) -> torch.Tensor:
        """Bool ``[V]``: True for every token that is not EOS or a piece of a word (letters and digits)."""
        if self._bad_tokens is None:
            tok = self.tokenizer
            size = self.backbone.hf_model.get_output_embeddings().weight.shape[0]
            pieces = tok.convert_ids_to_tokens(list(range(min(len(tok), size))))
            ok = [bool(p) and p not in ("##",) and re.fullmatch(r"(##|\u0120|\u2581)?[A-Za-z0-9]*", p) is not None for p in pieces]
            mask = torch.ones(size, dtype=torch.bool)
            mask[: len(ok)] = ~torch.tensor(ok)
            mask[tok.all_special_ids] = True
            mask[tok.eos_token_id] = False
            self._bad_tokens = mask
        return self._bad_tokens

    def value_tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text's field values (keys dropped, cut at ``max_input_tokens``): the words an extractive ID may use."""
        values = [" ".join(field_values(t)) for t in texts]
        return self.tokenizer(values, truncation=True, max_length=self.config.max_input_tokens, add_special_tokens=False)["input_ids"]

    def text_token_mask(
        self, texts: Sequence[str], extra: Sequence[Sequence[int]] | None = None, *, rows: list[list[int]] | None = None
    ) -> torch.Tensor:
        """Bool ``[B, V]`` for extractive mode: True for every token the ID of text ``b`` may not use.

        Allowed: the tokens of the text's field values (:meth:`value_tokens`, or ``rows`` when already
        computed), the tokens of ``extra[b]`` (e.g. a teacher-forced target), and EOS.
        """
        tok, bad = self.tokenizer, self.bad_token_mask()
        rows = self.value_tokens(texts) if rows is None else rows
        allowed = torch.zeros(len(texts), bad.shape[0], dtype=torch.bool)
        for b, ids in enumerate(rows):
            ids = [*ids, *(extra[b] if extra is not None else ()), tok.eos_token_id]
            allowed[b, torch.as_tensor(ids, dtype=torch.long)] = True
        mask = ~allowed | bad
        if extra is not None:  # a target token is allowed even when the global mask forbids it
            for b, ids in enumerate(extra):
                mask[b, torch.as_tensor(list(ids), dtype=torch.long)] = False
        return mask

    def word_pieces(self, texts: Sequence[str], *, rows: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(text_tokens [B, L], continuation [V])`` for extractive beam search: the field-value tokens of each
        text (padded with -1; ``rows`` when already computed) and the vocabulary's continuation pieces (``##...``);
        ``None`` without such pieces."""
        if self._continuation is None:
            size = self.bad_token_mask().shape[0]
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(min(len(self.tokenizer), size))))
            mask = torch.zeros(size, dtype=torch.bool)
            mask[: len(pieces)] = torch.tensor([bool(p) and p.startswith("##") and len(p) > 2 for p in pieces])
            self._continuation = mask
        if not self._continuation.any():
            return None
        rows = self.value_tokens(texts) if rows is None else rows
        return padded(rows), self._continuation

    # ----------------------------------------------------------------------------- generation

    def candidates(
        self,
        texts: Sequence[str],
        *,
        diversity_penalty: float | None = None,
        min_new_tokens: int = 1,
        max_new_tokens: int | None = None,
        progress: bool = False,
        encoded: dict[str, torch.Tensor] | None = None,
        first_groups: dict[str, FirstGroup] | None = None,
    ) -> list[list[str]]:
        """Up to ``num_beams`` distinct normalised candidate IDs per text, best first (batched, in length order).

        ``encoded`` (encoder-decoder generators; text -> encoder outputs) is read for texts already
        in it and filled for the others, so the rounds of :meth:`assign` encode each text once.
        ``first_groups`` (text -> group 0 of its diverse beam search, :class:`~foundation_rec.decoding.FirstGroup`)
        works the same way for searches with the same ``min_new_tokens`` and ``max_new_tokens``:
        group 0 does not depend on the penalty, so a retry at a higher lambda replays it.
        """
        unique = list(dict.fromkeys(texts))
        if len(unique) < len(texts):  # e.g. a chain's branches: one search per distinct text
            kwargs = {"diversity_penalty": diversity_penalty, "min_new_tokens": min_new_tokens, "max_new_tokens": max_new_tokens, "encoded": encoded,
                      "first_groups": first_groups}
            found = dict(zip(unique, self.candidates(unique, **kwargs, progress=progress), strict=True))
            return [list(found[text]) for text in texts]
        cfg = self.config
        penalty = cfg.diversity_penalty if diversity_penalty is None else diversity_penalty
        max_new = cfg.max_id_tokens if max_new_tokens is None else max_new_tokens
        tok, model = self.tokenizer, self.inference_model()
        lengths = [len(ids) for ids in tok(list(texts), truncation=True, max_length=cfg.max_input_tokens)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out: list[list[str]] = [[] for _ in texts]
        was_training = model.training
        model.train(False)
        starts = range(0, len(order), cfg.batch_size)
        for start in tqdm(starts, desc="ID candidates", unit="batch", disable=not progress, leave=False):
            batch = order[start : start + cfg.batch_size]
            batch_texts = [texts[i] for i in batch]
            rows = self.value_tokens(batch_texts) if cfg.extractive else None
            inputs = self.inputs(batch_texts)
            replayable = first_groups is not None and cfg.num_beam_groups > 1
            replay = replayable and all(t in first_groups for t in batch_texts)
            result = id_search(
                model,
                **inputs,
                encoder_states=self._encoder_states(batch_texts, inputs, encoded) if encoded is not None and self.backbone.seq2seq else None,
                num_beams=cfg.num_beams,
                num_beam_groups=cfg.num_beam_groups,
                diversity_penalty=penalty,
                max_new_tokens=max_new,
                min_new_tokens=min_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                bad_token_mask=self.bad_token_mask(),
                no_repeat_tokens=cfg.extractive,
                word_pieces=self.word_pieces(batch_texts, rows=rows) if cfg.extractive else None,
                vocab_subset=padded(rows).to(self.backbone.device) if cfg.extractive else None,  # each item's own tokens are its output vocabulary
                first_group=FirstGroup.stack([first_groups[t] for t in batch_texts]) if replay else None,
                record_first_group=replayable and not replay,
            )
            if result.first_group is not None:
                first_groups.update((t, result.first_group[b]) for b, t in enumerate(batch_texts))
            finite = (result.scores > float("-inf")).tolist()
            decoded = tok.batch_decode(result.sequences.flatten(0, 1).tolist(), skip_special_tokens=True)
            for b, item in enumerate(batch):
                row = decoded[b * cfg.num_beams : (b + 1) * cfg.num_beams]
                ids = (normalize_id(text) for text, ok in zip(row, finite[b], strict=True) if ok)
                out[item] = list(dict.fromkeys(i for i in ids if i and i not in _EXAMPLE_IDS))
        model.train(was_training)
        return out

    def _encoder_states(self, texts: Sequence[str], inputs: dict[str, torch.Tensor], encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's outputs ``[B, T, d]`` for a batch: read from ``encoded`` when every text is
        there (padding positions zero: the mask hides them), else computed and added to it while it
        holds under :data:`ENCODED_BYTES`."""
        mask = inputs["attention_mask"]
        if all(t in encoded for t in texts):
            first = encoded[texts[0]]
            states = first.new_zeros(len(texts), mask.shape[1], first.shape[-1])
            for b, text in enumerate(texts):
                states[b, : len(encoded[text])] = encoded[text]
            return states
        model = self.inference_model()
        cross_attention.enable(model)  # as the beam search computes it (cross_attention.py)
        encoder, step = model.get_encoder(), ENCODER_CHUNK
        with torch.inference_mode():  # in chunks: activations under glibc's mmap threshold are reused, not faulted in again
            states = torch.cat([encoder(**{k: v[i : i + step] for k, v in inputs.items()}).last_hidden_state for i in range(0, len(texts), step)])
        held = sum(x.numel() * x.element_size() for x in encoded.values())
        for b, length in enumerate(mask.sum(1).tolist()):
            if held > ENCODED_BYTES:
                break
            encoded[texts[b]] = states[b, :length].clone()
            held += encoded[texts[b]].numel() * states.element_size()
        return states

    def assign(self, texts: Sequence[str], taken: set[str] | None = None, *, progress: bool = True) -> Assignment:
        """A unique ID for every text (Algorithm 1, batched; see the module docstring).

        ``taken`` holds IDs already in use (e.g. by other catalogs of the pool); it is updated in place.
        Ties are broken by item order, and the result is deterministic for a given model.
        """
        taken = set() if taken is None else taken
        result = Assignment(ids=[""] * len(texts))
        pending, first_choice = list(range(len(texts))), {}
        encoded: dict[str, torch.Tensor] | None = {} if self.backbone.seq2seq else None  # encoder outputs of the pending texts
        first_groups: dict[str, FirstGroup] = {}  # group 0 of the pending texts' searches at this round's lengths
        rounds = tqdm(self.config.schedule(), desc="ID rounds", unit="round", disable=not progress)
        lengths = None
        for penalty, min_new, max_new in rounds:
            if not pending:
                break
            if (min_new, max_new) != lengths:  # a longer ID: group 0 searches again
                first_groups, lengths = {}, (min_new, max_new)
            cands = self.candidates(
                [texts[i] for i in pending],
                diversity_penalty=penalty,
                min_new_tokens=min_new,
                max_new_tokens=max_new,
                progress=progress,
                encoded=encoded,
                first_groups=first_groups,
            )
            still = []
            for item, options in zip(pending, cands, strict=True):
                first_choice.setdefault(item, options[0] if options else "")
                free = next((c for c in options if c not in taken), None)
                if free is None:
                    still.append(item)
                else:
                    result.ids[item] = free
                    taken.add(free)
            result.rounds.append(
                {
                    "penalty": penalty,
                    "min_tokens": min_new,
                    "max_tokens": max_new,
                    "items": len(pending),
                    "resolved": len(pending) - len(still),
                }
            )
            pending = still
            if encoded is not None:
                encoded = {texts[i]: encoded[texts[i]] for i in pending if texts[i] in encoded}
            first_groups = {texts[i]: first_groups[texts[i]] for i in pending if texts[i] in first_groups}
            rounds.set_postfix(pending=len(pending))
        for item in pending:
            result.ids[item] = fallback(first_choice[item] or keyword_id(texts[item]) or "item", texts[item], taken)
            taken.add(result.ids[item])
        result.fallbacks = len(pending)
        return result

    # ----------------------------------------------------------------------------- training path

    def logits(self, texts: Sequence[str], id_token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits ``[B, L, V]`` for the ID tokens of each text, and their mask ``[B, L]``.

        ``id_token_ids[b]`` are the tokens of text ``b``'s ID, EOS included (:func:`encode_ids`);
        position ``t`` holds the model's prediction of token ``t`` given the text and tokens ``< t``.
        """
        device, pad = self.backbone.device, self.tokenizer.pad_token_id
        width = max(len(ids) for ids in id_token_ids)
        targets = torch.full((len(id_token_ids), width), pad, dtype=torch.long)
        mask = torch.zeros(len(id_token_ids), width, dtype=torch.long)
        for row, ids in enumerate(id_token_ids):
            targets[row, : len(ids)], mask[row, : len(ids)] = torch.as_tensor(ids), 1
        targets, mask = targets.to(device), mask.to(device)
        inputs, model = self.inputs(texts), self.backbone.hf_model
        if self.backbone.seq2seq:
            start = torch.full_like(targets[:, :1], model.config.decoder_start_token_id)
            logits = model(**inputs, decoder_input_ids=torch.cat([start, targets[:, :-1]], dim=1), decoder_attention_mask=mask).logits
        else:  # prompt (left-padded) + ID tokens but the last; keep the logits of the last `width` positions
            full_mask = torch.cat([inputs["attention_mask"], mask[:, :-1]], dim=1)
            logits = model(
                input_ids=torch.cat([inputs["input_ids"], targets[:, :-1]], dim=1),
                attention_mask=full_mask,
                position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=width,
            ).logits
        if self.config.extractive:
            logits = logits.masked_fill(self.text_token_mask(texts, id_token_ids).to(device)[:, None, :], float("-inf"))
        return logits, mask.bool()

    def token_distributions(self, texts: Sequence[str], id_token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Differentiable per-token probabilities ``[B, L, V]`` of the ID tokens (teacher forced).

        Rows of positions past an ID's end are zero; see :meth:`logits` for the inputs.
        """
        logits, mask = self.logits(texts, id_token_ids)
        return torch.softmax(logits.float(), dim=-1) * mask[..., None]

    # ----------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """Write the backbone and these settings to a ``save_pretrained`` directory (atomically)."""
        self.backbone.save(path, extra={CONFIG_FILE: dataclasses.asdict(self.config)})

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> IDGenerator:
        """Read a generator written by :meth:`save`."""
        file = Path(path) / CONFIG_FILE
        if not file.is_file():
            raise FoundationRecError(f"{path} is not a saved ID generator (no {CONFIG_FILE}); pass the directory IDGenerator.save wrote")
        backbone = load_backbone(BackboneConfig(name_or_path=str(path), device=device))
        settings = json.loads(file.read_text(encoding="utf-8"))
        settings.pop("softmax", None)  # a retired setting: extractive IDs always normalise over the item's own tokens
        return cls(backbone, IDGenConfig(**settings))


ENCODER_CHUNK = 64  # prompts per encoder call (a 256 x 64-token batch's feed-forward activations are 64 MiB)
ENCODED_BYTES = 1 << 30  # assign: the most encoder outputs kept between rounds (Yelp's 19k distinct texts: ~0.5 GiB)


def padded(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[len(rows), longest]`` token ids, padded with -1."""
    tokens = torch.full((len(rows), max(1, *map(len, rows))), -1, dtype=torch.long)
    for b, ids in enumerate(rows):
        tokens[b, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return tokens


def _prompt(tokenizer, text: str) -> str:
    """The few-shot prompt asking a causal model for the tag of ``text`` (its chat template when it has one)."""
    if not tokenizer.chat_template:
        return "".join(f"{q}\nTag: {a}\n\n" for q, a in EXAMPLES) + f"{text}\nTag:"
    turns = [{"role": "system", "content": SYSTEM_PROMPT}]
    for question, answer in EXAMPLES:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    turns.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)


def fallback(base: str, text: str, taken: set[str]) -> str:
    """``base`` if free, else plus one word of ``text`` that makes it free, else plus the smallest free counter (never fails)."""
    if base not in taken:
        return base
    used = set(base.split())
    for word in dict.fromkeys(normalize_id(" ".join(field_values(text))).split()):
        if word not in used and f"{base} {word}" not in taken:
            return f"{base} {word}"
    counter = 2
    while f"{base} {counter}" in taken:
        counter += 1
    return f"{base} {counter}"


def keyword_loss(generator: IDGenerator, texts: Sequence[str], targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
    """Teacher-forcing cross-entropy of the generator on target ID tokens (EOS included), and the number of target tokens."""
    logits, mask = generator.logits(texts, targets)
    gold = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in targets], batch_first=True).to(logits.device)
    return torch.nn.functional.cross_entropy(logits.float()[mask], gold[mask]), int(mask.sum())


# --------------------------------------------------------------------------------- the ID table


@dataclass
class IDTable:
    """Textual ID of every item of every corpus: ``ids[corpus][row]``, next to ``item_ids[corpus][row]``.

    ``scopes[corpus]`` names the group within which IDs are unique (``pool`` for the pre-training
    corpora, the corpus name for a target); ``generation[corpus]`` records how the IDs were found.
    """

    ids: dict[str, list[str]] = field(default_factory=dict)
    item_ids: dict[str, list[str]] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)
    generation: dict[str, dict] = field(default_factory=dict)

    def add(self, corpus: str, ids: Sequence[str], item_ids: Sequence[str], scope: str, generation: dict | None = None) -> None:
        """Set the IDs of ``corpus`` (one per row, in row order)."""
        if len(ids) != len(item_ids):
            raise FoundationRecError(f"{corpus}: {len(ids)} IDs for {len(item_ids)} items; pass one ID per item")
        self.ids[corpus], self.item_ids[corpus], self.scopes[corpus] = list(ids), [str(i) for i in item_ids], scope
        self.generation[corpus] = generation or {}

    def save(self, directory: str | Path) -> None:
        """Write ``<directory>/ids.json`` atomically."""
        atomic.write_json(
            Path(directory) / TABLE_FILE,
            {
                "version": 1,
                "corpora": {
                    c: {"scope": self.scopes[c], "generation": self.generation[c], "item_ids": self.item_ids[c], "ids": self.ids[c]}
                    for c in self.ids
                },
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> IDTable:
        """Read the table :meth:`save` wrote into ``directory``."""
        file = Path(directory) / TABLE_FILE
        if not file.is_file():
            raise FoundationRecError(f"no ID table in {directory} (missing {TABLE_FILE}); generate the IDs first")
        table = cls()
        for corpus, entry in json.loads(file.read_text(encoding="utf-8"))["corpora"].items():
            table.add(corpus, entry["ids"], entry["item_ids"], entry["scope"], entry["generation"])
        return table


def build_table(generator: IDGenerator, corpora: Iterable[Any], *, progress: bool = True, table: IDTable | None = None) -> IDTable:
    """IDs for every item of ``corpora`` (:class:`~foundation_rec.corpora.Corpus`: ``name``, ``role``, ``items``).

    Pre-training corpora share one ``taken`` set (scope ``pool``), so their IDs are unique across the
    whole pool; every other corpus is its own scope. IDs already in ``table`` for a scope count as taken.
    """
    table = table or IDTable()
    for corpus in corpora:
        scope = "pool" if corpus.role == "pretrain" else corpus.name
        taken = {i for c, ids in table.ids.items() if table.scopes[c] == scope and c != corpus.name for i in ids}
        items = corpus.items
        result = generator.assign(list(items["text"]), taken, progress=progress)
        table.add(corpus.name, result.ids, list(items["item_id"]), scope, {"rounds": result.rounds, "fallbacks": result.fallbacks})
    return table


def id_report(table: IDTable, texts: Mapping[str, Sequence[str]], tokenizer) -> dict:
    """Uniqueness, ID length (words, tokens) and text overlap, per corpus and per scope.

    ``texts[corpus]`` are the item texts in row order; ``tokenizer`` counts ID tokens (EOS excluded).
    ``text_word_share`` is the share of ID words that occur in the item's own text (field values).
    """

    def stats(ids: list[str], item_texts: list[str]) -> dict:
        words = [len(i.split()) for i in ids]
        tokens = [len(t) - 1 for t in encode_ids(tokenizer, ids)]
        in_text = 0
        for textual_id, text in zip(ids, item_texts, strict=True):
            text_words = set(normalize_id(" ".join(field_values(text))).split())
            in_text += sum(w in text_words for w in textual_id.split())
        return {
            "items": len(ids),
            "unique_pct": round(100 * len(set(ids)) / max(len(ids), 1), 3),
            "words_mean": round(sum(words) / max(len(ids), 1), 3),
            "words_hist": dict(sorted(Counter(words).items())),
            "tokens_mean": round(sum(tokens) / max(len(ids), 1), 3),
            "tokens_max": max(tokens, default=0),
            "tokens_hist": dict(sorted(Counter(tokens).items())),
            "text_word_share": round(in_text / max(sum(words), 1), 4),
        }

    report: dict[str, Any] = {"corpora": {}, "scopes": {}}
    for corpus, ids in table.ids.items():
        report["corpora"][corpus] = {**stats(ids, list(texts[corpus])), **table.generation[corpus], "scope": table.scopes[corpus]}
    for scope in dict.fromkeys(table.scopes.values()):
        members = [c for c in table.ids if table.scopes[c] == scope]
        all_ids = [i for c in members for i in table.ids[c]]
        report["scopes"][scope] = {
            "corpora": members,
            "items": len(all_ids),
            "unique_pct": round(100 * len(set(all_ids)) / max(len(all_ids), 1), 3),
            "fallbacks": sum(table.generation[c].get("fallbacks", 0) for c in members),
        }
    return report

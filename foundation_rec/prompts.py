"""Natural-language prompts that put a user's history, written as textual IDs, into a sentence.

Training samples one of :data:`TEMPLATES` per example (seeded, so a resumed run samples the same
ones); evaluation always uses ``TEMPLATES[EVAL_TEMPLATE]``. Every template has a ``{user}`` slot
and a ``{history}`` slot. By default the user is anonymous ("A user ..."); with user IDs on it
becomes "User <words> ...", where the words come only from the IDs of the items in that user's
*training prefix* (:func:`user_textual_ids`), never from a validation or test item.

A prompt is assembled from token lists rather than tokenized as one string: the template's
static pieces are tokenized once, each history item contributes exactly the token list of its
textual ID (the same list the prefix trie and the training targets use) and items are joined by a
separator. So the token span of every history item is known, and the ID-generator phase can
overwrite exactly those positions with soft embeddings. When a prompt would exceed
``max_tokens`` the oldest items are dropped whole.

**Sequence prompts** (``PromptBuilder(..., sequence_end=EOS)``, for the recommender objective
``sequence`` of a decoder-only model): one template, :data:`SEQUENCE_TEMPLATE`, that ends with the
history, and every history item's ID *followed* by the end-of-ID token (EOS). A prompt is then
exactly the start of the sequence ``prefix, ID1, EOS, ID2, EOS, ...`` that continues with the next
item's ID and EOS, so one causal forward pass over a window of a user's sequence trains the
prediction of every item in it after the first, and recommending from a prompt decodes at the same place.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TEMPLATES: tuple[str, ...] = (
    "{user} has interacted with these items in order: {history}. Which item comes next?",
    "Here is what {user} picked, oldest first: {history}. Recommend the next item.",
    "{user} chose {history}. What would {user} choose next?",
    "Given the history {history} of {user}, predict the next item.",
    "Items of {user} so far: {history}. Next item:",
)
EVAL_TEMPLATE = 0
SEQUENCE_TEMPLATE = "{user} has interacted with these items in order: {history}"
ANONYMOUS_USER = "a user"
SEPARATOR = ", "
_SLOT = re.compile(r"(\{user\}|\{history\})")


@dataclass(frozen=True)
class Prompt:
    """Token ids of one prompt (no special tokens) and the ``[start, end)`` span of each history item's ID."""

    tokens: list[int]
    spans: list[tuple[int, int]]
    items: list[int]


class PromptBuilder:
    """Build prompts from pre-tokenized pieces; ``id_tokens[i]`` is item ``i``'s ID token list (no EOS).

    After the IDs are regenerated, :meth:`set_ids` gives the builder the new token lists. With
    ``sequence_end`` (a token id, the EOS that ends every ID) the builder makes sequence prompts
    (see the module docstring): the one template :data:`SEQUENCE_TEMPLATE` and that token after
    every history item instead of :data:`SEPARATOR` between them.
    """

    def __init__(
        self,
        tokenizer,
        id_tokens: Sequence[Sequence[int]],
        *,
        max_tokens: int = 256,
        templates: Sequence[str] = TEMPLATES,
        sequence_end: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.id_tokens = id_tokens
        self.max_tokens = max_tokens
        self.sequence = sequence_end is not None
        self.templates = (SEQUENCE_TEMPLATE,) if self.sequence else tuple(templates)
        self._pieces = [[p if p in ("{user}", "{history}") else self._encode(p) for p in _SLOT.split(t) if p] for t in self.templates]
        self._separator = [int(sequence_end)] if self.sequence else self._encode(SEPARATOR)
        self._users: dict[str, list[int]] = {}

    @classmethod
    def for_training(cls, tokenizer, train_config: dict, id_tokens: Sequence[Sequence[int]] = ()) -> PromptBuilder:
        """The builder whose prompts a run trained on, from its training config (a ``TrainConfig`` as a dict,
        as checkpoints record it): the prompt cap and, for the ``sequence`` objective, sequence prompts."""
        sequence = train_config.get("rec_objective", "next") == "sequence"
        return cls(
            tokenizer,
            id_tokens,
            max_tokens=int(train_config.get("max_prompt_tokens", 256)),
            sequence_end=int(tokenizer.eos_token_id) if sequence else None,
        )

    def set_ids(self, id_tokens: Sequence[Sequence[int]]) -> None:
        """Use new ID token lists (no EOS), one per item, e.g. after the IDs are regenerated."""
        self.id_tokens = id_tokens

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _user_tokens(self, user: str | None, first: bool) -> list[int]:
        text = f"user {user}" if user else ANONYMOUS_USER
        text = text[0].upper() + text[1:] if first else text
        if text not in self._users:
            self._users[text] = self._encode(text)
        return self._users[text]

    def build(self, history: Sequence[int], template: int = EVAL_TEMPLATE, user: str | None = None) -> Prompt:
        """The prompt for ``history`` (item indices, oldest first) with template number ``template``.

        ``user`` is the user's textual ID (words) or ``None`` for an anonymous user.
        """
        pieces = self._pieces[template]
        fixed = sum(len(p) for p in pieces if isinstance(p, list))
        fixed += sum(len(self._user_tokens(user, i == 0)) for i, p in enumerate(pieces) if p == "{user}")
        items = [int(i) for i in history]
        lengths = [len(self.id_tokens[i]) + len(self._separator) for i in items]
        budget = self.max_tokens - fixed + (0 if self.sequence else len(self._separator))
        total = sum(lengths)
        while len(items) > 1 and total > budget:  # drop the oldest items whole
            total -= lengths.pop(0)
            items.pop(0)
        tokens: list[int] = []
        spans: list[tuple[int, int]] = []
        for i, piece in enumerate(pieces):
            if piece == "{user}":
                tokens += self._user_tokens(user, i == 0)
            elif piece == "{history}":
                for j, item in enumerate(items):
                    if j and not self.sequence:
                        tokens += self._separator
                    spans.append((len(tokens), len(tokens) + len(self.id_tokens[item])))
                    tokens += self.id_tokens[item]
                    if self.sequence:
                        tokens += self._separator
            else:
                tokens += piece
        return Prompt(tokens, spans, items)


def sample_templates(rng: np.random.Generator, n: int, num_templates: int = len(TEMPLATES)) -> np.ndarray:
    """One template number per training example, drawn from ``rng``."""
    return rng.integers(num_templates, size=n)


def user_textual_ids(train_offsets: np.ndarray, train_values: np.ndarray, id_strings: Sequence[str], max_words: int = 3) -> list[str]:
    """A textual ID per user: the ``max_words`` most frequent words in the IDs of the user's training items.

    ``train_offsets``/``train_values`` hold each user's *training prefix* only (see
    :func:`foundation_rec.splits.train_part`), so no validation or test item shapes a
    user's ID. Ties keep first appearance; a user with no training items gets ``""`` (anonymous).
    """
    out = []
    for u in range(len(train_offsets) - 1):
        words = Counter(w for item in train_values[train_offsets[u] : train_offsets[u + 1]] for w in id_strings[int(item)].split())
        out.append(" ".join(w for w, _ in words.most_common(max_words)))
    return out

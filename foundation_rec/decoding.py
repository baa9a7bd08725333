"""One batched beam search core for both roles, behind two entry points that take only the options of their role:
:func:`item_search` (trie-constrained item decoding, with a per-prompt prior) and :func:`id_search` (diverse ID
generation: groups, masks, whole words, vocabulary subsets, replay), so option sets that cannot be combined cannot be
written.

The core runs a Hugging Face seq2seq (T5-style: encoder once, decoder with a KV cache)
or decoder-only model (left-padded prompts, KV cache) and follows the selection rules of
``transformers``' own beam search, so with a trie its results equal ``model.generate(num_beams=k,
num_return_sequences=k, prefix_allowed_tokens_fn=...)`` (the reference in ``benchmarks/decoding.py``, which the
tests compare against):

* each step keeps the best ``2 * beams`` continuations; one ending the sequence (EOS, or the last
  allowed step) is *finished* only when it ranks among the best ``beams``; the best ``beams``
  unfinished ones run on;
* a finished sequence scores ``sum(log p) / generated_length ** length_penalty`` (``length_penalty``
  1.0 = mean token log-probability, HF's default; 0.0 = the plain sum), its length counting the EOS;
* a prompt stops gaining finished sequences once all ``beams`` slots are full and its best running
  beam, normalised by the current length, cannot beat the worst finished one (HF's default
  ``early_stopping=False`` heuristic); decoding stops when no prompt can improve.

With a ``trie`` each beam sits on a trie node; its candidates are that node's children (gathered
from the log-softmax over the full vocabulary, so scores are the model's real log-probabilities)
and it finishes at a leaf, which names the item. Beams with no valid continuation die (score
``-inf``) instead of producing filler, so a small catalog yields fewer results, padded with item
``-1`` and score ``-inf``. Only live beams of prompts that can still improve are fed to the model
(and the first step runs one row per prompt), so finished and dead beams cost no compute; once every
live beam has a single path left to its leaf (:meth:`Trie.tails`), one model call scores all the
remaining tokens of all beams and the last steps run without the model. None of this changes a result.

Diverse beam search (Vijayakumar et al., 2018; HF's former ``group_beam_search``, now only on the
Hub): ``num_beam_groups`` groups of ``num_beams // num_beam_groups`` beams search side by side on one
forward pass per step; group ``g`` subtracts ``diversity_penalty`` times the number of times a token
was chosen at this step by groups ``0..g-1`` of the same prompt (Hamming diversity). Each group keeps
its own finished sequences; the result is all groups' finished sequences sorted by score (scores
include the penalties), a sequence found by several groups kept once.

Options (``trie`` and ``node_prior`` are :func:`item_search`'s; the others are :func:`id_search`'s):

* ``trie`` restricts outputs to its items (its EOS must be ``eos_token_id``);
* ``bad_token_mask`` (bool ``[V]``, or ``[B, V]`` for one mask per prompt) forbids tokens at every
  step; ``min_new_tokens`` forbids EOS at the first that many steps (EOS's logit is set to -inf
  before the softmax); ``no_repeat_tokens`` forbids a beam a token it has already generated;
* ``word_pieces`` = ``(text_tokens [B, L], continuation [V])`` keeps words whole: a continuation
  piece (``##ing``) may not start the output, and may follow token ``p`` only where it follows ``p``
  in prompt ``b``'s ``text_tokens`` (padded with -1); after a token that the text always continues
  with a piece, only such a piece may come (no EOS, no new word), and the length limit never cuts a
  word;
* ``vocab_subset`` (``[B, L]`` token ids, padded with -1) gives each prompt its own output
  vocabulary: those tokens and EOS. The output layer runs over the batch's union of them only, and
  each step's softmax normalises over the prompt's tokens that ``bad_token_mask`` allows (the
  model's distribution restricted to them, as the ID generator is trained in extractive mode), so
  a step costs a few hundred logits per row instead of the whole vocabulary. The search runs on
  per-prompt indices and returns real token ids; it needs ``trie=None``;
* ``inputs_embeds`` ([B, T, D], the embeddings of ``input_ids``, e.g. with content vectors added)
  replaces the prompt's token embeddings; ``encoder_states`` ([B, T, D], encoder-decoder models)
  are the encoder's outputs for the prompts, already computed (e.g. by an earlier search of the
  same texts), and skip the encoder;
* ``record_first_group`` returns group 0's search as a :class:`FirstGroup` (``BeamSearchOutput.first_group``):
  the tokens its beams chose at each step and its finished sequences. Group 0 never sees a penalty,
  so a later search of the same prompts with the same lengths and masks and any
  ``diversity_penalty`` can take it as ``first_group`` instead of running it: only groups ``1..G-1``
  are fed to the model (half the rows with two groups) and the result is the same (up to float
  rounding when the replayed search ran in a batch of other prompts: 2 of Yelp's 20,033 IDs
  swap between two near-identical items). Algorithm 1's
  retries at a higher lambda (:meth:`foundation_rec.idgen.IDGenerator.assign`) do this; it needs
  ``trie=None`` and ``num_beam_groups > 1``;
* ``node_prior`` (``[B, trie.num_nodes]``, one per prompt: e.g. the best log prior of the items below
  each node, :meth:`Trie.best_below`) is added *after* the length normalisation: a beam at node
  ``n`` scores ``sum(log p) / length ** length_penalty + node_prior[n]``, a finished item its
  length-normalised log-probability plus its log prior, whatever its ID's length.

The search is split into named steps (:class:`_Search`): the masks (``log_probs``), each group's
candidates (``candidates``) and selection (``select``, ``finish``), the choice of the rows the model
still feeds (``compact``) and the merge of the groups (``merge``).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from transformers.modeling_outputs import BaseModelOutput

from . import cross_attention
from .errors import FoundationRecError
from .trie import Trie


@dataclass
class BeamSearchOutput:
    """``sequences`` [B, R, L]: generated tokens only (EOS included, then ``pad_token_id``);
    ``scores`` [B, R]: length-normalised log-probabilities, best first (``-inf`` for padding rows);
    ``items`` [B, R]: trie item index of each sequence (-1 without a trie, or for padding rows)."""

    sequences: torch.Tensor
    scores: torch.Tensor
    items: torch.Tensor
    first_group: FirstGroup | None = None


@dataclass
class FirstGroup:
    """Group 0 of a diverse beam search, per prompt: ``steps`` [B, T, size], the token each of its beams
    chose at each step (-1: none, the beam was dead or not fed), and its finished sequences
    ``tokens`` [B, size, T] (-1 after their end), ``scores`` [B, size] and ``lengths`` [B, size].
    Tokens are those the search ran on (per-prompt indices with ``vocab_subset``). Index it by prompt
    (``first_group[rows]``) and stack rows of several calls with :meth:`stack`."""

    steps: torch.Tensor
    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor

    def _map(self, f) -> FirstGroup:
        return FirstGroup(*(f(getattr(self, x.name)) for x in fields(self)))

    def to(self, device) -> FirstGroup:
        return self._map(lambda t: t.to(device))

    def __getitem__(self, rows) -> FirstGroup:
        return self._map(lambda t: t[rows])

    @staticmethod
    def stack(parts: Sequence[FirstGroup]) -> FirstGroup:
        return FirstGroup(*(torch.stack([getattr(p, x.name) for p in parts]) for x in fields(FirstGroup)))


@dataclass
class _Subset:
    """Per-prompt output vocabularies (``vocab_subset``): ``tokens`` [B, L] maps each prompt's local index to
    a token (EOS at 0, then its distinct tokens in id order, -1 for padding); ``union`` [U] holds the
    batch's distinct tokens, the only rows of the output layer computed, and ``to_union`` [B, L] the
    position of each local token in it."""

    tokens: torch.Tensor
    union: torch.Tensor
    to_union: torch.Tensor

    @classmethod
    def build(cls, vocab_subset: torch.Tensor, eos_token_id: int) -> _Subset:
        rows = vocab_subset.masked_fill(vocab_subset == eos_token_id, -1).sort(dim=1).values
        repeated = torch.zeros_like(rows, dtype=torch.bool)
        repeated[:, 1:] = rows[:, 1:] == rows[:, :-1]
        tokens = torch.cat([torch.full_like(rows[:, :1], eos_token_id), rows.masked_fill(repeated, -1)], dim=1)
        union = tokens[tokens >= 0].unique()
        return cls(tokens, union, torch.searchsorted(union, tokens.clamp(min=0)).clamp(max=len(union) - 1))

    def bad(self, bad_token_mask: torch.Tensor | None) -> torch.Tensor:
        """Bool [B, L]: padding, and the tokens ``bad_token_mask`` (global, [V] or [B, V]) forbids."""
        index = self.tokens.clamp(min=0)
        if bad_token_mask is None:
            return self.tokens < 0
        bad = bad_token_mask[index] if bad_token_mask.dim() == 1 else bad_token_mask.gather(1, index)
        return bad | (self.tokens < 0)

    def local_pieces(self, word_pieces: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``word_pieces`` in local indices: each text token's index in its prompt's row (-1 when absent), and
        the continuation flags per prompt, [B, L]."""
        text, continuation = word_pieces
        return self.local_index(text), continuation[self.tokens.clamp(min=0)] & (self.tokens >= 0)

    def local_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each prompt's local index of token ids ``tokens`` [B, ...] (-1: not in its vocabulary, or -1 given)."""
        flat = tokens.flatten(1)
        hit = (flat[:, :, None] == self.tokens[:, None, :]) & (flat[:, :, None] >= 0)
        return torch.where(hit.any(-1), hit.float().argmax(-1), -1).view_as(tokens)

    def first_group(self, group: FirstGroup, *, local: bool) -> FirstGroup:
        """``group`` with its tokens as local indices (``local``) or as token ids: a prompt's local
        indices depend on the rest of its batch (the padding of ``vocab_subset``), token ids do not."""
        rows = torch.arange(len(self.tokens), device=self.tokens.device)
        convert = self.local_index if local else lambda t: self.to_tokens(t.clamp(min=0), rows, -1).masked_fill(t < 0, -1)
        return FirstGroup(convert(group.steps), convert(group.tokens), group.scores, group.lengths)

    def to_tokens(self, local: torch.Tensor, rows: torch.Tensor, pad_token_id: int) -> torch.Tensor:
        """Token ids of local indices ``local`` [N, ...] of prompts ``rows`` [N]; index ``L`` (padding) maps to ``pad_token_id``."""
        table = torch.cat([self.tokens, torch.full_like(self.tokens[:, :1], pad_token_id)], dim=1)[rows]
        return table.gather(1, local.flatten(1)).view_as(local)


def _subset_head(head, subset: _Subset, origin: torch.Tensor) -> list:
    """Hooks making the output layer ``head`` (a linear layer) return, for each row, the logits of its
    prompt's tokens only (``[rows, t, L]``; ``origin``: the prompt of each row); calls from other
    threads pass unchanged."""
    owner, hidden_states = threading.get_ident(), []
    weight = head.weight.index_select(0, subset.union)
    bias = None if getattr(head, "bias", None) is None else head.bias.index_select(0, subset.union)

    def before(_module, args):
        if threading.get_ident() != owner:
            return None
        hidden, *rest = args
        hidden_states.append(hidden)
        return (hidden[..., :0, :], *rest)  # the full layer runs on no position

    def after(_module, _args, _out):
        if threading.get_ident() != owner:
            return None
        logits = torch.nn.functional.linear(hidden_states.pop(), weight, bias)  # [rows, t, U]
        index = subset.to_union[origin][:, None, :].expand(-1, logits.shape[1], -1)
        return logits.gather(2, index)

    return [head.register_forward_pre_hook(before), head.register_forward_hook(after)]


MAX_TAIL_POSITIONS = 256  # CPU: the most path tokens one call scores for the beams' remaining paths (see _score_tails)


class IncrementalModel:
    """Feeds one token (or a known path) per beam to a Hugging Face model, keeping and reordering its KV cache.

    Rows are whatever beams the caller still needs: each call names, per new row, the row of the
    previous call it continues, so finished, dead and hopeless beams cost no compute.
    """

    def __init__(self, model, input_ids, attention_mask, decoder_start_token_id, inputs_embeds=None, subset: _Subset | None = None, encoder_states=None):
        self.model = model
        self.subset = subset
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self.keep_arg = "logits_to_keep" if "logits_to_keep" in params else None
        self.prompt_mask = attention_mask
        self.origin = torch.arange(len(input_ids), device=input_ids.device)  # prompt of each row
        self.steps = 0  # generated tokens fed so far
        if self.seq2seq:
            prompt = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
            # one cross-attention cache row per prompt (cross_attention.py), when the model allows it; switched
            # on before the encoder runs, so its attention is computed as for every later prompt
            self.cross = cross_attention.cross_modules(model) if cross_attention.enable(model) else None
            if encoder_states is None:
                self.prompt_states = model.get_encoder()(**prompt, attention_mask=attention_mask, return_dict=True)
            else:
                self.prompt_states = BaseModelOutput(last_hidden_state=encoder_states)
            self.encoder = (self.prompt_states, attention_mask)  # for the current rows
            self.first_input = torch.full((len(input_ids), 1), decoder_start_token_id, device=input_ids.device)
        else:
            self.first_input = input_ids if inputs_embeds is None else inputs_embeds
            self.next_position = attention_mask.sum(-1)
            # the prompt's keys and values kept once per prompt after first() (cross_attention.shared_prompt), when the model allows it
            self.shared = cross_attention.self_modules(model) if cross_attention.enable(model) else None
            self.prefix: tuple[list, list] | None = None

    def _forward(self, tokens, keep: int = 1, select: torch.Tensor | None = None, **kwargs):
        """Logits of the last ``keep`` positions: ``[rows, V]`` for one, ``[rows, keep, V]`` for more.

        ``select`` (bool ``[rows, keep]``) computes the output layer at the selected positions only
        and returns their logits ``[selected, V]`` in row-major order: the output layer is most of a
        call's work, and padding positions need none.
        """
        head = self.model.get_output_embeddings() if select is not None or self.subset is not None else None
        if head is None:
            hooks = []
        elif self.subset is not None:
            hooks = _subset_head(head, self.subset, self.origin)
        else:
            hooks = [head.register_forward_pre_hook(only_positions(select))]
        try:
            if self.seq2seq:
                states, mask = self.encoder
                with cross_attention.grouped(self.cross, self.origin) if self.cross else contextlib.nullcontext():
                    out = self.model(encoder_outputs=states, attention_mask=mask, decoder_input_ids=tokens, use_cache=True, **kwargs)
            else:
                last = {self.keep_arg: keep} if self.keep_arg else {}
                given = {"inputs_embeds": tokens} if tokens.is_floating_point() else {"input_ids": tokens}  # embeddings: a prompt with content vectors
                shared = cross_attention.shared_prompt(self.shared, self.origin, *self.prefix, self.prompt_mask) if self.prefix else contextlib.nullcontext()
                with shared:
                    out = self.model(**given, use_cache=True, **last, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        logits = out.logits
        if self.subset is not None and head is None:  # no known output layer: the whole vocabulary's logits, then each row's tokens
            logits = logits.gather(2, self.subset.tokens.clamp(min=0)[self.origin][:, None, :].expand(-1, logits.shape[1], -1))
        if select is not None:  # without a known output layer, every position was computed: pick the selected ones
            return (logits[0] if hooks else logits[:, -keep:][select]).float()
        logits = logits[:, -keep:, :].float()
        return logits[:, 0] if keep == 1 else logits

    def first(self) -> torch.Tensor:
        """Logits [B, V] for the first generated token of each prompt (one row per prompt)."""
        if self.seq2seq:
            return self._forward(self.first_input)
        position = (self.prompt_mask.cumsum(-1) - 1).clamp(min=0) * self.prompt_mask
        logits = self._forward(self.first_input, attention_mask=self.prompt_mask, position_ids=position)
        if self.shared:  # the prompt's keys and values move out of the cache, which from now on holds the generated tokens only
            self.prefix = ([layer.keys for layer in self.cache.layers], [layer.values for layer in self.cache.layers])
            self.cache = type(self.cache)()
        return logits

    def next(self, source: torch.Tensor, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """Row ``i`` continues row ``source[i]`` of the previous call with ``tokens[i]``: logits ``[N, V]``.

        ``tokens`` ``[N, width]`` feeds several tokens per row at once (right-padded: causal attention
        keeps padding out of the earlier positions) and returns logits ``[N, width, V]``, or with
        ``select`` (bool ``[N, width]``) the logits ``[selected, V]`` of the selected positions.
        """
        tokens = tokens[:, None] if tokens.dim() == 1 else tokens
        origin, start = self.origin[source], self.steps
        (self.cache.self_attention_cache if self.seq2seq and self.cross else self.cache).reorder_cache(source)
        self.steps += tokens.shape[1]
        cache = {self.cache_arg: self.cache}
        if self.seq2seq:
            if not torch.equal(origin, self.origin):
                states = self.prompt_states.last_hidden_state
                # grouped: the states only give the decoder its rows' shape (the cache holds the keys): a view, no copy
                states = states[:1].expand(len(origin), -1, -1) if self.cross else states.index_select(0, origin)
                self.encoder = (type(self.prompt_states)(last_hidden_state=states), self.prompt_mask.index_select(0, origin))
            self.origin = origin
            return self._forward(tokens, tokens.shape[1], select, **cache)
        self.origin = origin
        generated = torch.ones(len(tokens), self.steps, dtype=self.prompt_mask.dtype, device=tokens.device)
        mask = generated if self.prefix else torch.cat([self.prompt_mask.index_select(0, origin), generated], dim=1)
        position = self.next_position.index_select(0, origin)[:, None] + start + torch.arange(tokens.shape[1], device=tokens.device)
        return self._forward(tokens, tokens.shape[1], select, attention_mask=mask, position_ids=position, **cache)


def only_positions(select: torch.Tensor):
    """A forward pre-hook for the output layer that keeps the hidden states at ``select`` (``[rows,
    width]``) as one ``[1, selected, d]`` sequence; calls from other threads pass unchanged."""
    owner = threading.get_ident()

    def hook(_module, args):
        if threading.get_ident() != owner:
            return None
        hidden, *rest = args
        return (hidden[select][None], *rest)

    return hook


def _check_args(model, input_ids, num_beams, max_new_tokens, num_beam_groups, diversity_penalty, trie, eos_token_id, start, node_prior) -> int | None:
    """Raise a one-line FoundationRecError for unusable arguments; return the decoder start token (seq2seq)."""
    if input_ids.ndim != 2 or len(input_ids) == 0:
        raise FoundationRecError("input_ids must be a non-empty [batch, length] tensor; tokenize a list of prompts")
    if num_beams < 1 or max_new_tokens < 1:
        raise FoundationRecError("num_beams and max_new_tokens must be >= 1")
    if num_beam_groups < 1 or num_beams % num_beam_groups:
        raise FoundationRecError(f"num_beams={num_beams} is not a multiple of num_beam_groups={num_beam_groups}")
    if diversity_penalty < 0:
        raise FoundationRecError("diversity_penalty must be >= 0")
    if node_prior is not None and (trie is None or node_prior.shape != (len(input_ids), trie.num_nodes)):
        raise FoundationRecError("node_prior must be [batch, trie.num_nodes] and needs a trie")
    if trie is not None:
        if trie.eos_token_id != eos_token_id:
            raise FoundationRecError(
                f"the trie ends IDs with token {trie.eos_token_id}, not eos_token_id={eos_token_id}; pass the same EOS"
            )
        if trie.num_items == 0:
            raise FoundationRecError("empty trie: no items to decode; build the trie from the catalog's IDs")
        if max_new_tokens < trie.max_depth:
            raise FoundationRecError(
                f"max_new_tokens={max_new_tokens} is shorter than the longest ID ({trie.max_depth} tokens with EOS); "
                f"pass max_new_tokens >= {trie.max_depth}"
            )
    if getattr(model.config, "is_encoder_decoder", False) and start is None:
        start = getattr(model.config, "decoder_start_token_id", None)
        if start is None:
            raise FoundationRecError("the model has no decoder_start_token_id; pass decoder_start_token_id=")
    return start


NEG_INF = float("-inf")


@dataclass
class _Running:
    """The running beams of every prompt and group, ``[B, G, width, ...]`` (``width`` is 1 at the first
    step, where every group starts from the prompt)."""

    scores: torch.Tensor  # sums of log p; -inf: dead or not fed
    tokens: torch.Tensor  # [B, G, width, max_new_tokens], padded
    nodes: torch.Tensor  # trie node of each beam (0: the root)
    rows: torch.Tensor  # model row holding each beam's logits (0 for beams without one)
    every_row: bool = True  # rows enumerate the model's rows in order (always at the first step)
    source: torch.Tensor | None = None  # after a step: the row of the last model call each beam continues
    last: torch.Tensor | None = None  # after a step: the token each beam just chose


@dataclass
class _Finished:
    """Each group's best finished sequences, ``[B, G, size, ...]``, and whether each group can still improve."""

    scores: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    nodes: torch.Tensor
    improvable: torch.Tensor  # [B, G]


@dataclass
class _Rows:
    """What the masks read about each model row: its prompt, its beam's tokens so far (``no_repeat_tokens``)
    and its last token (``word_pieces``)."""

    prompt: torch.Tensor
    tokens: torch.Tensor | None = None
    last: torch.Tensor | None = None


@dataclass
class _Search:
    """The settings of one beam search call (tensors on its device) and its steps."""

    batch: int
    vocab: int
    groups: int
    size: int  # beams per group
    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    trie: Trie | None
    diversity_penalty: float
    length_penalty: float
    min_new_tokens: int
    bad_token_mask: torch.Tensor | None
    no_repeat_tokens: bool
    word_pieces: tuple[torch.Tensor, torch.Tensor] | None
    node_prior: torch.Tensor | None
    device: torch.device
    local: bool = False  # vocab_subset: indices are per prompt, and the softmax runs over the allowed ones
    first_group: FirstGroup | None = None  # group 0 replayed from an earlier search instead of run
    record: bool = False  # keep group 0's chosen tokens per step (self.steps) for a later replay

    def __post_init__(self):
        move = lambda x: x.to(self.device) if x is not None else None
        self.trie, self.bad_token_mask, self.node_prior = map(move, (self.trie, self.bad_token_mask, self.node_prior))
        self.word_pieces = None if self.word_pieces is None else tuple(map(move, self.word_pieces))
        if self.trie is not None and self.trie.vocab_size > self.vocab:
            raise FoundationRecError(
                f"the trie's vocab_size {self.trie.vocab_size} exceeds the model's {self.vocab}; build it with the model's tokenizer"
            )
        if self.bad_token_mask is not None and self.bad_token_mask.shape not in ((self.vocab,), (self.batch, self.vocab)):
            raise FoundationRecError(
                f"bad_token_mask must be a bool tensor of shape [{self.vocab}] or [{self.batch}, {self.vocab}] (the model's logits)"
            )
        self.arange_b = torch.arange(self.batch, device=self.device)[:, None]
        self.neg_inf = torch.tensor(NEG_INF, device=self.device)
        self.steps = torch.full((self.batch, self.max_new_tokens, self.size), -1, dtype=torch.long, device=self.device) if self.record else None

    def start(self) -> tuple[_Running, _Finished]:
        """One running beam per prompt and group (at the root, score 0), and no finished sequence."""
        b, g, s, t, dev = self.batch, self.groups, self.size, self.max_new_tokens, self.device
        run = _Running(
            scores=torch.zeros(b, g, 1, device=dev),
            tokens=torch.full((b, g, 1, t), self.pad_token_id, dtype=torch.long, device=dev),
            nodes=torch.zeros(b, g, 1, dtype=torch.long, device=dev),
            rows=self.arange_b[:, :, None].expand(b, g, 1),
        )
        fin = _Finished(
            scores=torch.full((b, g, s), NEG_INF, device=dev),
            tokens=torch.full((b, g, s, t), self.pad_token_id, dtype=torch.long, device=dev),
            lengths=torch.zeros(b, g, s, dtype=torch.long, device=dev),
            nodes=torch.full((b, g, s), -1, dtype=torch.long, device=dev),
            improvable=torch.ones(b, g, dtype=torch.bool, device=dev),
        )
        if self.first_group is not None:  # group 0's results are known: it is never fed
            old = self.first_group.to(dev)
            fin.scores[:, 0], fin.lengths[:, 0] = old.scores, old.lengths
            fin.tokens[:, 0] = old.tokens.masked_fill(old.tokens < 0, self.pad_token_id)
            fin.improvable[:, 0] = False
        return run, fin

    def recorded(self, fin: _Finished) -> FirstGroup:
        """Group 0 of this search (``record=True``), as :class:`FirstGroup`."""
        ended = torch.arange(self.max_new_tokens, device=self.device) >= fin.lengths[:, 0, :, None]
        return FirstGroup(self.steps, fin.tokens[:, 0].masked_fill(ended, -1), fin.scores[:, 0].clone(), fin.lengths[:, 0].clone())

    def replayed(self, run: _Running, step: int, chosen: torch.Tensor | None) -> tuple:
        """Group 0's step read from ``first_group``: its chosen tokens count in ``chosen``; its beams stay dead."""
        token = self.first_group.steps[:, step].to(self.device)
        if chosen is not None:
            chosen.scatter_add_(1, token.clamp(min=0), (token >= 0).float())
        dead = torch.full(token.shape, NEG_INF, device=self.device)
        seqs = torch.full((self.batch, self.size, self.max_new_tokens), self.pad_token_id, dtype=torch.long, device=self.device)
        return torch.zeros_like(token), token.clamp(min=0), dead, seqs, None

    def log_probs(self, logits: torch.Tensor | None, tail, step: int, rows: _Rows) -> torch.Tensor:
        """``[rows, V]``: the step's log-probabilities, from the model's logits or the scored ``tail``, with
        every mask in one place: EOS before ``min_new_tokens``, ``bad_token_mask``, ``no_repeat_tokens``
        and ``word_pieces``."""
        if tail is None:
            if step < self.min_new_tokens:
                logits = logits.index_fill(1, torch.tensor([self.eos_token_id], device=logits.device), NEG_INF)
            if self.local:  # normalise over the allowed tokens; a row with none left is all -inf, not NaN
                logits = logits.masked_fill(self.bad_token_mask[rows.prompt], NEG_INF)
                log_probs = torch.log_softmax(logits, dim=-1).nan_to_num(nan=NEG_INF)
            else:
                log_probs = torch.log_softmax(logits, dim=-1)
        else:
            tail_tokens, tail_scores, at = tail
            log_probs = torch.full((len(tail_tokens), self.vocab), NEG_INF, device=self.device)
            log_probs.scatter_(1, tail_tokens[:, at : at + 1].clamp(min=0), tail_scores[:, at : at + 1])
        if self.bad_token_mask is not None:
            bad = self.bad_token_mask
            log_probs = log_probs.masked_fill(bad if bad.dim() == 1 else bad[rows.prompt], NEG_INF)
        if rows.tokens is not None:
            log_probs = log_probs.scatter(1, rows.tokens, NEG_INF)
        if self.word_pieces is not None:
            text_tokens, continuation = self.word_pieces
            closing, continuation = step == self.max_new_tokens - 1, continuation[rows.prompt] if self.local else continuation
            log_probs = log_probs.masked_fill(unfollowable(continuation, text_tokens, rows.prompt, rows.last, self.eos_token_id, closing), NEG_INF)
        return log_probs

    def candidates(self, log_probs: torch.Tensor, run: _Running, g: int, chosen: torch.Tensor | None):
        """Group ``g``'s candidates per beam, ``(scores [B, width, C], tokens, nodes)``: the whole vocabulary
        (tokens and nodes ``None``) or, with a trie, the children of each beam's node. Scores are the
        step's log-probabilities, minus the Hamming diversity penalty against the
        tokens ``chosen`` by groups ``0..g-1`` at this step."""
        rows, tokens, nodes = run.rows[:, g], None, None
        if self.trie is None:
            if run.every_row:  # no copy needed: rows are [B, G, width] in order (or one per prompt)
                per_group = log_probs.view(self.batch, -1, rows.shape[1], self.vocab)
                scores = per_group[:, g if per_group.shape[1] > 1 else 0]
            else:
                scores = log_probs[rows]
        else:
            tokens, nodes, valid = (x.view(self.batch, -1, x.shape[-1]) for x in self.trie.children(run.nodes[:, g].reshape(-1)))
            scores = log_probs[rows[..., None], tokens].masked_fill(~valid, NEG_INF)
        if chosen is not None and g > 0:
            penalty = chosen[:, None, :] if tokens is None else chosen.gather(1, tokens.flatten(1)).view_as(tokens)
            scores = scores - self.diversity_penalty * penalty
        return scores, tokens, nodes

    def select(self, g: int, run: _Running, candidates, fin: _Finished, step: int, chosen: torch.Tensor | None) -> tuple:
        """Group ``g``'s step: of the best ``2 * size`` continuations, those that end and rank among the best
        ``size`` join the finished ones (while the group can improve); the best ``size`` that do not end
        run on. Returns them as ``(source rows, tokens, score sums, sequences, nodes)``."""
        cand_scores, cand_tokens, cand_nodes = candidates
        running = (run.scores[:, g, :, None] + cand_scores).flatten(1)  # [B, width * C]: sums of log p
        total = running / (step + 1) ** self.length_penalty
        if self.node_prior is not None:
            total = total + self.node_prior.gather(1, cand_nodes.clamp(min=0).flatten(1))
        k = min(2 * self.size, total.shape[1])
        top_scores, top_index = total.topk(k, dim=1)
        beam = top_index // cand_scores.shape[2]
        if self.trie is None:
            token, node = top_index % cand_scores.shape[2], None
            ends = (token == self.eos_token_id) | (step == self.max_new_tokens - 1)
        else:
            token, node = cand_tokens.flatten(1).gather(1, top_index), cand_nodes.flatten(1).gather(1, top_index)
            ends = self.trie.items(node) >= 0
        ends &= top_scores > NEG_INF
        seqs = run.tokens[:, g][self.arange_b, beam]  # [B, k, T]
        seqs[:, :, step] = token
        self.finish(g, fin, torch.where(ends & (torch.arange(k, device=self.device) < self.size), top_scores, NEG_INF), seqs, node, step)
        neg_inf = self.neg_inf
        keep = torch.cat([torch.where(ends, neg_inf, top_scores), neg_inf.expand(self.batch, max(self.size - k, 0))], dim=1).topk(self.size, dim=1)
        pick, dead = keep.indices.clamp(max=k - 1), keep.values == NEG_INF
        fin.improvable[:, g] &= keep.values[:, 0] > fin.scores[:, g].min(dim=1).values
        token = token.gather(1, pick)
        if chosen is not None:
            chosen.scatter_add_(1, token, (~dead).float())
        if g == 0 and self.steps is not None:
            self.steps[:, step] = token.masked_fill(dead, -1)
        return (run.rows[:, g].gather(1, beam.gather(1, pick)), token, running.gather(1, top_index).gather(1, pick).masked_fill(dead, NEG_INF),
                seqs[self.arange_b, pick], None if node is None else node.gather(1, pick).masked_fill(dead, -1))  # fmt: skip

    def finish(self, g: int, fin: _Finished, done: torch.Tensor, seqs: torch.Tensor, node: torch.Tensor | None, step: int) -> None:
        """Merge group ``g``'s newly finished candidates (``done`` [B, k]: their scores, -inf for none) into its best ``size``."""
        done = torch.where(fin.improvable[:, g, None], done, NEG_INF)
        merged = torch.cat([fin.scores[:, g], done], dim=1).topk(self.size, dim=1)
        fin.scores[:, g] = merged.values
        fin.tokens[:, g] = torch.cat([fin.tokens[:, g], seqs], dim=1)[self.arange_b, merged.indices]
        fin.lengths[:, g] = torch.cat([fin.lengths[:, g], torch.full(done.shape, step + 1, dtype=torch.long, device=self.device)], dim=1).gather(1, merged.indices)
        if node is not None:
            fin.nodes[:, g] = torch.cat([fin.nodes[:, g], node], dim=1).gather(1, merged.indices)

    def advance(self, log_probs: torch.Tensor, run: _Running, fin: _Finished, step: int) -> _Running:
        """One step of every group, in order (diverse beam search: later groups see earlier groups' choices)."""
        chosen = torch.zeros(self.batch, log_probs.shape[-1], device=self.device) if self.diversity_penalty else None
        parts = [self.replayed(run, step, chosen) if g == 0 and self.first_group is not None else
                 self.select(g, run, self.candidates(log_probs, run, g, chosen), fin, step, chosen) for g in range(self.groups)]  # fmt: skip
        source, last, scores, tokens, nodes = (torch.stack(x, dim=1) if x[0] is not None else None for x in zip(*parts))
        return _Running(scores, tokens, run.nodes if nodes is None else nodes, run.rows, run.every_row, source, last)

    def compact(self, run: _Running, fin: _Finished, step: int):
        """Keep for the model only the live beams of groups that can still improve, and number their rows.
        Returns ``None`` when decoding is over, else ``(rows, source, tokens, nodes)``: the new rows' mask
        state, the previous row each continues, the token it feeds and its trie node."""
        needed = (run.scores > NEG_INF) & fin.improvable[:, :, None]
        if step == self.max_new_tokens - 1 or not needed.any():
            return None
        run.every_row = bool(needed.all())
        run.scores = run.scores.masked_fill(~needed, NEG_INF)
        run.rows = torch.zeros_like(run.scores, dtype=torch.long)
        run.rows[needed] = torch.arange(int(needed.sum()), device=self.device)
        tokens = run.last[needed]
        rows = _Rows(
            prompt=self.arange_b[:, :, None].expand_as(needed)[needed],
            tokens=run.tokens[needed][:, : step + 1] if self.no_repeat_tokens else None,
            last=tokens if self.word_pieces is not None else None,
        )
        return rows, run.source[needed], tokens, run.nodes[needed] if self.trie is not None else None

    def merge(self, fin: _Finished) -> BeamSearchOutput:
        """All groups' finished sequences, best first; a sequence found by several groups is kept once."""
        scores, sequences, nodes = fin.scores.flatten(1), fin.tokens.flatten(1, 2), fin.nodes.flatten(1)
        for dedupe in (False, True) if self.groups > 1 else (False,):
            if dedupe:
                scores = scores.masked_fill((sequences[:, :, None] == sequences[:, None]).all(-1).tril(-1).any(-1), NEG_INF)
            scores, order = scores.sort(dim=1, descending=True, stable=True)
            sequences, nodes = sequences[self.arange_b, order], nodes[self.arange_b, order]
        empty = scores == NEG_INF
        sequences = sequences[:, :, : max(int(fin.lengths.max()), 1)].masked_fill(empty[..., None], self.pad_token_id)
        items = torch.full_like(nodes, -1) if self.trie is None else self.trie.items(nodes).masked_fill(empty, -1)
        return BeamSearchOutput(sequences=sequences, scores=scores, items=items)


@torch.inference_mode()
def _beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    trie: Trie | None = None,
    num_beam_groups: int = 1,
    diversity_penalty: float = 0.0,
    bad_token_mask: torch.Tensor | None = None,
    decoder_start_token_id: int | None = None,
    length_penalty: float = 1.0,
    min_new_tokens: int = 0,
    no_repeat_tokens: bool = False,
    word_pieces: tuple[torch.Tensor, torch.Tensor] | None = None,
    inputs_embeds: torch.Tensor | None = None,
    node_prior: torch.Tensor | None = None,
    vocab_subset: torch.Tensor | None = None,
    encoder_states: torch.Tensor | None = None,
    first_group: FirstGroup | None = None,
    record_first_group: bool = False,
) -> BeamSearchOutput:
    """The shared core of :func:`item_search` and :func:`id_search`: beam search over ``model`` for each prompt row of
    ``input_ids`` (left-padded for decoder-only); ``num_beams`` results per prompt, best first."""
    start = _check_args(
        model, input_ids, num_beams, max_new_tokens, num_beam_groups, diversity_penalty, trie, eos_token_id, decoder_start_token_id, node_prior
    )
    subset = _check_subset(model, input_ids, vocab_subset, bad_token_mask, eos_token_id)
    stepper = IncrementalModel(model, input_ids, attention_mask, start, inputs_embeds, subset, encoder_states)
    logits = stepper.first()
    eos, pad, bad, pieces = eos_token_id, pad_token_id, bad_token_mask, word_pieces
    if subset is not None:  # the search runs on per-prompt indices: EOS is 0, padding L
        eos, pad, bad = 0, subset.tokens.shape[1], subset.bad(bad_token_mask)
        pieces = None if word_pieces is None else subset.local_pieces(tuple(x.to(input_ids.device) for x in word_pieces))
    if first_group is not None:
        shape = (len(input_ids), max_new_tokens, num_beams // num_beam_groups)
        if trie is not None or num_beam_groups < 2 or first_group.steps.shape != shape:
            raise FoundationRecError(f"first_group must come from a search of the same {len(input_ids)} prompts with max_new_tokens={max_new_tokens}, "
                                     f"{num_beam_groups} groups of {shape[2]} beams and no trie")  # fmt: skip
        first_group = first_group.to(input_ids.device) if subset is None else subset.first_group(first_group.to(input_ids.device), local=True)
    search = _Search(
        len(input_ids), logits.shape[-1], num_beam_groups, num_beams // num_beam_groups, max_new_tokens, eos, pad, trie,
        diversity_penalty, length_penalty, min_new_tokens, bad, no_repeat_tokens, pieces, node_prior, input_ids.device,
        local=subset is not None, first_group=first_group, record=record_first_group,
    )  # fmt: skip
    run, fin = search.start()
    rows, tail = _Rows(prompt=torch.arange(len(input_ids), device=input_ids.device)), None
    # once every live beam is on a single path to a leaf (Trie.tails), one model call scores all the
    # remaining tokens and later steps read them from `tail` (tokens [rows, D], log-probs [rows, D], offset)
    use_tails = trie is not None and num_beam_groups == 1 and not no_repeat_tokens and word_pieces is None and min_new_tokens <= 1
    for step in range(max_new_tokens):
        run = search.advance(search.log_probs(logits, tail, step, rows), run, fin, step)
        fed = search.compact(run, fin, step)
        if fed is None:
            break
        rows, source, tokens, nodes = fed
        if tail is not None:
            tail = (tail[0][source], tail[1][source], tail[2] + 1)
        elif use_tails:
            tail = _score_tails(stepper, search.trie, nodes, source, tokens, search.vocab)
        if tail is None:
            logits = stepper.next(source, tokens if subset is None else subset.tokens[rows.prompt, tokens])
    out = search.merge(fin)
    out.first_group = search.recorded(fin) if record_first_group else None
    if subset is not None and out.first_group is not None:
        out.first_group = subset.first_group(out.first_group, local=False)
    if subset is not None:
        out.sequences = subset.to_tokens(out.sequences, torch.arange(len(input_ids), device=input_ids.device), pad_token_id)
    return out


def item_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: Trie,
    *,
    num_beams: int,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int | None = None,
    decoder_start_token_id: int | None = None,
    length_penalty: float = 1.0,
    inputs_embeds: torch.Tensor | None = None,
    node_prior: torch.Tensor | None = None,
) -> BeamSearchOutput:
    """Item search: the ``num_beams`` best catalog items of ``trie`` per prompt (``out.items``), trie-constrained beam
    search with an optional per-prompt ``node_prior`` added after the length normalisation (the module docstring gives
    the rules). ``max_new_tokens`` defaults to the trie's depth."""
    return _beam_search(model, input_ids, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens or trie.max_depth,
                        eos_token_id=eos_token_id, pad_token_id=pad_token_id, trie=trie, decoder_start_token_id=decoder_start_token_id,
                        length_penalty=length_penalty, inputs_embeds=inputs_embeds, node_prior=node_prior)


def id_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **options) -> BeamSearchOutput:
    """ID search: free generation of ``num_beams`` sequences per prompt (``out.sequences``) with the core's options but
    the item search's: ``num_beams``, ``max_new_tokens``, ``eos_token_id``, ``pad_token_id`` (required), and
    ``num_beam_groups``, ``diversity_penalty``, ``bad_token_mask``, ``decoder_start_token_id``, ``length_penalty``,
    ``min_new_tokens``, ``no_repeat_tokens``, ``word_pieces``, ``inputs_embeds``, ``vocab_subset``, ``encoder_states``,
    ``first_group``, ``record_first_group`` (the module docstring gives each)."""
    item_options = sorted(options.keys() & {"trie", "node_prior"})
    if item_options:
        raise FoundationRecError(f"{item_options[0]} is an option of item_search, not of id_search; use item_search for catalog items")
    return _beam_search(model, input_ids, attention_mask, **options)


def _check_subset(model, input_ids, vocab_subset, bad_token_mask, eos_token_id) -> _Subset | None:
    """The :class:`_Subset` of ``vocab_subset`` (None without one), or a one-line FoundationRecError for unusable arguments."""
    if vocab_subset is None:
        return None
    if vocab_subset.ndim != 2 or len(vocab_subset) != len(input_ids) or vocab_subset.is_floating_point():
        raise FoundationRecError(f"vocab_subset must be an integer tensor [{len(input_ids)}, L] (token ids per prompt, -1 padding)")
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
    if int(vocab_subset.max()) >= vocab or (bad_token_mask is not None and bad_token_mask.shape[-1] != vocab):
        raise FoundationRecError(f"vocab_subset and bad_token_mask must use the model's {vocab} token ids")
    return _Subset.build(vocab_subset.to(input_ids.device), eos_token_id)


def _score_tails(stepper: IncrementalModel, trie: Trie, nodes: torch.Tensor, source: torch.Tensor, tokens: torch.Tensor, vocab: int):
    """When every beam (at ``nodes``, continuing ``source`` with ``tokens``) has a single path left to its
    leaf, feed each its last token and the path in one model call: ``(path tokens [N, D], their
    log-probabilities [N, D], 0)``.

    ``None`` (nothing fed) when some beam still has a choice, when the paths are one token long (no
    call saved), or when the call would be too big: over :data:`MAX_TAIL_POSITIONS` path tokens on
    CPU, or logits over 2**27 floats anywhere. Only the path tokens go through the output layer
    (the right padding of shorter paths does not). One call of that many positions replaces ``D``
    calls that each read the whole output layer but shrink as beams finish; on CPU the saving wins
    up to about 250 path tokens (beam 20: 80 beams x 5 tokens, 57% of them real) and not beyond
    (``benchmarks/decoding.py``; limits of 512 and 1024 measured no better at beams 10-30).
    """
    paths, lengths = trie.tails(nodes)
    limit = MAX_TAIL_POSITIONS if nodes.device.type == "cpu" else 2**27 // vocab
    if not len(nodes) or int(lengths.min()) == 0 or paths.shape[1] < 2 or int(lengths.sum()) > limit:
        return None
    valid = paths >= 0
    feed = torch.cat([tokens[:, None], paths[:, :-1]], dim=1).clamp(min=0)  # padding: any real token, never read
    logits = stepper.next(source, feed, select=valid)  # [positions, V]
    picked = torch.log_softmax(logits, dim=-1).gather(1, paths[valid][:, None])[:, 0]  # faster than logsumexp on CPU
    scores = torch.full(paths.shape, float("-inf"), device=paths.device).masked_scatter_(valid, picked)
    return paths, scores, 0


def unfollowable(
    continuation: torch.Tensor, text_tokens: torch.Tensor, row_prompt: torch.Tensor, row_last: torch.Tensor | None, eos_token_id: int, closing: bool
) -> torch.Tensor:
    """Bool ``[rows, V]``: the tokens ``word_pieces`` forbids next in each row (see :func:`id_search`);
    ``continuation`` is ``[V]``, or ``[rows, V]`` for one vocabulary per row (``vocab_subset``).

    A continuation piece may not start the output and may follow the row's last token only where it
    follows it in the text. After a token that, wherever it stands in the text, is followed by a
    continuation piece (the word is unfinished), only such a piece may come: not EOS, not a new
    word. At the ``closing`` (last) step, where every beam ends, no such token may come either.
    """
    text = text_tokens[row_prompt]  # [rows, L]
    rows, vocab = len(text), continuation.shape[-1]
    following = torch.cat([text[:, 1:], torch.full_like(text[:, :1], -1)], dim=1)  # token after each position, -1 at the end
    continues = continuation[following.clamp(min=0)] if continuation.dim() == 1 else continuation.gather(1, following.clamp(min=0))
    word_end = (text >= 0) & ((following < 0) | ~continues)

    def scatter(where: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # [rows, V]: True at `tokens` where `where`
        hit = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=text.device)
        return hit.scatter_(1, torch.where(where, tokens, vocab), True)[:, :-1]

    if row_last is None:  # first step: no continuation piece may start the output
        bad = continuation.expand(rows, -1).clone()
    else:
        at_last = text == row_last[:, None]
        bad = continuation & ~scatter(at_last & (following >= 0), following)
        inside_word = at_last.any(1) & ~(at_last & word_end).any(1)
        bad |= inside_word[:, None] & ~continuation  # EOS and every word start
    if closing:
        bad |= scatter(text >= 0, text) & ~scatter(word_end, text)
    return bad


@torch.no_grad()
def candidate_log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    eos_token_id: int,
    pad_token_id: int,
    decoder_start_token_id: int | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of given outputs: for prompt ``b``, each token list of
    ``candidates[b]`` followed by EOS, under the full-vocabulary softmax (as the beam search scores).
    Returns ``(log_probs [N, width], lengths [N])`` over all candidates in order (0 past a length).
    The prompt runs once; its KV cache serves every candidate."""
    stepper = IncrementalModel(model, input_ids, attention_mask, decoder_start_token_id, inputs_embeds)
    first = torch.log_softmax(stepper.first(), dim=-1)  # [B, V]
    rows = [(b, list(c) + [eos_token_id]) for b, cands in enumerate(candidates) for c in cands]
    if not rows:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    device = input_ids.device
    source = torch.tensor([b for b, _ in rows], device=device)
    width = max(len(seq) for _, seq in rows)
    targets = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    for r, (_, seq) in enumerate(rows):
        targets[r, : len(seq)] = torch.as_tensor(seq)
    lengths = torch.tensor([len(seq) for _, seq in rows], device=device)
    out = torch.zeros(len(rows), width, device=device)
    out[:, 0] = first[source].gather(1, targets[:, :1])[:, 0]
    if width > 1:
        select = torch.arange(1, width, device=device)[None] < lengths[:, None]  # position j predicts token j + 1
        logits = stepper.next(source, targets[:, :-1], select)  # [selected, V]
        out[:, 1:][select] = torch.log_softmax(logits, dim=-1).gather(1, targets[:, 1:][select][:, None])[:, 0]
    return out, lengths


def score_candidates(model, input_ids, attention_mask, candidates, **kwargs) -> list[torch.Tensor]:
    """Exact scores of given outputs (see :func:`candidate_log_probs`): the length-normalised
    log-probability of each candidate + EOS, the score the beam search gives a finished sequence
    (length penalty 1.0), as one tensor per prompt."""
    log_probs, lengths = candidate_log_probs(model, input_ids, attention_mask, candidates, **kwargs)
    if not len(lengths):
        return [torch.zeros(0) for _ in candidates]
    return list((log_probs.sum(1) / lengths).cpu().split([len(c) for c in candidates]))

"""One batched beam search for both roles: trie-constrained item decoding and diverse ID generation.

:func:`beam_search` runs a Hugging Face seq2seq (T5-style: encoder once, decoder with a KV cache)
or decoder-only model (left-padded prompts, KV cache) and follows the selection rules of
``transformers``' own beam search, so with a trie its results equal ``model.generate(num_beams=k,
num_return_sequences=k, prefix_allowed_tokens_fn=...)`` (:func:`reference_beam_search`):

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
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

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


MAX_TAIL_POSITIONS = 256  # CPU: the most path tokens one call scores for the beams' remaining paths (see _score_tails)


class _IncrementalModel:
    """Feeds one token (or a known path) per beam to a Hugging Face model, keeping and reordering its KV cache.

    Rows are whatever beams the caller still needs: each call names, per new row, the row of the
    previous call it continues, so finished, dead and hopeless beams cost no compute.
    """

    def __init__(self, model, input_ids, attention_mask, decoder_start_token_id, inputs_embeds=None):
        self.model = model
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self.keep_arg = "logits_to_keep" if "logits_to_keep" in params else None
        self.prompt_mask = attention_mask
        self.origin = torch.arange(len(input_ids), device=input_ids.device)  # prompt of each row
        self.steps = 0  # generated tokens fed so far
        if self.seq2seq:
            prompt = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
            self.prompt_states = model.get_encoder()(**prompt, attention_mask=attention_mask, return_dict=True)
            self.encoder = (self.prompt_states, attention_mask)  # for the current rows
            self.first_input = torch.full((len(input_ids), 1), decoder_start_token_id, device=input_ids.device)
        else:
            self.first_input = input_ids if inputs_embeds is None else inputs_embeds
            self.next_position = attention_mask.sum(-1)

    def _forward(self, tokens, keep: int = 1, select: torch.Tensor | None = None, **kwargs):
        """Logits of the last ``keep`` positions: ``[rows, V]`` for one, ``[rows, keep, V]`` for more.

        ``select`` (bool ``[rows, keep]``) computes the output layer at the selected positions only
        and returns their logits ``[selected, V]`` in row-major order: the output layer is most of a
        call's work, and padding positions need none.
        """
        head = self.model.get_output_embeddings() if select is not None else None
        hook = head.register_forward_pre_hook(_only_positions(select)) if head is not None else None
        try:
            if self.seq2seq:
                states, mask = self.encoder
                out = self.model(encoder_outputs=states, attention_mask=mask, decoder_input_ids=tokens, use_cache=True, **kwargs)
            else:
                last = {self.keep_arg: keep} if self.keep_arg else {}
                given = {"inputs_embeds": tokens} if tokens.is_floating_point() else {"input_ids": tokens}  # embeddings: a prompt with content vectors
                out = self.model(**given, use_cache=True, **last, **kwargs)
        finally:
            if hook is not None:
                hook.remove()
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        if select is not None:  # without a known output layer, every position was computed: pick the selected ones
            return (out.logits[0] if hook is not None else out.logits[:, -keep:][select]).float()
        logits = out.logits[:, -keep:, :].float()
        return logits[:, 0] if keep == 1 else logits

    def first(self) -> torch.Tensor:
        """Logits [B, V] for the first generated token of each prompt (one row per prompt)."""
        if self.seq2seq:
            return self._forward(self.first_input)
        position = (self.prompt_mask.cumsum(-1) - 1).clamp(min=0) * self.prompt_mask
        return self._forward(self.first_input, attention_mask=self.prompt_mask, position_ids=position)

    def next(self, source: torch.Tensor, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """Row ``i`` continues row ``source[i]`` of the previous call with ``tokens[i]``: logits ``[N, V]``.

        ``tokens`` ``[N, width]`` feeds several tokens per row at once (right-padded: causal attention
        keeps padding out of the earlier positions) and returns logits ``[N, width, V]``, or with
        ``select`` (bool ``[N, width]``) the logits ``[selected, V]`` of the selected positions.
        """
        tokens = tokens[:, None] if tokens.dim() == 1 else tokens
        self.cache.reorder_cache(source)
        origin, start = self.origin[source], self.steps
        self.steps += tokens.shape[1]
        cache = {self.cache_arg: self.cache}
        if self.seq2seq:
            if not torch.equal(origin, self.origin):
                states = self.prompt_states.last_hidden_state.index_select(0, origin)
                self.encoder = (type(self.prompt_states)(last_hidden_state=states), self.prompt_mask.index_select(0, origin))
            self.origin = origin
            return self._forward(tokens, tokens.shape[1], select, **cache)
        self.origin = origin
        generated = torch.ones(len(tokens), self.steps, dtype=self.prompt_mask.dtype, device=tokens.device)
        mask = torch.cat([self.prompt_mask.index_select(0, origin), generated], dim=1)
        position = self.next_position.index_select(0, origin)[:, None] + start + torch.arange(tokens.shape[1], device=tokens.device)
        return self._forward(tokens, tokens.shape[1], select, attention_mask=mask, position_ids=position, **cache)


def _only_positions(select: torch.Tensor):
    """A forward pre-hook for the output layer that keeps the hidden states at ``select`` (``[rows,
    width]``) as one ``[1, selected, d]`` sequence; calls from other threads pass unchanged."""
    owner = threading.get_ident()

    def hook(_module, args):
        if threading.get_ident() != owner:
            return None
        hidden, *rest = args
        return (hidden[select][None], *rest)

    return hook


def _check_args(model, input_ids, num_beams, max_new_tokens, num_beam_groups, diversity_penalty, trie, eos_token_id, start) -> int | None:
    """Raise a one-line FoundationRecError for unusable arguments; return the decoder start token (seq2seq)."""
    if input_ids.ndim != 2 or len(input_ids) == 0:
        raise FoundationRecError("input_ids must be a non-empty [batch, length] tensor; tokenize a list of prompts")
    if num_beams < 1 or max_new_tokens < 1:
        raise FoundationRecError("num_beams and max_new_tokens must be >= 1")
    if num_beam_groups < 1 or num_beams % num_beam_groups:
        raise FoundationRecError(f"num_beams={num_beams} is not a multiple of num_beam_groups={num_beam_groups}")
    if diversity_penalty < 0:
        raise FoundationRecError("diversity_penalty must be >= 0")
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


@torch.inference_mode()
def beam_search(
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
    no_repeat_tokens: bool = False,
    word_pieces: tuple[torch.Tensor, torch.Tensor] | None = None,
    inputs_embeds: torch.Tensor | None = None,
    node_bias: torch.Tensor | None = None,
    node_prior: torch.Tensor | None = None,
) -> BeamSearchOutput:
    """Beam search over ``model`` for each prompt row of ``input_ids`` (left-padded for decoder-only).

    ``trie`` restricts outputs to its items (its EOS must be ``eos_token_id``); ``bad_token_mask``
    (bool ``[V]``, or ``[B, V]`` for one mask per prompt) forbids tokens at every step;
    ``no_repeat_tokens`` forbids a beam a token it has already generated. ``word_pieces`` =
    ``(text_tokens [B, L], continuation [V])`` keeps words whole: a continuation piece (``##ing``) may
    not start the output, and may follow token ``p`` only where it follows ``p`` in prompt ``b``'s
    ``text_tokens`` (padded with -1); after a token that the text always continues with a piece,
    only such a piece may come (no EOS, no new word), and the length limit never cuts a word. See
    the module docstring for the selection rules and scores. ``inputs_embeds`` ([B, T, D], the
    embeddings of ``input_ids``, e.g. with content vectors added) replaces the prompt's token
    embeddings. ``node_bias`` (``[trie.num_nodes]``) is added to a step's log-probability when it
    enters trie node ``n`` (e.g. minus a prior's log-probability, see :func:`node_log_probs`), so a
    finished sequence scores ``sum(log p + bias) / length ** length_penalty``. ``node_prior``
    (``[B, trie.num_nodes]``, one per prompt: e.g. the best log prior of the items below each node,
    :meth:`Trie.best_below`) is added *after* the length normalisation: a beam at node ``n`` scores
    ``sum(log p) / length ** length_penalty + node_prior[n]``, a finished item its length-normalised
    log-probability plus its log prior, whatever its ID's length. Returns ``num_beams`` results per
    prompt, best first.
    """
    start = _check_args(
        model, input_ids, num_beams, max_new_tokens, num_beam_groups, diversity_penalty, trie, eos_token_id, decoder_start_token_id
    )
    device = input_ids.device
    trie = trie.to(device) if trie is not None else None
    node_bias = node_bias.to(device) if node_bias is not None else None
    node_prior = node_prior.to(device) if node_prior is not None else None
    if node_prior is not None and (trie is None or node_prior.shape != (len(input_ids), trie.num_nodes)):
        raise FoundationRecError("node_prior must be [batch, trie.num_nodes] and needs a trie")
    batch, groups = len(input_ids), num_beam_groups
    size = num_beams // groups  # beams per group
    neg_inf = torch.tensor(float("-inf"), device=device)
    arange_b = torch.arange(batch, device=device)[:, None]

    # running beams [B, G, width, ...]; width is 1 at the first step (every group starts from the prompt)
    run_scores = torch.zeros(batch, groups, 1, device=device)
    run_tokens = torch.full((batch, groups, 1, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    run_nodes = torch.zeros(batch, groups, 1, dtype=torch.long, device=device)
    run_rows = arange_b[:, :, None].expand(batch, groups, 1)  # model row holding each beam's logits (0: none)
    every_row = True  # run_rows enumerates the model's rows in order (always at the first step)
    # finished sequences per group [B, G, size, ...]
    fin_scores = torch.full((batch, groups, size), float("-inf"), device=device)
    fin_tokens = torch.full((batch, groups, size, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    fin_lengths = torch.zeros(batch, groups, size, dtype=torch.long, device=device)
    fin_nodes = torch.full((batch, groups, size), -1, dtype=torch.long, device=device)
    improvable = torch.ones(batch, groups, dtype=torch.bool, device=device)
    bad_token_mask = None if bad_token_mask is None else bad_token_mask.to(device)

    stepper = _IncrementalModel(model, input_ids, attention_mask, start, inputs_embeds)
    logits = stepper.first()
    vocab = logits.shape[-1]
    if trie is not None and trie.vocab_size > vocab:
        raise FoundationRecError(
            f"the trie's vocab_size {trie.vocab_size} exceeds the model's {vocab}; build it with the model's tokenizer"
        )
    if bad_token_mask is not None and bad_token_mask.shape not in ((vocab,), (batch, vocab)):
        raise FoundationRecError(f"bad_token_mask must be a bool tensor of shape [{vocab}] or [{batch}, {vocab}] (the model's logits)")
    row_prompt = torch.arange(batch, device=device)  # prompt of each model row (one row per prompt at the first step)
    row_tokens = None  # tokens generated so far by the beam of each model row
    row_last = None  # last generated token of each model row (with word_pieces)
    if word_pieces is not None:
        text_tokens, continuation = (x.to(device) for x in word_pieces)
    # once every live beam is on a single path to a leaf (Trie.tails), one model call scores all the
    # remaining tokens and later steps read them from `tail` (tokens [rows, D], log-probs [rows, D], offset)
    tail = None
    use_tails = trie is not None and groups == 1 and not no_repeat_tokens and word_pieces is None
    for step in range(max_new_tokens):
        if tail is None:
            log_probs = torch.log_softmax(logits, dim=-1)  # [rows, V]
        else:
            tail_tokens, tail_scores, at = tail
            log_probs = torch.full((len(tail_tokens), vocab), float("-inf"), device=device)
            log_probs.scatter_(1, tail_tokens[:, at : at + 1].clamp(min=0), tail_scores[:, at : at + 1])
        if bad_token_mask is not None:
            log_probs = log_probs.masked_fill(bad_token_mask if bad_token_mask.dim() == 1 else bad_token_mask[row_prompt], float("-inf"))
        if row_tokens is not None:
            log_probs = log_probs.scatter(1, row_tokens, float("-inf"))
        last_step = step == max_new_tokens - 1
        if word_pieces is not None:
            unfollowable = _unfollowable(continuation, text_tokens, row_prompt, row_last, eos_token_id, last_step)
            log_probs = log_probs.masked_fill(unfollowable, float("-inf"))
        norm = (step + 1) ** length_penalty
        chosen = torch.zeros(batch, log_probs.shape[-1], device=device) if diversity_penalty else None
        next_row, next_token, next_node, next_score, next_seqs = [], [], [], [], []
        for g in range(groups):
            rows = run_rows[:, g]  # [B, width]; beams without a row have score -inf
            # candidates per beam: the whole vocabulary, or the children of the beam's trie node
            if trie is None:
                cand_tokens = None
                if every_row:  # no copy needed: rows are [B, G, width] in order (or one per prompt)
                    per_group = log_probs.view(batch, -1, rows.shape[1], vocab)
                    cand_scores = per_group[:, g if per_group.shape[1] > 1 else 0]
                else:
                    cand_scores = log_probs[rows]
            else:
                cand_tokens, cand_nodes, valid = trie.children(run_nodes[:, g].reshape(-1))
                cand_tokens, cand_nodes, valid = (x.view(batch, -1, x.shape[-1]) for x in (cand_tokens, cand_nodes, valid))
                cand_scores = log_probs[rows[..., None], cand_tokens].masked_fill(~valid, float("-inf"))
                if node_bias is not None:
                    cand_scores = cand_scores + node_bias[cand_nodes.clamp(min=0)]
            if chosen is not None and g > 0:  # Hamming diversity against earlier groups at this step
                if cand_tokens is None:
                    penalty = chosen[:, None, :]
                else:
                    penalty = chosen.gather(1, cand_tokens.flatten(1)).view_as(cand_tokens)
                cand_scores = cand_scores - diversity_penalty * penalty
            num_cands = cand_scores.shape[2]
            running = (run_scores[:, g, :, None] + cand_scores).flatten(1)  # [B, width * C]: sums of log p (+ node_bias)
            total = running / norm
            if node_prior is not None:
                total = total + node_prior.gather(1, cand_nodes.clamp(min=0).flatten(1))
            k = min(2 * size, total.shape[1])
            top_scores, top_index = total.topk(k, dim=1)
            beam = top_index // num_cands
            if trie is None:
                token = top_index % num_cands
                ends = (token == eos_token_id) | last_step
            else:
                token = cand_tokens.flatten(1).gather(1, top_index)
                node = cand_nodes.flatten(1).gather(1, top_index)
                ends = trie.items(node) >= 0
            ends &= top_scores > float("-inf")
            seqs = run_tokens[:, g][arange_b, beam]  # [B, k, T]
            seqs[:, :, step] = token

            # finished: an ending candidate among the best `size`, while the prompt can still improve
            in_top = torch.arange(k, device=device) < size
            done = torch.where(ends & in_top & improvable[:, g, None], top_scores, neg_inf)
            merged = torch.cat([fin_scores[:, g], done], dim=1).topk(size, dim=1)
            fin_scores[:, g] = merged.values
            fin_tokens[:, g] = torch.cat([fin_tokens[:, g], seqs], dim=1)[arange_b, merged.indices]
            fin_lengths[:, g] = torch.cat([fin_lengths[:, g], torch.full_like(beam, step + 1)], dim=1).gather(1, merged.indices)
            if trie is not None:
                fin_nodes[:, g] = torch.cat([fin_nodes[:, g], node], dim=1).gather(1, merged.indices)

            # running: the best `size` candidates that did not end; missing ones are dead (score -inf)
            keep = torch.cat([torch.where(ends, neg_inf, top_scores), neg_inf.expand(batch, max(size - k, 0))], dim=1)
            keep = keep.topk(size, dim=1)
            pick = keep.indices.clamp(max=k - 1)
            next_row.append(rows.gather(1, beam.gather(1, pick)))
            next_token.append(token.gather(1, pick))
            next_score.append(running.gather(1, top_index).gather(1, pick).masked_fill(keep.values == float("-inf"), float("-inf")))
            next_seqs.append(seqs[arange_b, pick])
            if trie is not None:
                next_node.append(node.gather(1, pick).masked_fill(keep.values == float("-inf"), -1))
            improvable[:, g] &= keep.values[:, 0] > fin_scores[:, g].min(dim=1).values
            if chosen is not None:
                chosen.scatter_add_(1, next_token[-1], (keep.values > float("-inf")).float())

        run_scores, run_tokens = torch.stack(next_score, dim=1), torch.stack(next_seqs, dim=1)
        if trie is not None:
            run_nodes = torch.stack(next_node, dim=1)
        # only live beams of prompts (groups) that can still improve are fed to the model
        needed = (run_scores > float("-inf")) & improvable[:, :, None]
        if last_step or not needed.any():
            break
        every_row = bool(needed.all())
        run_scores = run_scores.masked_fill(~needed, float("-inf"))
        run_rows = torch.zeros_like(run_scores, dtype=torch.long)
        run_rows[needed] = torch.arange(int(needed.sum()), device=device)
        row_prompt = arange_b[:, :, None].expand_as(needed)[needed]
        if no_repeat_tokens:
            row_tokens = torch.stack(next_seqs, dim=1)[needed][:, : step + 1]
        source, tokens = torch.stack(next_row, dim=1)[needed], torch.stack(next_token, dim=1)[needed]
        if word_pieces is not None:
            row_last = tokens
        if tail is not None:
            tail = (tail[0][source], tail[1][source], tail[2] + 1)
        elif use_tails:
            tail = _score_tails(stepper, trie, run_nodes[needed], source, tokens, vocab)
        if tail is None:
            logits = stepper.next(source, tokens)

    # merge the groups' finished sequences, best first; a sequence found by several groups is kept once
    scores, sequences, nodes = fin_scores.flatten(1), fin_tokens.flatten(1, 2), fin_nodes.flatten(1)
    for dedupe in (False, True) if groups > 1 else (False,):
        if dedupe:
            scores = scores.masked_fill((sequences[:, :, None] == sequences[:, None]).all(-1).tril(-1).any(-1), float("-inf"))
        scores, order = scores.sort(dim=1, descending=True, stable=True)
        sequences, nodes = sequences[arange_b, order], nodes[arange_b, order]
    empty = scores == float("-inf")
    sequences = sequences[:, :, : max(int(fin_lengths.max()), 1)].masked_fill(empty[..., None], pad_token_id)
    items = torch.full_like(nodes, -1) if trie is None else trie.items(nodes).masked_fill(empty, -1)
    return BeamSearchOutput(sequences=sequences, scores=scores, items=items)


def _score_tails(stepper: _IncrementalModel, trie: Trie, nodes: torch.Tensor, source: torch.Tensor, tokens: torch.Tensor, vocab: int):
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


def _unfollowable(
    continuation: torch.Tensor, text_tokens: torch.Tensor, row_prompt: torch.Tensor, row_last: torch.Tensor | None, eos_token_id: int, closing: bool
) -> torch.Tensor:
    """Bool ``[rows, V]``: the tokens ``word_pieces`` forbids next in each row (see :func:`beam_search`).

    A continuation piece may not start the output and may follow the row's last token only where it
    follows it in the text. After a token that, wherever it stands in the text, is followed by a
    continuation piece (the word is unfinished), only such a piece may come: not EOS, not a new
    word. At the ``closing`` (last) step, where every beam ends, no such token may come either.
    """
    text = text_tokens[row_prompt]  # [rows, L]
    rows, vocab = len(text), continuation.shape[0]
    following = torch.cat([text[:, 1:], torch.full_like(text[:, :1], -1)], dim=1)  # token after each position, -1 at the end
    word_end = (text >= 0) & ((following < 0) | ~continuation[following.clamp(min=0)])

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


def dict_trie(trie: Trie) -> dict:
    """The trie as nested Python dicts ``{token: child}``; a leaf holds ``{-1: item}`` (for the reference)."""
    root: dict = {}
    for item, sequence in enumerate(trie.sequences()):
        node = root
        for token in sequence:
            node = node.setdefault(token, {})
        node[-1] = item
    return root


@torch.inference_mode()
def reference_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    prefix_trie: dict | None = None,
    bad_token_mask: torch.Tensor | None = None,
    decoder_start_token_id: int | None = None,
    length_penalty: float = 1.0,
) -> BeamSearchOutput:
    """The baseline :func:`beam_search` is checked and benchmarked against: ``model.generate`` with
    ``num_beams = num_return_sequences = num_beams`` and, given ``prefix_trie`` (:func:`dict_trie`),
    a ``prefix_allowed_tokens_fn`` that walks the dict trie from its root for every beam at every step
    (IDGenRec's original constrained decoding). Output in :class:`BeamSearchOutput` form."""
    from transformers import GenerationConfig

    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    prompt = 1 if seq2seq else input_ids.shape[1]

    def allowed(_batch_id: int, sent: torch.Tensor) -> list[int]:
        node = prefix_trie
        for token in sent.tolist()[prompt:]:
            node = node.get(token)
            if node is None:  # a filler beam beyond the catalog: end it
                return [eos_token_id]
        return [token for token in node if token >= 0] or [eos_token_id]

    config = GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        early_stopping=False,
        length_penalty=length_penalty,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        decoder_start_token_id=decoder_start_token_id if seq2seq else None,
        suppress_tokens=None if bad_token_mask is None else bad_token_mask.nonzero().flatten().tolist(),
        return_dict_in_generate=True,
        output_scores=True,
    )
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        prefix_allowed_tokens_fn=allowed if prefix_trie is not None else None,
    )
    sequences = out.sequences[:, prompt:]
    after_eos = (sequences == eos_token_id).long().cumsum(-1) - (sequences == eos_token_id).long() > 0
    sequences = sequences.masked_fill(after_eos, pad_token_id).view(len(input_ids), num_beams, -1)
    items = []
    for row in sequences.flatten(0, 1).tolist():
        node = prefix_trie or {}
        for token in row[: row.index(eos_token_id) + 1 if eos_token_id in row else 0]:
            node = node.get(token, {})
        items.append(node.get(-1, -1))
    items = torch.tensor(items, device=sequences.device).view(sequences.shape[:2])
    return BeamSearchOutput(sequences=sequences, scores=out.sequences_scores.view(items.shape), items=items)


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
    ``candidates[b]`` followed by EOS, under the full-vocabulary softmax (as :func:`beam_search` scores).
    Returns ``(log_probs [N, width], lengths [N])`` over all candidates in order (0 past a length).
    The prompt runs once; its KV cache serves every candidate."""
    stepper = _IncrementalModel(model, input_ids, attention_mask, decoder_start_token_id, inputs_embeds)
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
    log-probability of each candidate + EOS, the score :func:`beam_search` gives a finished sequence
    (length penalty 1.0), as one tensor per prompt."""
    log_probs, lengths = candidate_log_probs(model, input_ids, attention_mask, candidates, **kwargs)
    if not len(lengths):
        return [torch.zeros(0) for _ in candidates]
    return list((log_probs.sum(1) / lengths).cpu().split([len(c) for c in candidates]))


@torch.no_grad()
def node_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: Trie, *, chunk: int = 1024, **kwargs) -> torch.Tensor:
    """``[trie.num_nodes]``: the log-probability of the token entering each node, given its prefix, after
    the one prompt ``input_ids`` ([1, T]); 0 at the root. ``kwargs`` as :func:`candidate_log_probs`."""
    sequences, paths = trie.sequences(), trie.paths().cpu()
    out = torch.zeros(trie.num_nodes)
    for lo in range(0, len(sequences), chunk):
        part = sequences[lo : lo + chunk]
        log_probs, _ = candidate_log_probs(model, input_ids, attention_mask, [[seq[:-1] for seq in part]], **kwargs)
        nodes = paths[lo : lo + len(part), : log_probs.shape[1]]
        found = nodes >= 0
        out[nodes[found]] = log_probs.cpu()[found]
    return out

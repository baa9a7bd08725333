"""``sasrec``: the supervised reference, SASRec (Kang & McAuley, ICDM 2018) trained with full softmax cross-entropy.

Model (the paper's settings unless noted):

* item embeddings of size 64, shared with the output layer, plus learned position embeddings for
  ``max_len = 50`` positions; a sequence is right-aligned (its latest item at the last position)
  and left-padded;
* 2 pre-LayerNorm transformer blocks, 1 attention head, causal attention (padding is never
  attended to), point-wise ReLU feed-forward of width 64, dropout 0.2 (0.5 on the sparse Amazon
  corpora, as in the paper), a final LayerNorm;
* the score of item ``i`` after a history is the last position's output dotted with item ``i``'s
  embedding; every catalog item is scored (full ranking).

Training uses the **train split only**: each user's items before their last two
(:func:`~foundation_rec.splits.train_part`), cut from the end into windows of
``max_len + 1`` items, so every training transition is predicted exactly once per epoch, at every
position ("SASRec-CE": cross-entropy over the whole catalog instead of the paper's one sampled
negative). Adam, lr 1e-3, betas (0.9, 0.98), batches of 128 windows of similar length. After each epoch NDCG@10
on the **valid** split (a fixed-seed sample of at most ``valid_users`` users, through the
evaluation harness) decides early stopping: training stops after ``patience`` epochs without
improvement and the best epoch's weights are kept; an optional CPU-time budget ends it sooner (the
result then says ``stopped: time_budget``). Seeds fix the initialisation and the batch order. Test
data is never seen before the harness evaluates the returned model.

At evaluation the harness passes at most 20 history items (the same input every method gets);
positions are right-aligned, so the model sees them as the last 20 of its 50 positions, a
situation it was trained on (every user's early windows are short).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import FoundationRecError
from ..splits import MAX_HISTORY, train_part
from .common import pad_items


class SASRecNet(nn.Module):
    """The network: embeddings, causal transformer blocks, and scores against every item embedding."""

    def __init__(self, n_items: int, hidden: int, max_len: int, blocks: int, heads: int, dropout: float):
        super().__init__()
        self.max_len, self.heads = max_len, heads
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)  # row 0 is padding, item r is row r + 1
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, hidden, dropout, activation="relu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.xavier_normal_(self.item_emb.weight[1:])
        nn.init.xavier_normal_(self.pos_emb.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, hidden]`` for right-aligned inputs ``x [B, T]`` (item row + 1, 0 = padding), ``T <= max_len``."""
        steps = x.shape[1]
        positions = torch.arange(self.max_len - steps, self.max_len, device=x.device)
        real = x > 0
        h = self.item_emb(x) * self.item_emb.embedding_dim**0.5 + self.pos_emb(positions)
        h = self.dropout(h) * real.unsqueeze(-1)
        # query t sees real keys s <= t; a padding query sees only itself (its output is never used)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril()
        allowed = (causal & real[:, None, :]) | torch.eye(steps, dtype=torch.bool, device=x.device)
        return self.norm(self.encoder(h, mask=(~allowed).repeat_interleave(self.heads, dim=0)))

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Scores over the catalog (item rows, padding excluded) for hidden states ``[..., hidden]``."""
        return h @ self.item_emb.weight[1:].T


def windows(offsets: np.ndarray, values: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every sequence from its end into windows of ``max_len + 1`` items; return right-aligned ``(inputs, targets)``.

    Both are ``int64 [W, max_len]`` holding item row + 1, 0 for padding; each transition ``s[t-1] -> s[t]``
    of each sequence is a target exactly once.
    """
    inputs, targets = [], []
    for u in range(len(offsets) - 1):
        seq = values[offsets[u] : offsets[u + 1]] + 1
        for end in range(len(seq), 1, -max_len):
            window = seq[max(0, end - max_len - 1) : end]
            inputs.append(np.pad(window[:-1], (max_len - len(window) + 1, 0)))
            targets.append(np.pad(window[1:], (max_len - len(window) + 1, 0)))
    if not inputs:
        raise FoundationRecError("no training transitions: SASRec needs users with at least 4 items; use a larger corpus")
    return np.stack(inputs), np.stack(targets)


def _trim(*arrays: np.ndarray) -> list[np.ndarray]:
    """Drop the leading columns that are padding in every row (right-aligned batches)."""
    first = int(np.argmax((arrays[0] > 0).any(axis=0)))
    return [a[:, first:] for a in arrays]


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of windows of similar length (random order within a length, batches in random order).

    Batches are padded only to their longest window, so grouping by length removes most padding
    (most Amazon users have a handful of items, a few have hundreds).
    """
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _train_epoch(net: SASRecNet, optimizer, inputs: np.ndarray, targets: np.ndarray, batches, device: str) -> tuple[float, int]:
    """One pass of full-softmax cross-entropy over ``batches`` of windows; returns (summed loss, predicted positions)."""
    net.train()
    total, count = 0.0, 0
    for idx in batches:
        x, y = (torch.from_numpy(a).to(device) for a in _trim(inputs[idx], targets[idx]))
        real = y > 0
        loss = nn.functional.cross_entropy(net.scores(net(x)[real]), y[real] - 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * int(real.sum()), count + int(real.sum())
    net.train(False)
    return total, count


class SASRec:
    """A trained SASRec behind the harness's ``recommend`` protocol."""

    def __init__(self, net: SASRecNet, device: str = "cpu", batch_size: int = 256):
        self.net, self.device, self.batch_size = net.train(False), device, batch_size
        self.history: list[dict] = []
        self.stopped = ""

    @property
    def info(self) -> dict:
        """The training log the evaluation result carries: per-epoch loss, valid NDCG@10, seconds; why it stopped."""
        return {"epochs": self.history, "stopped": self.stopped}

    @classmethod
    def fit(
        cls,
        corpus,
        *,
        hidden: int = 64,
        max_len: int = 50,
        blocks: int = 2,
        heads: int = 1,
        dropout: float | None = None,
        lr: float = 1e-3,
        batch_size: int = 128,
        max_epochs: int = 200,
        patience: int = 5,
        time_budget: float | None = None,
        valid_users: int = 2000,
        valid_history: int = MAX_HISTORY,
        valid_exclude_history: bool = False,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ) -> SASRec:
        """Train on ``corpus``'s train split with early stopping on valid NDCG@10; ``dropout=None`` picks 0.5 on Amazon, else 0.2.

        Validation goes through the harness with ``valid_history`` history items (the harness's cap by
        default; ``max_len`` for the literature's whole-history protocol) and, with
        ``valid_exclude_history``, the history removed from the list (the literature's ``filter_seen``).
        ``valid_users=None`` validates on every user.

        ``time_budget`` (CPU seconds of this process, so other jobs on a shared machine do not eat into it)
        ends training after the epoch that exhausts it; ``model.stopped`` says
        why training ended: ``early`` (patience ran out), ``max_epochs`` or ``time_budget``.
        """
        from ..evaluate import evaluate

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FoundationRecError(f"--device {device} asked for but CUDA is not available; use --device cpu")
        if max_epochs < 1 or patience < 1:
            raise FoundationRecError(f"--max-epochs and --patience must be at least 1, got {max_epochs} and {patience}")
        dropout = (0.5 if corpus.platform == "amazon" else 0.2) if dropout is None else dropout
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        inputs, targets = windows(*train_part(corpus.item_sequences), max_len)
        lengths = (targets > 0).sum(axis=1)
        net = SASRecNet(len(corpus.items), hidden, max_len, blocks, heads, dropout).to(device)
        model = cls(net, device)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.98))
        best, best_state, waited = -1.0, None, 0
        began = time.process_time()
        model.stopped = "max_epochs"
        epochs = tqdm(range(1, max_epochs + 1), desc=f"train sasrec on {corpus.name}", unit="epoch", disable=not progress)
        for epoch in epochs:
            start = time.perf_counter()
            batches = tqdm(_batches(lengths, batch_size, rng), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
            total, count = _train_epoch(net, optimizer, inputs, targets, batches, device)
            ndcg = evaluate(corpus, model, "sasrec", split="valid", max_users=valid_users, seed=seed, max_history=valid_history,
                            exclude_history=valid_exclude_history, progress=False)["metrics"]["N@10"]
            model.history.append({"epoch": epoch, "loss": round(total / count, 4), "valid_N@10": round(ndcg, 4), "seconds": round(time.perf_counter() - start, 1)})
            epochs.set_postfix(loss=f"{total / count:.3f}", valid_ndcg10=f"{ndcg:.4f}", best=f"{max(best, ndcg):.4f}")
            if ndcg > best:
                best, best_state, waited = ndcg, copy.deepcopy(net.state_dict()), 0
            else:
                waited += 1
            if waited >= patience:
                model.stopped = "early"
                break
            if time_budget is not None and time.process_time() - began >= time_budget:
                model.stopped = "time_budget"
                break
        epochs.close()
        net.load_state_dict(best_state)
        net.train(False)
        return model

    @torch.no_grad()
    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        """Top ``k`` items by score after each history (its last ``max_len`` items)."""
        out = []
        max_len = self.net.max_len
        for lo in range(0, len(histories), self.batch_size):
            batch = histories[lo : lo + self.batch_size]
            x = np.zeros((len(batch), max_len), dtype=np.int64)
            for i, hist in enumerate(batch):
                hist = np.asarray(hist[-max_len:], dtype=np.int64)
                x[i, max_len - len(hist) :] = hist + 1
            (x,) = _trim(x)
            h = self.net(torch.from_numpy(x).to(self.device))[:, -1]
            scores = self.net.scores(h)
            out.append(scores.topk(min(k, scores.shape[1]), dim=1).indices.cpu().numpy())
        return pad_items(np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64), k)

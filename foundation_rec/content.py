"""Content-aware history: a frozen text vector of each history item, projected into the recommender's input.

Every item's text is embedded once with the frozen all-MiniLM-L6-v2 sentence encoder
(:func:`foundation_rec.text_embeddings.item_vectors`, cached on disk). A
:class:`ContentProjection` (one linear layer, trained with the recommender) maps the 384-d vector
into the recommender's embedding width, and the result is *added* to the input embedding of the
last token of the item's textual ID in the prompt. The ID tokens stay in the prompt (the soft-ID
phase acts on them); the vector tells the recommender what the item is even when its ID words are
new to it, as on a platform it never saw.

Adding at the ID's *last* token keeps the sequence objective honest: the tokens of an item's ID
are predicted from positions before that token, so no item's vector is visible to the prediction
of its own ID (the next position only predicts the end-of-ID token).

Saved next to the recommender as ``content.safetensors`` + ``content.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import load_module
from .text_embeddings import MODEL_NAME

FILE, INFO = "content.safetensors", "content.json"
MINILM_DIM = 384  # width of its sentence vectors


class ContentProjection(torch.nn.Module):
    """A linear map from a frozen text vector (``in_dim``) to the recommender's input width, started small."""

    def __init__(self, in_dim: int, width: int, init_std: float = 0.02):
        super().__init__()
        self.in_dim, self.width = in_dim, width
        self.linear = torch.nn.Linear(in_dim, width)
        torch.nn.init.normal_(self.linear.weight, std=init_std)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.linear(vectors)

    def save(self, folder: Path) -> None:
        """Write ``content.safetensors`` and ``content.json`` into ``folder`` (an already staged directory)."""
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / FILE))
        (folder / INFO).write_text(json.dumps({"encoder": MODEL_NAME, "in_dim": self.in_dim, "width": self.width}), encoding="utf-8")


def load_projection(folder: str | Path, device: torch.device | str = "cpu") -> ContentProjection | None:
    """The projection saved in a recommender folder, or None when the recommender reads no content vectors."""
    loaded = load_module(Path(folder), FILE, INFO, lambda info: ContentProjection(int(info["in_dim"]), int(info["width"])))
    return None if loaded is None else loaded[0].to(device)


def content_index(spans: Sequence[Sequence], shifts: Sequence[int] | None = None) -> torch.Tensor:
    """``[N, 3]`` long rows ``(batch row, position, item)``: the last ID token of every history item.

    ``spans[b]`` lists ``(item, (start, end))`` of row ``b``; ``shifts[b]`` is added to its positions
    (the left padding of generation inputs).
    """
    rows = [(b, end - 1 + (shifts[b] if shifts else 0), item) for b, row in enumerate(spans) for item, (start, end) in row if end > start]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)

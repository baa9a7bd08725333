"""SASRec from scratch and popularity on N fixed-seed users (the sample ``pretrain --users-per-corpus N`` draws, seed 42),
over the full catalog, scored on the README table's test users (2,000 fixed-seed; all 943 on MovieLens-100k).

    python experiments/finetune_probe/sasrec_subset.py movielens-100k 100
"""

import json
import sys
import time

import numpy as np
import torch

from foundation_rec.baselines import Popularity, SASRec
from foundation_rec.corpora import Corpus, load_corpus
from foundation_rec.evaluate import evaluate_settings
from foundation_rec.signals import PlatformCounts


def main() -> None:
    torch.set_num_threads(1)
    name, n, seed = sys.argv[1], int(sys.argv[2]), 42
    corpus = load_corpus(name)
    users = np.sort(np.random.default_rng([seed, len(corpus.sequences)]).choice(len(corpus.sequences), n, replace=False))
    subset = Corpus(corpus.name, corpus.platform, corpus.role, corpus.items, corpus.sequences.select(users).flatten_indices(), corpus.meta)
    start = time.perf_counter()
    sasrec = SASRec.fit(subset, valid_users=None, progress=False)
    out = {"corpus": name, "train_users": n, "sasrec_epochs": len(sasrec.history), "sasrec_fit_s": round(time.perf_counter() - start, 1)}
    popularity = Popularity(PlatformCounts.from_corpus(subset).popularity)
    for method, model in (("sasrec", sasrec), ("popularity", popularity)):
        for r in evaluate_settings(corpus, model, method, (False, True), max_users=2000, seed=0, progress=False):
            out[f"{method} {'excluded' if r['exclude_history'] else 'kept'}"] = round(r["metrics"]["N@10"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

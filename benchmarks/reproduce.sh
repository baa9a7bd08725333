#!/usr/bin/env bash
# Reproduce the README's results table from a fresh clone, one step after the other:
#   1. pre-train the foundation model on the Amazon pool (runs/pretrain/best);
#   2. the supervised references: SASRec trained on each target until early stopping (results/baselines_converged.*);
#   3. the practitioner anchors' settings, chosen on the Amazon pool (results/anchors.*);
#   4. zero-shot transfer on the five targets next to the anchors and SASRec (results/transfer-default.*, the table).
# Needs the package with its benchmark extras and offline weights (the README's quick start, with ".[test,bench]")
# and the corpora in the data directory (the README's Data section). Stage times are in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m foundation_rec.pretrain --corpora all
python -m benchmarks.baselines --converged --methods popularity,sasrec --corpora movielens-100k,steam,movielens-1m,yelp,goodreads --max-users 2000 --name baselines_converged
python -m benchmarks.anchors
rm -f benchmarks/results/transfer-default.json  # the transfer benchmark resumes from this file; start over
python -m benchmarks.transfer --variant default=runs/pretrain/best --max-users 2000 --name transfer-default

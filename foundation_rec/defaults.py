"""Inference defaults: the one place that ``zeroshot``, the API, the demo, training's validation and the benchmarks read.

* ``NUM_BEAMS``: beams of the trie-constrained item search, also the least that fills a top 10 (``MIN_BEAMS``).
  Ten beams score within noise of twenty (N@10 within +-.0006 on MovieLens-100k, Steam and Yelp, both protocols)
  and are 1.5-1.6x faster (``benchmarks/RESULTS.md``, *Zero-shot speed*).
* ``PROTOCOL``: what ``zeroshot`` ranks with unless told: ``counts`` (the target's training-split counts beside the
  texts, what a platform with logs deploys); ``strict`` and ``both`` are its other values.
* ``BATCH_SIZE``: users per beam-search batch (32: 1.14x the users/s of 16 on Yelp with 20 beams on 2 CPU threads, same results).
* ``PRIOR_GAMMAS``: the weights of the content prior's log-probability added to generation's score
  that pre-training validates; the best on the pool's validation users is saved with the checkpoint
  (its ``content_prior``) and is what ``zeroshot``, the API and the demo use.
* ``CONTENT_PRIOR``: that weight for a checkpoint that records none (written before the choice was
  made at validation; 30 was the best on pool validation items, FINDINGS.md); 0 without a prior.
* ``ID_PRECISION``: arithmetic of a new catalog's ID generation (``fp32``; ``int8`` is faster on a CPU with AVX-512
  VNNI and slower on one without AVX-512; the demo's ``auto`` times both on the machine, :func:`foundation_rec.int8.choose`).
"""

NUM_BEAMS = 10
MIN_BEAMS = 10
PROTOCOL = "counts"
BATCH_SIZE = 32
PRIOR_GAMMAS = (1.0, 3.0, 10.0, 30.0)
CONTENT_PRIOR = 30.0
ID_PRECISION = "fp32"

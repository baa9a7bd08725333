"""Inference defaults: the one place that ``zeroshot``, the API, the demo, training's validation and the benchmarks read.

* ``NUM_BEAMS``: beams of the trie-constrained item search; ``MIN_BEAMS`` (10) is the least that still
  fills a top 10. 20 beams is what every reported number uses.
* ``BATCH_SIZE``: users per beam-search batch.
* ``CONTENT_PRIOR``: gamma, the weight of the content prior's log-probability added to generation's
  score (``benchmarks/content_prior_gamma.py`` chose it on pool validation); 0 for a checkpoint without a prior.
* ``ID_PRECISION``: arithmetic of a new catalog's ID generation (``fp32``; ``int8`` is the faster CPU option).
"""

NUM_BEAMS = 20
MIN_BEAMS = 10
BATCH_SIZE = 16
CONTENT_PRIOR = 30.0
ID_PRECISION = "fp32"

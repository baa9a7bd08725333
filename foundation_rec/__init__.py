"""foundation_rec: zero-shot generative recommendation with a foundation model (IDGenRec)."""

from .allocator import keep_freed_memory

keep_freed_memory()  # see allocator.py: beam search on CPU is a third faster; FOUNDATION_REC_MALLOC=system opts out

__version__ = "0.1.0"

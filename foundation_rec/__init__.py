"""foundation_rec: zero-shot generative recommendation with a foundation model (IDGenRec)."""

__version__ = "0.1.0"

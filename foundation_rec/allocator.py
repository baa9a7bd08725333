"""glibc allocator settings for CPU inference: keep freed memory in the process instead of handing it back.

Beam search allocates and frees tensors of a few to tens of MiB at every step. glibc's defaults
serve such blocks with fresh ``mmap`` pages and return them on ``free``, so every step pays the
kernel to fault in and zero the same memory again: on the 2-core CPU that was a third of ID
generation's time (``benchmarks/results/catalog_ids.md``). :func:`keep_freed_memory` raises the
``mmap`` threshold to 32 MiB and lets up to 1 GiB of free heap stay mapped. It runs once, on import
of the package; set ``FOUNDATION_REC_MALLOC=system`` to keep glibc's defaults. Other C libraries
(macOS, musl, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings above (once); True when glibc took them."""
    global _done
    if _done or os.environ.get("FOUNDATION_REC_MALLOC", "").lower() == "system":
        return _done
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(option, value) == 1 for option, value in
                 ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))  # fmt: skip
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok

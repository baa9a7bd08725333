"""Where the package reads corpora and writes caches.

Data directory (the folder that holds one sub-folder per corpus, as ``../shared/corpora``), first hit wins:

1. the ``--data-dir`` flag of every command (``data_dir=`` in Python);
2. the environment variable ``FOUNDATION_REC_DATA``;
3. ``./data``, ``./corpora-data``, ``../shared/corpora`` (relative to the working directory), and
   ``../shared/corpora`` beside the source checkout.

Cache directory: ``FOUNDATION_REC_CACHE``, else ``~/.cache/foundation_rec``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FoundationRecError

DATA_ENV = "FOUNDATION_REC_DATA"
CACHE_ENV = "FOUNDATION_REC_CACHE"
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dirs() -> list[Path]:
    """The candidate data directories, in the order they are tried after the flag and the variable."""
    cwd = Path.cwd()
    return [cwd / "data", cwd / "corpora-data", cwd.parent / "shared" / "corpora", REPO_ROOT.parent / "shared" / "corpora"]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory to use, or raise a one-line error that says how to point at one."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FoundationRecError(f"data directory {path} does not exist; pass --data-dir with the folder that holds the corpora")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FoundationRecError(f"{DATA_ENV}={env} is not a directory; set it to the folder that holds the corpora")
        return path
    for path in default_data_dirs():
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in default_data_dirs())
    raise FoundationRecError(f"no data directory found (tried {tried}); pass --data-dir or set {DATA_ENV}")


def cache_dir() -> Path:
    """Root of the on-disk caches (built corpora, indexed catalogs)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "foundation_rec").expanduser()


def writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create ``path`` if needed and prove it takes a file, before any long work; else a one-line error naming ``flag``."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FoundationRecError(f"{flag} {folder} is not writable ({err.strerror or err}); pass a folder you can write to") from None
    return folder

"""One exception type for every user-facing problem.

Each message is one line that names the problem and the fix. The command-line entry points
catch :class:`FoundationRecError` and print ``error: <message>`` instead of a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])


class FoundationRecError(ValueError):
    """A problem the user can fix; ``str(err)`` is a one-line explanation including the fix."""


def cli_errors(main: F) -> F:
    """Decorate a CLI ``main`` so that a :class:`FoundationRecError` exits with status 2 and one line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except FoundationRecError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_flags(parser, argv: list[str]) -> tuple:
    """``parser.parse_args_into_dataclasses(argv)`` (an ``HfArgumentParser``), with an unknown flag as a one-line error."""
    *parsed, unknown = parser.parse_args_into_dataclasses(argv, look_for_args_file=False, return_remaining_strings=True)
    if unknown:
        raise FoundationRecError(f"unknown argument {unknown[0]!r}; run with --help to list the flags")
    return tuple(parsed)


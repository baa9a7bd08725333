"""Render an item's metadata as one line of plain text: ``title: ...; brand: ...; categories: ...``.

Every value is HTML-unescaped (twice, for double-escaped sources such as ``&amp;amp;``), stripped
of HTML tags, whitespace-normalised, and truncated at :data:`MAX_FIELD_CHARS` characters on a word
boundary (marked with ``...``). Lists are joined with ``", "``. Empty fields are left out.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

MAX_FIELD_CHARS = 256
_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean(value: Any, limit: int = MAX_FIELD_CHARS) -> str:
    """Turn one metadata value into clean, bounded plain text."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(clean(v, limit) for v in value if clean(v, limit))
    text = html.unescape(html.unescape(str(value)))
    text = _SPACE.sub(" ", _TAG.sub(" ", text)).strip()
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit - 3)
        text = text[: cut if cut > limit // 2 else limit - 3].rstrip(" ,;:") + "..."
    return text


def render(fields: dict[str, Any], order: Iterable[str] = ()) -> str:
    """Render ``fields`` as ``key: value; key: value``, keys in ``order`` first, then the rest as given."""
    keys = [k for k in order if k in fields] + [k for k in fields if k not in set(order)]
    parts = []
    for key in keys:
        value = clean(fields[key])
        if value:
            parts.append(f"{key}: {value}")
    return "; ".join(parts)

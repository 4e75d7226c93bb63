"""Typed errors raised at the framework's boundaries.

Every error names the offending file, row or value and says what would be accepted, so a
user can fix the input without reading the source. A message stays short: a list of offending
files shows a few (:func:`shorten`) and the error carries the full list as ``details``, which
the command writes to a file that its last line names (see
:func:`osteolightning.runs.failures.user_errors`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

#: How many items of a list an error message shows before "and N more".
SHOWN_ITEMS = 5


def shorten(items: Sequence[object], limit: int = SHOWN_ITEMS, quote: bool = True) -> str:
    """``'a', 'b', 'c' and 7 more``: the first ``limit`` items of a list for a message.

    Example:
        >>> shorten(["x.png", "y.png", "z.png"], limit=2)
        "'x.png', 'y.png' and 1 more"
    """
    shown = ", ".join(f"'{item}'" if quote else str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class OsteoError(Exception):
    """Base class of all errors raised by osteolightning.

    Args:
        message: what is wrong and what would be accepted.
        details: the full list the message shortened (one line each), if any.
    """

    def __init__(self, message: str = "", details: Sequence[object] | None = None) -> None:
        super().__init__(message)
        self.details = [str(d) for d in details] if details else []


class ConfigError(OsteoError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class DataSourceError(OsteoError, ValueError):
    """A data source (class folders, CSV manifest, segmentation tree) is malformed."""


class ImageReadError(DataSourceError):
    """An image file cannot be decoded into a finite grayscale array.

    Args:
        path: the file that failed.
        reason: what is wrong with it and what would be accepted.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read image '{self.path}': {reason}")

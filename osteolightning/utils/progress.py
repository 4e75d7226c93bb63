"""Progress of long data work (preprocessing, phantom generation): a bar or a few log lines.

On a terminal a rich progress bar shows how far a long loop is; where the output goes to a log
file or CI (stderr is not a terminal) the loop logs a line at each quarter instead, and a short
loop (under :data:`MIN_LOGGED` items) logs nothing, so tests stay quiet.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

#: Fewer items than this get no log lines (a bar is still shown on a terminal).
MIN_LOGGED = 100
#: Log lines at these fractions of the work.
QUARTERS = (0.25, 0.5, 0.75, 1.0)


def _on_terminal() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


@contextlib.contextmanager
def progress(total: int, description: str, logger: logging.Logger) -> Iterator[Callable[[], None]]:
    """Report the progress of ``total`` steps; yields ``advance()``, called once per step.

    Args:
        total: number of steps.
        description: what is being done, e.g. ``"Preprocessing images"``.
        logger: where the log lines go when stderr is not a terminal.

    Example:
        >>> with progress(3, "Counting", logging.getLogger("x")) as advance:
        ...     for _ in range(3):
        ...         advance()
    """
    if total <= 0:
        yield lambda: None
        return
    if _on_terminal():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)
        return
    done = 0
    marks = [round(q * total) for q in QUARTERS] if total >= MIN_LOGGED else []

    def advance() -> None:
        nonlocal done
        done += 1
        if marks and done == marks[0]:
            marks.pop(0)
            logger.info(f"{description}: {done}/{total} ({100 * done // total} %)")

    yield advance

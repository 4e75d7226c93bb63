"""How a command ends on the user's mistake: the message alone, exit status 1, no traceback.

A typed error of the framework (:class:`~osteolightning.errors.OsteoError`: bad data, a bad
config value, a bad checkpoint), also when Hydra wraps it while instantiating a config node,
is the user's to fix: the terminal shows its message alone and the command exits with status
1; the traceback goes to the run's log file. ``HYDRA_FULL_ERROR=1`` (or ``OSTEO_TRACEBACK=1``)
shows the traceback on the terminal too. Any other exception is a bug or an environment
failure and keeps its traceback. When the error carries a long list (``details``), the list is
written to ``error_details.txt`` in the run directory (or the working folder) and the message
names that file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from osteolightning.errors import SHOWN_ITEMS, OsteoError
from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_text

log = logging.getLogger(__name__)

#: Either of these set to 1 shows the traceback of a framework error on the terminal.
TRACEBACK_VARIABLES = ("HYDRA_FULL_ERROR", "OSTEO_TRACEBACK")


def user_error(err: BaseException) -> OsteoError | None:
    """The framework error behind ``err``: itself, or the cause Hydra's instantiation or
    OmegaConf's interpolation wrapped (``InstantiationException``,
    ``InterpolationResolutionError``); else ``None``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OsteoError):
            return err
        seen.add(id(err))
        err = err.__cause__ or (err.__context__ if _is_wrapper(err) else None)
    return None


def _is_wrapper(err: BaseException) -> bool:
    # Hydra's instantiation and OmegaConf's interpolation (a resolver such as
    # ${checkpoint:...} that raised) wrap the framework's error
    return type(err).__name__ in ("InstantiationException", "InterpolationResolutionError")


def traceback_wanted() -> bool:
    """Whether the terminal shows tracebacks of framework errors too."""
    return any(os.environ.get(name, "") not in ("", "0") for name in TRACEBACK_VARIABLES)


def describe(err: OsteoError, folder: str | Path | None = None) -> str:
    """The message of ``err``; with ``details``, the full list is written to
    ``<folder>/error_details.txt`` (the working folder by default, the temporary folder when
    that is not writable) and the message ends by naming the file."""
    message = str(err).strip()
    if len(err.details) <= SHOWN_ITEMS:  # the message shows them all already
        return message
    text = "\n".join(err.details) + "\n"
    for target in (Path(folder or os.getcwd()), Path(tempfile.gettempdir())):
        try:
            path = atomic_write_text(target / rundir.ERROR_DETAILS, text)
        except OSError:
            continue
        return f"{message}\nThe full list ({len(err.details)}) is in {path}."
    return message


def log_to_files(err: BaseException, message: str) -> None:
    """Write ``message`` and ``err``'s traceback to the log files only (not the terminal)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    record.exc_info = (type(err), err, err.__traceback__)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def log_failure(logger: logging.Logger, err: BaseException, message: str) -> None:
    """Log a failure: a framework error's message alone on the terminal and with its traceback
    in the log files; any other exception with its traceback everywhere."""
    if user_error(err) is None or traceback_wanted():
        logger.error(message, exc_info=err)
        return
    log_to_files(err, message)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def user_errors(prog: str, folder: str | Path | None = None) -> Iterator[None]:
    """End the command with the message of a framework error and exit status 1.

    Args:
        prog: the command's name, the prefix of the message (``osteo-train: error: ...``).
        folder: where ``error_details.txt`` goes (the run directory); the working folder when
            ``None``.

    Raises:
        SystemExit: status 1, on a framework error (unless tracebacks are wanted: then the
            error itself).
    """
    try:
        yield
    except Exception as err:
        cause = user_error(err)
        if cause is None or traceback_wanted():
            raise
        message = describe(cause, folder)
        log_to_files(err, message)
        sys.stderr.write(f"{prog}: error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None

"""Where an Optuna study lives, checked before anything runs.

``hydra.sweeper.storage``:

* ``null``: Optuna's journal file storage, ``<study folder>/optuna_journal.log`` (the folder is
  ``hydra.sweep.dir``). Processes on any node of a shared file system append to it, so many
  workers share one study without a database server.
* a file path: a journal file there.
* an RDB URL (``sqlite:///knee.db``, ``postgresql://user@host/db``): that database.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from osteolightning.errors import ConfigError
from osteolightning.runs import rundir


def _writable_folder(folder: Path, what: str) -> None:
    """Raise unless ``folder`` exists and a file can be created in it."""
    if not folder.exists():
        raise ConfigError(
            f"Expected {what} to be in an existing folder, but '{folder}' does not exist. "
            "Create it first (on a file system every worker can reach), or leave "
            "hydra.sweeper.storage=null to keep the study in the sweep's folder."
        )
    if not folder.is_dir():
        raise ConfigError(f"Expected {what} to be in a folder, but '{folder}' is not one.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(
            f"Expected {what} to be in a writable folder, but '{folder}' is not writable "
            f"({err.strerror or err}). Point hydra.sweeper.storage (or hydra.sweep.dir) at a "
            "folder you can write to."
        ) from err


def make_study_folder(folder: str | Path) -> Path:
    """Create the study's folder (``hydra.sweep.dir``), or raise a ConfigError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"Cannot create the study's folder hydra.sweep.dir='{folder}' ({err.strerror or err}); "
            "set hydra.sweep.dir (or paths.log_dir) to a folder you can write to."
        ) from err
    _writable_folder(folder, "the study's folder (hydra.sweep.dir)")
    return folder


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def open_storage(storage: str | None, study_folder: str | Path) -> tuple[Any, str]:
    """Open the study's storage (see the module docstring).

    Returns:
        ``(storage, where)``: an Optuna storage and its description for the log.

    Raises:
        ConfigError: a missing or read-only folder, a journal file that cannot be appended to,
            or a database that cannot be opened.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage is not None and "://" in str(storage):
        url = str(storage)
        sqlite = _sqlite_path(url)
        if sqlite is not None:
            _writable_folder(sqlite.expanduser().resolve().parent, f"the database {url}")
        try:
            return optuna.storages.RDBStorage(url), url
        except Exception as err:  # SQLAlchemy's errors: a driver, a host, a password
            raise ConfigError(
                f"Cannot open the study's database hydra.sweeper.storage={url}: {err}"
            ) from err
    path = Path(study_folder) / rundir.STUDY_JOURNAL if storage is None else Path(str(storage))
    path = path.expanduser().resolve()
    _writable_folder(path.parent, f"the study's journal file hydra.sweeper.storage='{path}'")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(
            f"Expected the study's journal file '{path}' to be writable, but it is read-only."
        )
    return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)

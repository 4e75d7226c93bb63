"""Imports that a job pays for only where they are used.

Every job of a sweep imports the framework before its first step; heavy optional libraries
(W&B, scikit-learn, statsmodels, the leaderboard's statistics) are imported where they are
used, not at start-up. Two helpers:

- :func:`lazy_exports`: a package's public names, each imported from its submodule the first
  time it is read (PEP 562 module ``__getattr__``), so importing the package (as Hydra does to
  instantiate one class of it) does not import every submodule.
- :func:`hidden_modules`: import a library while an optional dependency it probes for is hidden
  (e.g. timm imports W&B for a helper of its own training script that this framework never
  calls: about a second of CPU per job).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public ``exports`` (name → the
    submodule, relative like ``.board``, that defines it) are imported on first access.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"build": ".board"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


@contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """Within the block, ``import <name>`` raises ImportError for each of ``names`` not yet
    imported (a ``None`` entry in ``sys.modules``, Python's documented way to block an import);
    afterwards they import normally. Modules already imported are left alone."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]

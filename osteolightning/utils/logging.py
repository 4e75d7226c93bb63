"""Logging set-up: one rich console handler, rank-zero aware."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

try:
    from lightning.pytorch.utilities import rank_zero_only
except ImportError:  # an exported model runs without Lightning (osteolightning.models.portable)

    def rank_zero_only(fn: Callable[..., Any]) -> Callable[..., Any]:
        """Without Lightning there is one process: every call is rank zero's."""
        return fn


def get_logger(name: str) -> logging.Logger:
    """Return a logger whose info/warning calls are emitted on global rank zero only.

    Args:
        name: usually ``__name__``.
    """
    logger = logging.getLogger(name)
    for level in ("debug", "info", "warning", "error", "exception", "fatal", "critical"):
        setattr(logger, level, rank_zero_only(getattr(logger, level)))
    return logger

"""Logging set-up: one rich console handler, rank-zero aware."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


def get_logger(name: str) -> logging.Logger:
    """Return a logger whose info/warning calls are emitted on global rank zero only.

    Args:
        name: usually ``__name__``.
    """
    logger = logging.getLogger(name)
    for level in ("debug", "info", "warning", "error", "exception", "fatal", "critical"):
        setattr(logger, level, rank_zero_only(getattr(logger, level)))
    return logger

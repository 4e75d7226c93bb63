"""Typed errors raised at the framework's boundaries.

Every error names the offending file, row or value and says what would be accepted, so a
user can fix the input without reading the source.
"""

from __future__ import annotations


class OsteoError(Exception):
    """Base class of all errors raised by osteolightning."""


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

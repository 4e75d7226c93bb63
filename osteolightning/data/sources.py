"""Data sources: where the images and their labels come from.

A source knows how a data set is laid out on disk and turns it into a sorted list of
:class:`~osteolightning.data.sample.Sample`. It never decodes pixels (that is
:func:`osteolightning.data.io.read_image`), but it checks everything it can see cheaply, so a
malformed data set fails before training starts, with a message that names the file and says
what would be accepted. A source never silently drops data: with ``on_bad_image="skip"`` a
file it cannot use is left out and listed in :attr:`skipped` with its reason, and system files
(``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, dotfiles, ``__MACOSX``) are always left out and
always listed there.

Four layouts are supported:

- :class:`~osteolightning.data.folders.FolderSource` (in its own module): a class-folder tree
  ``ROOT/<class>/*.png|jpg|jpeg|tif|dcm``, and
  :class:`~osteolightning.data.folders.SplitFolderSource`, one per split folder;
- :class:`ManifestSource`: a CSV ``image,label[,mask][,t_score][,patient_id][,age,sex,bmi]``;
- :class:`~osteolightning.data.seg_sources.SegmentationTreeSource` (in its own module): a
  segmentation tree ``ROOT/images/*`` + ``ROOT/masks/*``.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from osteolightning.data.io import IMAGE_EXTENSIONS, check_on_bad_image, is_dicom
from osteolightning.data.sample import Sample
from osteolightning.errors import ConfigError, DataSourceError

__all__ = [
    "CLASS_ALIASES",
    "ManifestSource",
    "normalize_class_name",
    "resolve_class",
]

log = logging.getLogger(__name__)

#: Canonical class name → other names that mean the same class (all normalised).
CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "normal": ("healthy", "control", "normal_bone"),
    "osteopenia": ("osteopenic", "low_bone_mass", "low_bmd"),
    "osteoporosis": ("osteoporotic", "porosis"),
}

FOLDER_LAYOUT = "ROOT/<class>/*.png|jpg|jpeg|tif|dcm"
SEGMENTATION_LAYOUT = (
    "ROOT/images/* and ROOT/masks/*, each image with a mask of the same file name (or the same "
    "name with another extension, e.g. images/x.jpg + masks/x.png)"
)
#: File names that operating systems leave behind; always skipped, listed and warned about.
SYSTEM_FILES: frozenset[str] = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
SYSTEM_DIRS: frozenset[str] = frozenset({"__macosx"})
SYSTEM_FILE = "system file"  # the reason recorded for a skipped system file
SYSTEM_FOLDER = "system folder"
MAX_REPORTED = 10  # bad rows / files listed in one error message


def normalize_class_name(name: str) -> str:
    """Normalise a class name for matching: lower-case, stripped, spaces/hyphens → ``_``.

    Args:
        name: a folder name, CSV label or configured class name.

    Returns:
        The normalised name.

    Example:
        >>> normalize_class_name("  Low-Bone Mass ")
        'low_bone_mass'
    """
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _class_lookup(class_names: Sequence[str]) -> dict[str, int]:
    """Map every accepted spelling (names first, then aliases) to its class index."""
    if not class_names:
        raise ConfigError("Expected `class_names` to be a non-empty list of names, but got [].")
    lookup: dict[str, int] = {}
    for index, name in enumerate(class_names):
        key = normalize_class_name(name)
        if key in lookup:
            raise ConfigError(
                f"Expected `class_names` to be distinct, but '{name}' and "
                f"'{class_names[lookup[key]]}' are the same name."
            )
        lookup[key] = index
    for index, name in enumerate(class_names):
        key = normalize_class_name(name)
        for canonical, aliases in CLASS_ALIASES.items():
            if key == canonical or key in aliases:
                for spelling in (canonical, *aliases):
                    lookup.setdefault(spelling, index)  # a configured name always wins
    return lookup


def _accepted_classes(class_names: Sequence[str]) -> str:
    """Describe the accepted names, e.g. ``normal (or healthy, control), osteopenia``."""
    lookup = _class_lookup(class_names)
    parts = []
    for index, name in enumerate(class_names):
        others = [k for k, i in lookup.items() if i == index and k != normalize_class_name(name)]
        parts.append(f"{name} (or {', '.join(others)})" if others else str(name))
    return ", ".join(parts)


def resolve_class(name: str, class_names: Sequence[str]) -> int:
    """Find the index of a class by name, case-insensitively and with the usual aliases.

    Args:
        name: the name to resolve (a folder name, a CSV label).
        class_names: the run's classes, in index order.

    Returns:
        The index of ``name`` in ``class_names``.

    Raises:
        DataSourceError: ``name`` matches no class; the message suggests the closest
            names ("did you mean …") and lists the accepted ones.
        ConfigError: ``class_names`` is empty or holds the same name twice.

    Example:
        >>> resolve_class("Osteoporotic", ["normal", "osteopenia", "osteoporosis"])
        2
    """
    lookup = _class_lookup(class_names)
    key = normalize_class_name(name)
    if key in lookup:
        return lookup[key]
    raise DataSourceError(
        f"{_unknown_class(name, lookup)} Accepted class names (case-insensitive): "
        f"{_accepted_classes(class_names)}."
    )


def _unknown_class(name: str, lookup: dict[str, int]) -> str:
    """``Unknown class 'x'; did you mean 'y'?`` with the closest accepted spellings."""
    close = difflib.get_close_matches(normalize_class_name(name), list(lookup), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return f"Unknown class '{name}'{hint}"


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """Absolute, normalised path without resolving symlinks (file names stay meaningful)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def is_system_file(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(path)


def listing(paths: Sequence[Path], limit: int = MAX_REPORTED) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def report_skipped(ignored: Sequence[tuple[Path, str]], root: Path) -> list[tuple[Path, str]]:
    """The ``(path, reason)`` entries a tree source left out, sorted by path, with one warning
    naming how many and the first."""
    skipped = sorted(ignored, key=lambda item: str(item[0]))
    if skipped:
        log.warning(
            "Skipped %d file(s)/folder(s) under %s, e.g. %s (%s)", len(skipped), root, *skipped[0]
        )
    return skipped


def not_an_image(path: Path) -> str:
    """The reason recorded for a file that is neither an image nor a system file."""
    return (
        f"not an image: extension '{path.suffix}' is not one of "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))} and the file has no DICOM magic"
    )


def scan_folder(folder: Path) -> tuple[list[Path], list[tuple[Path, str]], list[Path]]:
    """Walk ``folder`` (following symlinks, each real folder once) and sort its files.

    Returns:
        ``(images, ignored system entries with their reason, other files)``, absolute paths.
    """
    images: list[Path] = []
    ignored: list[tuple[Path, str]] = []
    others: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        keep = []
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            if is_system_file(name) or name.lower() in SYSTEM_DIRS:
                ignored.append((absolute_path(sub), SYSTEM_FOLDER))
            elif os.path.realpath(sub) not in seen:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = absolute_path(os.path.join(dirpath, name))
            if is_system_file(name):
                ignored.append((path, SYSTEM_FILE))
            elif is_image_file(path):
                images.append(path)
            else:
                others.append(path)
    return images, ignored, others


class ManifestSource:
    """A CSV manifest: ``image,label[,mask][,t_score][,patient_id][,age,sex,bmi]``.

    Column names are matched case-insensitively, spaces and hyphens counting as ``_``
    (``T-Score`` is ``t_score``). ``image`` and ``mask`` are paths relative
    to the CSV's folder (absolute paths work too). ``label`` is a class name (aliases
    allowed) or an integer index into ``class_names``. ``t_score`` is a number; an empty cell
    or ``NA``/``NaN`` means unknown. Every other column (``age``, ``sex``, ``bmi``, ``bmd``,
    ``side``, ...) goes to :attr:`Sample.extra` as a string (``""`` when empty). Cells are stripped and a UTF-8
    BOM is tolerated; blank lines are skipped. Called with ``class_names=None`` (segmentation,
    where the classes are the mask's), the manifest needs no ``label`` column: every sample gets
    label ``-1`` and a ``label`` cell, if any, is kept in :attr:`Sample.extra`.

    All bad rows (up to ten listed) are reported in one error, each with its line number.
    With ``on_bad_image="skip"``, a row whose only problem is that its image or mask file is
    missing is left out instead and listed in :attr:`skipped` (the row's image path and
    ``"line N: ..."``); every other problem (label, t_score, field count) is still an error.

    Args:
        path: the CSV file.
        on_bad_image: ``"error"`` (default) or ``"skip"``.

    Attributes:
        skipped: after :meth:`samples`, ``(image path, reason)`` of every row left out,
            sorted by path.

    Raises:
        ConfigError: ``on_bad_image`` is not ``"error"`` or ``"skip"``.

    Example:
        >>> source = ManifestSource("data/manifest.csv")  # doctest: +SKIP
        >>> source.samples(["normal", "osteopenia", "osteoporosis"])[0].t_score  # doctest: +SKIP
        -1.7
    """

    REQUIRED = ("image", "label")
    KNOWN = ("image", "label", "mask", "t_score", "patient_id")
    MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null"})

    def __init__(self, path: str | os.PathLike[str], on_bad_image: str = "error") -> None:
        self.path = absolute_path(path)
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.skipped: list[tuple[Path, str]] = []

    def describe(self) -> str:
        """One line saying what this source reads."""
        return f"CSV manifest {self.path} ({','.join(self.REQUIRED)}[,mask][,t_score]...)"

    def samples(self, class_names: Sequence[str] | None) -> list[Sample]:
        """Read every row of the manifest, sorted by image path.

        Args:
            class_names: the run's classes, in index order; ``None`` reads no labels (the
                ``label`` column becomes optional and every sample gets label ``-1``).

        Returns:
            One :class:`Sample` per row, with absolute ``path`` / ``mask``.

        Raises:
            DataSourceError: the CSV is missing or empty or lacks a required column; a row
                names a missing image or mask (``"error"`` only), an empty or unknown label,
                or a t_score that is not a number; (``"skip"``) every row was skipped. The
                message names the CSV and each bad line.
        """
        self.skipped = []
        header, rows = self._read(labelled=class_names is not None)
        lookup = _class_lookup(class_names) if class_names is not None else None
        samples: list[Sample] = []
        errors: list[str] = []
        for line, row in rows:
            if len(row) != len(header):
                errors.append(
                    f"line {line}: {len(row)} field(s) but the header has {len(header)} "
                    f"(quote cells that contain commas)"
                )
                continue
            try:
                cells = dict(zip(header, row, strict=True))
                samples.append(self._sample(cells, lookup, f"'{self.path}' line {line}"))
            except _MissingFileError as exc:
                if self.on_bad_image == "skip":
                    self.skipped.append((exc.path, f"line {line}: {exc}"))
                else:
                    errors.append(f"line {line}: {exc}")
            except DataSourceError as exc:
                errors.append(f"line {line}: {exc}")
        if errors:
            shown = "\n  ".join(errors[:MAX_REPORTED])
            extra = len(errors) - MAX_REPORTED
            more = f"\n  ... and {extra} more" if extra > 0 else ""
            labels = (
                f"; labels are one of {_accepted_classes(class_names)} or an index "
                f"0..{len(class_names) - 1}"
                if class_names is not None
                else ""
            )
            raise DataSourceError(
                f"Manifest '{self.path}' has {len(errors)} bad row(s):\n  {shown}{more}\n"
                f"Paths are relative to '{self.path.parent}'{labels}.",
                details=errors,
            )
        self.skipped.sort(key=lambda item: str(item[0]))
        if self.skipped:
            log.warning(
                "Skipped %d row(s) of %s whose file is missing, e.g. %s (%s)",
                len(self.skipped),
                self.path,
                *self.skipped[0],
            )
        if not samples:
            raise DataSourceError(
                f"Manifest '{self.path}': all {len(self.skipped)} row(s) were skipped because "
                f"their files are missing, e.g. {self.skipped[0][1]}."
            )
        return sorted(samples, key=lambda s: str(s.path))

    def _read(self, labelled: bool = True) -> tuple[list[str], list[tuple[int, list[str]]]]:
        """Read the header (normalised names) and the non-blank rows with their line numbers."""
        required = self.REQUIRED if labelled else ("image",)
        if not self.path.is_file():
            what = "is not a file" if self.path.exists() else "does not exist"
            raise DataSourceError(f"Manifest '{self.path}' {what}.")
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                header = [normalize_class_name(c) for c in next(reader, [])]
                rows = [(reader.line_num, [c.strip() for c in row]) for row in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataSourceError(
                f"Manifest '{self.path}' is not a readable UTF-8 CSV file ({exc})."
            ) from exc
        rows = [(n, r) for n, r in rows if any(r)]
        expected = f"Expected a header line {','.join(required)}[,mask][,t_score][,patient_id]"
        if not any(header):
            raise DataSourceError(f"Manifest '{self.path}' is empty (line 1). {expected}.")
        duplicated = sorted({c for c in header if header.count(c) > 1})
        missing = [c for c in required if c not in header]
        if missing or duplicated:
            problem = (
                f"lacks required column(s) {', '.join(missing)}"
                if missing
                else f"repeats column(s) {', '.join(duplicated)}"
            )
            raise DataSourceError(
                f"Manifest '{self.path}' {problem} (line 1). Found columns: "
                f"{', '.join(header)}; required: {', '.join(required)}. {expected}."
            )
        if not rows:
            raise DataSourceError(f"Manifest '{self.path}' has a header but no rows (line 1).")
        return header, rows

    def _sample(
        self, cells: dict[str, str], lookup: dict[str, int] | None, where: str | None = None
    ) -> Sample:
        """Build one sample; raise a DataSourceError listing every problem of the row.

        ``lookup`` is ``None`` when labels are not read (label ``-1``, the cell kept in extra);
        ``where`` names the row (file and line) in later messages about its cells.
        """
        problems: list[str] = []
        missing: list[Path] = []
        image = self._existing(cells["image"], "image", problems, missing)
        mask = self._existing(cells.get("mask", ""), "mask", problems, missing, required=False)
        label = self._label(cells["label"], lookup, problems) if lookup is not None else -1
        known = self.KNOWN if lookup is not None else tuple(k for k in self.KNOWN if k != "label")
        t_score = self._number(cells.get("t_score", ""), "t_score", problems)
        if image is not None and missing and len(missing) == len(problems):
            raise _MissingFileError(image, "; ".join(problems))  # only files are missing
        if problems or image is None:
            raise DataSourceError("; ".join(problems))
        return Sample(
            path=image,
            label=label,
            mask=mask,
            t_score=t_score,
            patient_id=cells.get("patient_id") or None,
            extra={k: v for k, v in cells.items() if k not in known},
            where=where,
        )

    def _existing(
        self,
        cell: str,
        column: str,
        problems: list[str],
        missing: list[Path],
        required: bool = True,
    ) -> Path | None:
        if not cell:
            if required:
                problems.append(f"empty {column} path")
            return None
        path = absolute_path(self.path.parent / cell)  # an absolute cell replaces the parent
        if not path.is_file():
            problems.append(f"{column} '{cell}' does not exist (looked for '{path}')")
            missing.append(path)
        return path

    def _label(self, cell: str, lookup: dict[str, int], problems: list[str]) -> int:
        n_classes = max(lookup.values()) + 1
        if not cell:
            problems.append("empty label")
            return -1
        try:
            number = float(cell)
        except ValueError:
            key = normalize_class_name(cell)
            if key in lookup:
                return lookup[key]
            problems.append(_unknown_class(cell, lookup))
            return -1
        if number.is_integer() and 0 <= number < n_classes:
            return int(number)
        problems.append(f"label {cell} is not a class index 0..{n_classes - 1}")
        return -1

    def _number(self, cell: str, column: str, problems: list[str]) -> float | None:
        if cell.lower() in self.MISSING_VALUES:
            return None
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            problems.append(f"{column} '{cell}' is not a number (e.g. -2.7; empty if unknown)")
            return None
        return value


class _MissingFileError(DataSourceError):
    """A manifest row whose only problem is a missing image or mask file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path

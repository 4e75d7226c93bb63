"""Class-folder trees: ``ROOT/<class>/*`` (:class:`FolderSource`), and a data set published
with its split, ``ROOT/<split>/<class>/*`` (:class:`SplitFolderSource`, e.g. the
Kellgren-Lawrence grades of the OAI knees: ``train/``, ``val/``, ``test/`` folders of grade
folders ``0``..``4``, patients never in two of them)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from osteolightning.data.io import IMAGE_EXTENSIONS, check_on_bad_image
from osteolightning.data.sample import Sample
from osteolightning.data.sources import (
    FOLDER_LAYOUT,
    SYSTEM_DIRS,
    SYSTEM_FILE,
    SYSTEM_FOLDER,
    ManifestSource,
    _accepted_classes,
    _class_lookup,
    _unknown_class,
    absolute_path,
    is_system_file,
    listing,
    normalize_class_name,
    not_an_image,
    report_skipped,
    scan_folder,
)
from osteolightning.errors import ConfigError, DataSourceError

log = logging.getLogger(__name__)


class FolderSource:
    r"""A class-folder tree: ``ROOT/<class>/*.png|jpg|jpeg|tif|dcm``.

    Each folder directly under ``root`` names a class (case-insensitive, aliases allowed, see
    :data:`CLASS_ALIASES`); every image below it, in sub-folders too, belongs to that class.
    Image files are those with an extension in
    :data:`~osteolightning.data.io.IMAGE_EXTENSIONS` or the DICOM magic (pixels are not
    decoded here). System files (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, dotfiles,
    ``__MACOSX``) are always skipped with a warning and listed in :attr:`skipped` with the
    reason ``"system file"`` (``"system folder"``). Any other file that is not an image, or
    lies directly in the root, is an error with ``on_bad_image="error"``; with ``"skip"`` it is
    left out and listed in :attr:`skipped`. Nothing is dropped silently.

    Args:
        root: the tree's root folder.
        on_bad_image: ``"error"`` (default) or ``"skip"``.
        class_map: folder name → class name, for folders named otherwise (a graded data set's
            ``0``..``4`` → ``KL0``..``KL4``); other folders are matched as usual.
        patient_pattern: a regular expression whose first group, searched in each file's name,
            is the patient id (``^(\d+)`` for ``9003175L.png``): images of one patient are never
            split apart. A name it does not match is an error naming the file.

    Attributes:
        skipped: after :meth:`samples`, ``(path, reason)`` of every file or folder left out,
            sorted by path.

    Raises:
        ConfigError: ``on_bad_image`` is not ``"error"`` or ``"skip"``; a ``patient_pattern``
            that is not a regular expression with a group.

    Example:
        >>> source = FolderSource("data/knee")  # doctest: +SKIP
        >>> source.samples(["normal", "osteopenia", "osteoporosis"])[0]  # doctest: +SKIP
        Sample(path=PosixPath('/abs/data/knee/normal/N1.jpg'), label=0, ...)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        on_bad_image: str = "error",
        class_map: Mapping[str, str] | None = None,
        patient_pattern: str | None = None,
    ) -> None:
        self.root = absolute_path(root)
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.skipped: list[tuple[Path, str]] = []
        self.class_map = {str(k): str(v) for k, v in (class_map or {}).items()}
        self.patient = _patient_regex(patient_pattern)

    def describe(self) -> str:
        """One line saying what this source reads."""
        return f"class-folder tree {self.root} ({FOLDER_LAYOUT})"

    def _sample(self, path: Path, label: int) -> Sample:
        if self.patient is None:
            return Sample(path=path, label=label)
        match = self.patient.search(path.name)
        if match is None:
            raise DataSourceError(
                f"File name '{path.name}' ({path}) does not match the patient pattern "
                f"'{self.patient.pattern}' (data.source.patient_pattern): rename the file or "
                "change the pattern so that its first group is the patient id."
            )
        return Sample(path=path, label=label, patient_id=match.group(1))

    def _fail(self, problem: str) -> DataSourceError:
        return DataSourceError(f"{problem}. Expected the layout {FOLDER_LAYOUT}.")

    def samples(self, class_names: Sequence[str]) -> list[Sample]:
        """List every image of the tree with its class index, sorted by path.

        Args:
            class_names: the run's classes, in index order.

        Returns:
            One :class:`Sample` per image, with an absolute ``path`` and a ``label``.

        Raises:
            DataSourceError: the root is missing or holds no class folders or no images; a
                class folder names no known class; (``"error"`` only) a file is not an image
                or lies directly in the root.
        """
        self.skipped = []
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise self._fail(f"Image root '{self.root}' {what}")
        ignored: list[tuple[Path, str]] = []
        class_dirs: list[Path] = []
        for entry in sorted(self.root.iterdir()):
            if is_system_file(entry.name) or entry.name.lower() in SYSTEM_DIRS:
                ignored.append((entry, SYSTEM_FOLDER if entry.is_dir() else SYSTEM_FILE))
            elif entry.is_dir():
                class_dirs.append(entry)
            elif self.on_bad_image == "skip":
                ignored.append((entry, "not in a class folder (lies directly in the root)"))
            else:
                raise self._fail(
                    f"File '{entry}' lies directly in the root '{self.root}'; images must sit "
                    f"in a folder named after their class"
                )
        if not class_dirs:
            raise self._fail(f"Image root '{self.root}' holds no class folders")

        labels = self._resolve_folders(class_dirs, class_names)
        samples: list[Sample] = []
        not_images: list[Path] = []
        per_class = [0] * len(class_names)
        for folder in class_dirs:
            images, skipped, others = scan_folder(folder)
            ignored.extend(skipped)
            not_images.extend(others)
            per_class[labels[folder]] += len(images)
            samples.extend(self._sample(p, labels[folder]) for p in images)
        if not_images and self.on_bad_image == "skip":
            ignored.extend((p, not_an_image(p)) for p in not_images)
        elif not_images:
            raise DataSourceError(
                f"{len(not_images)} file(s) under '{self.root}' are not images: "
                f"{listing(not_images)}. Image files end in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case) or are DICOM; remove or "
                f"move the other files.",
                details=not_images,
            )
        self.skipped = report_skipped(ignored, self.root)
        if not samples:
            also = f" ({len(self.skipped)} file(s) skipped)" if self.skipped else ""
            raise self._fail(f"No images found under '{self.root}'{also}")
        empty = [name for name, n in zip(class_names, per_class, strict=True) if n == 0]
        if empty:
            log.warning("No images for class(es) %s under %s", ", ".join(empty), self.root)
        return sorted(samples, key=lambda s: str(s.path))

    def _resolve_folders(
        self, class_dirs: Sequence[Path], class_names: Sequence[str]
    ) -> dict[Path, int]:
        """Map each class folder to its class index; report all unknown folders at once."""
        lookup = _class_lookup(class_names)
        labels: dict[Path, int] = {}
        unknown: list[str] = []
        for folder in class_dirs:
            key = normalize_class_name(self.class_map.get(folder.name, folder.name))
            if key in lookup:
                labels[folder] = lookup[key]
            else:
                unknown.append(f"folder '{folder}': {_unknown_class(folder.name, lookup)}")
        if unknown:
            raise self._fail(
                "Unknown class folder(s) under the root:\n  "
                + "\n  ".join(unknown)
                + f"\nAccepted class folder names (case-insensitive): "
                f"{_accepted_classes(class_names)}"
            )
        by_class: dict[int, list[str]] = {}
        for folder, index in labels.items():
            by_class.setdefault(index, []).append(folder.name)
        for index, names in by_class.items():
            if len(names) > 1:
                log.warning(
                    "Folders %s all map to class '%s'; their images are merged",
                    ", ".join(names),
                    class_names[index],
                )
        return labels


def _patient_regex(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        regex = re.compile(str(pattern))
    except re.error as err:
        raise ConfigError(
            f"Expected `patient_pattern` to be a regular expression, but got {pattern!r} ({err})."
        ) from None
    if regex.groups < 1:
        raise ConfigError(
            f"Expected `patient_pattern` to have a group (the patient id), e.g. '^(\\d+)', but "
            f"got {pattern!r}."
        )
    return regex


class SplitFolderSource:
    """A data set published with its split: ``ROOT/<split folder>/<class>/*`` (each split
    folder a :class:`FolderSource` tree, with the same ``class_map`` and ``patient_pattern``).

    ``folders`` says which split folder becomes which split of the run: the default
    ``{train: train, val: test}`` trains on ``train/`` (validation carved from it, stratified and
    grouped) and tests on ``val/``; any folder it does not name (the published ``test/``) is
    never read, kept for outside measurement (``osteo-eval`` on that folder). A patient or a
    copy found in two of the folders stops the run (the given split leaks), naming the files.

    Args:
        root: the folder holding the split folders.
        folders: split folder name → ``"train"`` or ``"test"``.
        on_bad_image: ``"error"`` or ``"skip"``.
        class_map: folder name → class name (``0`` → ``KL0``).
        patient_pattern: the patient id in a file name (its first group).

    Raises:
        ConfigError: a split other than train or test, no folders.

    Example:
        >>> source = SplitFolderSource("KneeOA/ClaheDataset224", class_map={"0": "KL0"})  # doctest: +SKIP
    """

    SPLITS = ("train", "test")

    def __init__(
        self,
        root: str | os.PathLike[str],
        folders: Mapping[str, str] | None = None,
        on_bad_image: str = "error",
        class_map: Mapping[str, str] | None = None,
        patient_pattern: str | None = None,
    ) -> None:
        self.root = absolute_path(root)
        self.folders = {
            str(k): str(v) for k, v in (folders or {"train": "train", "val": "test"}).items()
        }
        bad = {f: v for f, v in self.folders.items() if v not in self.SPLITS}
        if bad or not self.folders:
            raise ConfigError(
                f"Expected argument `folders` to map split folder names to one of "
                f"{list(self.SPLITS)}, but got {self.folders!r}."
            )
        self.trees = {
            folder: FolderSource(self.root / folder, on_bad_image, class_map, patient_pattern)
            for folder in self.folders
        }
        self.skipped: list[tuple[Path, str]] = []

    def describe(self) -> str:
        """One line saying what this source reads."""
        parts = ", ".join(f"{f}/ as {s}" for f, s in self.folders.items())
        return f"split-folder tree {self.root} ({parts}; ROOT/<split>/<class>/*)"

    def samples(self, class_names: Sequence[str]) -> list[Sample]:
        """Every image of the named split folders, each with its ``split``, sorted by path.

        Raises:
            DataSourceError: a named split folder is missing, or a tree is malformed (see
                :meth:`FolderSource.samples`).
        """
        missing = [f for f in self.folders if not (self.root / f).is_dir()]
        if missing:
            found = (
                sorted(p.name for p in self.root.iterdir() if p.is_dir())
                if self.root.is_dir()
                else []
            )
            raise DataSourceError(
                f"Split folder(s) {', '.join(missing)} not found under '{self.root}' (it holds: "
                f"{', '.join(found) or 'nothing'}). Expected ROOT/<split>/<class>/*; name the "
                "folders with data.source.folders={<folder>: train|test}."
            )
        out: list[Sample] = []
        self.skipped = []
        for folder, split in self.folders.items():
            tree = self.trees[folder]
            out += [dataclasses.replace(s, split=split) for s in tree.samples(class_names)]
            self.skipped += tree.skipped
        return sorted(out, key=lambda s: str(s.path))


def source_at(root: str | os.PathLike[str], on_bad_image: str = "error") -> Any:
    """The source of a data location as given (``data.root``, ``osteo-data audit ROOT``): a CSV
    manifest for a ``.csv`` file, else a class-folder tree."""
    path = Path(root)
    if path.suffix.lower() == ".csv":
        return ManifestSource(path, on_bad_image=on_bad_image)
    return FolderSource(path, on_bad_image=on_bad_image)

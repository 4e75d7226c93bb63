"""The images a command is pointed at: files, folders and CSV manifests, nothing left out silently.

``osteo-predict`` takes any mix of image files, folders (searched recursively, following
symbolic links to folders, each real folder once, so a link that loops back is not followed
twice) and CSV manifests (their ``image`` column, relative to the CSV). Everything found that
is not used is listed with its reason (:attr:`Inputs.skipped`): system files, non-image files,
and, with ``on_bad_image="skip"``, broken links and unreadable images; with ``"error"`` those
stop the command, naming the file.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from osteolightning.data.io import check_on_bad_image
from osteolightning.data.sources import (
    absolute_path,
    is_image_file,
    normalize_class_name,
    scan_folder,
)
from osteolightning.errors import DataSourceError, ImageReadError


@dataclass
class Inputs:
    """What a command found under its arguments.

    Attributes:
        pairs: ``(root, image)`` per image, in order; ``root`` is the folder it was found under
            (its parent when named directly), so outputs can keep its path relative to it.
        labels: image → label, from a manifest's ``label`` column.
        columns: image → every cell of its manifest row, by normalised column name (``age``,
            ``sex``, ``bmi``, ``t_score``, ...), e.g. a model's covariates.
        skipped: ``(path, reason)`` of everything found and not used.
    """

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    labels: dict[Path, str] = field(default_factory=dict)
    columns: dict[Path, dict[str, str]] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def bad(self, path: Path, reason: str, on_bad_image: str) -> None:
        """Stop on a bad file (``error``) or list it (``skip``)."""
        if on_bad_image == "error":
            raise ImageReadError(path, f"{reason} Pass --on-bad-image skip to leave it out.")
        self.skipped.append((path, reason))


def broken_link(path: Path) -> bool:
    """Whether ``path`` is a symbolic link whose target does not exist."""
    return path.is_symlink() and not path.exists()


def find_inputs(paths: list[str | Path], on_bad_image: str = "error") -> Inputs:
    """The images under ``paths`` (files, folders, CSV manifests), in order.

    Raises:
        DataSourceError: a path that does not exist, a folder without images, a manifest
            without an ``image`` column or naming a missing file (with ``on_bad_image="error"``).
        ImageReadError: a broken link (with ``on_bad_image="error"``).
    """
    check_on_bad_image(on_bad_image)
    found = Inputs()
    for raw in paths:
        path = Path(raw)
        if broken_link(path):
            found.bad(
                path, f"it is a broken symbolic link (to '{os.readlink(path)}').", on_bad_image
            )
        elif path.is_file() and path.suffix.lower() == ".csv":
            _manifest(path, found, on_bad_image)
        elif path.is_file():
            found.pairs.append((absolute_path(path).parent, absolute_path(path)))
        elif path.is_dir():
            _folder(path, found, on_bad_image)
        else:
            raise DataSourceError(f"'{path}' does not exist; pass image files, folders or CSVs.")
    return found


def _folder(folder: Path, found: Inputs, on_bad_image: str) -> None:
    images, ignored, others = scan_folder(folder)
    found.skipped += ignored
    found.skipped += [(p, "not an image file") for p in others]
    usable = []
    for image in images:
        if broken_link(image):
            found.bad(
                image, f"it is a broken symbolic link (to '{os.readlink(image)}').", on_bad_image
            )
        else:
            usable.append(image)
    if not images:
        raise DataSourceError(
            f"No images under '{folder}' ({len(others)} other files); accepted: PNG, JPEG, TIFF, "
            "BMP, DICOM."
        )
    # the root as absolute as the images (a relative folder names them relative to it)
    found.pairs += [(absolute_path(folder), image) for image in usable]


def _manifest(path: Path, found: Inputs, on_bad_image: str) -> None:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if "image" not in (reader.fieldnames or []):
            raise DataSourceError(
                f"Manifest '{path}' has no `image` column; expected the header "
                f"image[,label,...], but got {reader.fieldnames}."
            )
        base = path.parent.resolve()
        for line, row in enumerate(reader, start=2):
            image = (path.parent / row["image"]).resolve()
            if not image.is_file():
                if on_bad_image == "error":
                    raise DataSourceError(
                        f"Manifest '{path}' line {line}: image '{row['image']}' does not exist. "
                        "Pass --on-bad-image skip to leave such rows out."
                    )
                found.skipped.append((image, f"manifest line {line}: the file does not exist"))
                continue
            if not is_image_file(image):
                found.skipped.append((image, f"manifest line {line}: not an image file"))
                continue
            # images outside the manifest's folder are named by their file name
            found.pairs.append((base if image.is_relative_to(base) else image.parent, image))
            if row.get("label"):
                found.labels[image] = row["label"]
            found.columns[image] = {
                normalize_class_name(k): (v or "").strip() for k, v in row.items() if k
            }

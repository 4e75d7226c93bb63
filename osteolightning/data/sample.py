"""The record every data source yields: one image and what is known about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One radiograph and its annotations.

    Attributes:
        path: absolute path of the image file.
        label: index into the run's ``class_names``; ``-1`` when the image is unlabelled.
        mask: absolute path of a label mask with the same geometry, if any.
        t_score: the T-score, if known.
        patient_id: identifier that groups images of one person (both knees, follow-ups).
            Splits never put one patient on both sides.
        extra: any further columns (bmd, side, age, sex, bmi, ...) as strings, keyed by name.
        where: where the sample was read, for error messages (a manifest's file and line:
            ``"'/data/manifest.csv' line 7"``); ``None`` for other sources.
        split: the split its source assigns (``"train"`` or ``"test"``: a data set published
            with its split, :class:`~osteolightning.data.split_folders.SplitFolderSource`);
            ``None``: the DataModule splits.
    """

    path: Path
    label: int = -1
    mask: Path | None = None
    t_score: float | None = None
    patient_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    where: str | None = field(default=None, compare=False, hash=False)
    split: str | None = field(default=None, compare=False, hash=False)

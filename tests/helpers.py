"""Test helpers shared by several test modules (file writers, a tiny Lightning fit)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    frames: int | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a minimal, valid DICOM Part 10 file holding uint16 gray or uint8 RGB pixels.

    ``pixels=None`` writes a file without pixel data; ``tags`` sets further header elements
    (e.g. identifying ones, ``{"PatientName": "DOE^JANE"}``).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "anon"
    for key, value in (tags or {}).items():
        setattr(ds, key, value)
    if pixels is not None:
        rgb = photometric == "RGB"
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
        ds.BitsAllocated = ds.BitsStored = 8 if rgb else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 3 if rgb else 1
        if rgb:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        if frames is not None:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.uint8 if rgb else np.uint16).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.save_as(path, write_like_original=False)
    return path


def write_exif_rotated_jpeg(path: Path) -> tuple[Path, np.ndarray]:
    """A (32, 64) JPEG, bright left half, tagged EXIF orientation 6 ("rotate 90° clockwise").

    Returns the path and the raw (H, W) uint8 pixels as stored.
    """
    raw = np.zeros((32, 64), dtype=np.uint8)
    raw[:, :32] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(raw).save(path, exif=exif, quality=95)
    return path, raw


def run_osteo(
    module: str, args: list[str], cwd: Path, cache_dir: Path, timeout: int = 900, **env: str
):
    """``python -m osteolightning.<module> ARGS`` in ``cwd``, with the tests' cache and W&B
    off (and ``HYDRA_FULL_ERROR`` unset): a command as a user runs it, its output captured."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "OSTEO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "disabled"}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", f"osteolightning.{module}", *args],
        cwd=cwd,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_manifest(phantom_dir: Path, out: Path, edit=None, n: int = 60) -> Path:
    """A copy of the tiny phantom's manifest (absolute paths) with ``edit(row_index, row)``
    applied to each row."""
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    for i, row in enumerate(rows):
        row["image"] = str(phantom_dir / row["image"])
        row["mask"] = str(phantom_dir / row["mask"])
        if edit is not None:
            edit(i, row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def write_graded_tree(phantom_dir: Path, root: Path, leak: bool = False) -> Path:
    """The tiny phantom's knees as ROOT/{train,val,test}/{0,1,2}/<patient><L|R>.png: each
    patient (both knees) in one split folder, by patient number (or, with ``leak``, one
    patient in two folders)."""
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    patients = sorted({r["patient_id"] for r in rows})
    number = {p: 9000000 + i for i, p in enumerate(patients)}
    for row in rows:
        k = number[row["patient_id"]] - 9000000
        split = "train" if k % 5 < 3 else ("val" if k % 5 == 3 else "test")
        grade = str(["normal", "osteopenia", "osteoporosis"].index(row["label"]))
        side = "L" if row["side"].lower().startswith("l") else "R"
        if leak and k == 0 and side == "R":
            split = "val"  # one knee of patient 0 in val, the other in train
        out = root / split / grade / f"{number[row['patient_id']]}{side}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(phantom_dir / row["image"], out)
    return root


def fit_boring_model(root: Path, callbacks: list[Any], max_epochs: int = 2, **options: Any) -> Any:
    """Fit Lightning's ``BoringModel`` on the CPU with ``callbacks``: ``max_epochs`` epochs of
    4 training steps and 1 validation batch, no logger, checkpoints or progress bar of its own;
    ``options`` (``max_steps``, ``limit_train_batches`` ...) go to the ``Trainer``.

    Returns:
        The trainer.
    """
    import lightning as L
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    settings = {"limit_train_batches": 4, "limit_val_batches": 1, "accelerator": "cpu", **options}
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        # only the checkpoint callbacks given (Lightning adds none of its own when one is)
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )
    trainer.fit(BoringModel())
    return trainer

"""Reading radiographs from disk into one normalised grayscale array.

Every reader in the framework goes through :func:`read_image`, so a PNG export, a camera JPEG
and a DICOM straight from the modality all arrive as the same thing: a finite ``float32``
array of shape ``(H, W)`` with values in ``[0, 1]``, bone bright.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps

try:  # pydicom >= 3
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
    )

from osteolightning.errors import ImageReadError

__all__ = ["ACCEPTED", "IMAGE_EXTENSIONS", "is_dicom", "read_image"]

#: File extensions (lower-case, with the dot) that are read as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})

#: What :func:`read_image` accepts, quoted in every error message.
ACCEPTED = (
    "Accepted: PNG, JPEG, TIFF, BMP (8/16-bit grayscale, RGB, palette) and DICOM "
    "(single-frame MONOCHROME1/2, RGB, palette)."
)

# PIL plugins tried on a non-DICOM file; the content decides, not the extension.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # JPEG covers MPO
# 8-bit modes read as one gray channel, and 8-bit colour modes reduced to luminance.
_GRAY8_MODES = frozenset({"1", "L", "LA", "La"})
_COLOR8_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# ITU-R 601-2 luma weights, the ones PIL uses for ``convert("L")``.
_LUMA = np.array([0.299, 0.587, 0.114])
_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DICOM_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_*", "PALETTE COLOR")


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Tell whether ``path`` is a DICOM file, by extension or by content.

    A file is DICOM if its extension is ``.dcm`` / ``.dicom`` (any case) or if it carries the
    ``DICM`` magic at byte 128 of the Part 10 preamble; extension-less DICOM files are common
    in PACS exports.

    Args:
        path: the file to check. Unreadable or missing files are not DICOM.

    Returns:
        ``True`` if the file is (claims to be) DICOM.

    Example:
        >>> is_dicom("scan.DCM")
        True
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a radiograph as a normalised 2-D grayscale array.

    Rules, by format:

    - **PNG, JPEG, TIFF, BMP** (read with PIL, the file content deciding the decoder). The
      EXIF orientation is applied (``ImageOps.exif_transpose``), so a rotated camera JPEG
      comes out upright. A truncated or corrupt file raises; truncated files are never
      padded. Modes:

      - ``1``, ``L``, ``LA`` (alpha dropped): 8-bit gray, divided by 255;
      - ``P`` (palette), ``RGB``, ``RGBA`` (alpha dropped), ``CMYK``, ``YCbCr``: converted
        to RGB, then to luminance with the ITU-R 601 weights ``0.299 R + 0.587 G + 0.114 B``
        (as PIL's ``L``), divided by 255;
      - ``I;16*`` (16-bit PNG and TIFF), and ``I`` from a PNG (older Pillow's 16-bit
        gray): divided by 65535, so 65535 maps to 1.0 and a 12-bit image stays dark;
      - ``I`` (32-bit integer) and ``F`` (float): min-max scaled to ``[0, 1]``.

      Multi-page TIFF and animated PNG are rejected.
    - **DICOM** (read with pydicom; by extension or by the ``DICM`` magic): the modality LUT
      (Rescale Slope / Intercept) and then the VOI LUT or window (Window Center / Width) are
      applied; MONOCHROME1 is inverted so bone is bright as in MONOCHROME2; RGB, YBR and
      PALETTE COLOR are reduced to luminance; the result is min-max scaled to ``[0, 1]``.
      Files without pixel data and multi-frame files (NumberOfFrames > 1) are rejected.

    In every case a constant image comes out as zeros, and any NaN or infinity raises.

    Args:
        path: the image file.

    Returns:
        ``float32`` array of shape ``(H, W)``, C-contiguous, values in ``[0, 1]``, finite.

    Raises:
        ImageReadError: the file is missing, empty, of an unknown extension, truncated,
            corrupt, of an unsupported mode or photometric interpretation, multi-frame, or
            holds non-finite values. The message names the file and what is accepted.

    Example:
        >>> img = read_image("knee.png")  # doctest: +SKIP
        >>> img.shape, img.dtype  # doctest: +SKIP
        ((1024, 1024), dtype('float32'))
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ImageReadError(path, f"the path {what}. {ACCEPTED}")
    if path.stat().st_size == 0:
        raise ImageReadError(path, f"the file is empty (0 bytes). {ACCEPTED}")
    if is_dicom(path):
        arr = _read_dicom(path)
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        arr = _read_pil(path)
    else:
        raise ImageReadError(
            path,
            f"unknown extension '{path.suffix}' and no DICOM 'DICM' magic; expected one of "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}. {ACCEPTED}",
        )
    if not np.isfinite(arr).all():
        raise ImageReadError(
            path, f"the image holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s). {ACCEPTED}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Scale to ``[0, 1]`` by the array's own range; a constant array becomes zeros.

    Non-finite inputs are returned unchanged so the caller's check can name them.
    """
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        return arr
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB → ``(H, W)`` ITU-R 601 luminance, same scale as the input."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def _read_pil(path: Path) -> np.ndarray:
    """Decode a PNG / JPEG / TIFF / BMP into ``(H, W)`` float64 in ``[0, 1]``."""
    try:
        with Image.open(path, formats=_PIL_FORMATS) as img:
            if img.format not in ("JPEG", "MPO") and getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(
                    path,
                    f"the {img.format} file holds {img.n_frames} frames; only single-frame "
                    f"images are read. {ACCEPTED}",
                )
            img.load()  # decode now, so a truncated file raises here
            img = ImageOps.exif_transpose(img)
            return _pil_to_array(path, img)
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageReadError(
            path,
            f"the file is truncated or corrupt, or not an image "
            f"({type(exc).__name__}: {exc}). {ACCEPTED}",
        ) from exc


def _pil_to_array(path: Path, img: Image.Image) -> np.ndarray:
    """Apply the mode rules of :func:`read_image` to a loaded PIL image."""
    mode = img.mode
    if mode in _GRAY8_MODES:
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    if mode in _COLOR8_MODES:
        return _luminance(np.asarray(img.convert("RGB"))) / 255.0
    if mode.startswith("I;16"):
        arr = np.asarray(img)
        return arr / 65535.0 if arr.dtype.kind == "u" else _minmax(arr)
    if mode == "I" and img.format == "PNG":  # Pillow < 10.4 opens 16-bit gray PNG as "I"
        return np.asarray(img, dtype=np.float64) / 65535.0
    if mode in ("I", "F"):
        return _minmax(np.asarray(img))
    raise ImageReadError(
        path,
        f"unsupported image mode '{mode}'; accepted modes: 1, L, LA, P, RGB, RGBA, CMYK, "
        f"I;16, I, F. {ACCEPTED}",
    )


def _read_dicom(path: Path) -> np.ndarray:
    """Decode a single-frame DICOM into ``(H, W)`` float64 in ``[0, 1]``, bone bright."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors, ...
        raise ImageReadError(
            path, f"not a readable DICOM file ({type(exc).__name__}: {exc}). {ACCEPTED}"
        ) from exc
    if not any(k in ds for k in _DICOM_PIXEL_KEYWORDS):
        raise ImageReadError(
            path, f"the DICOM file has no pixel data (e.g. a report or SR object). {ACCEPTED}"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path,
            f"the DICOM file is multi-frame (NumberOfFrames={frames}); only single-frame "
            f"images are read. {ACCEPTED}",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        arr = ds.pixel_array
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            arr = apply_modality_lut(arr, ds)
            arr = apply_voi_lut(arr, ds).astype(np.float64)
            if photometric == "MONOCHROME1":  # low values are white: flip to bone-bright
                arr = -arr
        elif photometric == "PALETTE COLOR":
            arr = _luminance(apply_color_lut(arr, ds))
        elif photometric == "RGB" or photometric.startswith("YBR"):
            arr = _luminance(arr)  # pydicom converts YBR to RGB when decoding
        else:
            raise ImageReadError(
                path,
                f"unsupported PhotometricInterpretation '{photometric}'; accepted: "
                f"{', '.join(_DICOM_PHOTOMETRIC)}. {ACCEPTED}",
            )
    except ImageReadError:
        raise
    except Exception as exc:  # missing decoder for a compressed syntax, bad LUT, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(
            path,
            f"cannot decode the DICOM pixel data (transfer syntax {syntax}; "
            f"{type(exc).__name__}: {exc}). Compressed syntaxes need a pydicom decoder plugin "
            f"such as pylibjpeg. {ACCEPTED}",
        ) from exc
    if arr.ndim != 2:
        raise ImageReadError(
            path,
            f"the DICOM pixel data has shape {arr.shape}, expected (rows, columns). {ACCEPTED}",
        )
    return _minmax(arr)

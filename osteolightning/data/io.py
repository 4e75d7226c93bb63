"""Reading radiographs from disk into one normalised grayscale array.

Every reader in the framework goes through :func:`read_image`, so a PNG export, a camera JPEG
and a DICOM straight from the modality all arrive as the same thing: a finite ``float32``
array of shape ``(H, W)`` with values in ``[0, 1]``, bone bright.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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

from osteolightning.errors import ConfigError, ImageReadError

__all__ = [
    "ACCEPTED",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "ON_BAD_IMAGE",
    "STANDARD_DEPTHS",
    "ImageInfo",
    "check_on_bad_image",
    "is_dicom",
    "read_image",
    "read_image_info",
]

#: File extensions (lower-case, with the dot) that are read as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})

#: Smallest accepted height and width, in pixels: below this there is no anatomy to learn.
MIN_IMAGE_SIDE: Final = 32
#: Largest accepted image, in pixels (30000 x 30000): a legitimate 8000 x 8000 radiograph
#: decodes, an absurd header (a decompression bomb) is refused before any pixel is decoded.
MAX_IMAGE_PIXELS: Final = 30_000 * 30_000
#: What to do with a file that cannot be used: raise an error naming it, or skip and list it.
ON_BAD_IMAGE: Final = ("error", "skip")
#: Bit depths a 16-bit image without a PNG ``sBIT`` chunk is scaled by: the smallest that holds
#: its maximum (detectors store 10, 12, 14 or 16 bits in a 16-bit file).
STANDARD_DEPTHS: Final = (10, 12, 14, 16)

#: What :func:`read_image` accepts, quoted in every error message.
ACCEPTED = (
    "Accepted: PNG, JPEG, TIFF, BMP (8/16-bit grayscale, RGB, palette) and DICOM "
    f"(single-frame MONOCHROME1/2, RGB, palette), at least {MIN_IMAGE_SIDE} pixels on each "
    f"side and at most {MAX_IMAGE_PIXELS:,} pixels in all."
)

# PIL's own bomb check (a warning above MAX_IMAGE_PIXELS, an error above twice that) runs at
# ``Image.open``; lift it to our limit, never lower it, and refuse anything above ours
# ourselves with a message that names the file.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# PIL formats read from a non-DICOM file; the content decides, not the extension.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # and MPO, a JPEG with extra frames
# 8-bit modes read as one gray channel, and 8-bit colour modes reduced to luminance.
_GRAY8_MODES = frozenset({"1", "L", "LA", "La"})
_COLOR8_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# ITU-R 601-2 luma weights, the ones PIL uses for ``convert("L")``.
_LUMA = np.array([0.299, 0.587, 0.114])
_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DICOM_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_*", "PALETTE COLOR")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    """How :func:`read_image_info` turned a file into ``[0, 1]`` (for the data summary and audit).

    Attributes:
        height: rows of the image after its EXIF orientation.
        width: columns.
        bits: bits per pixel value in the file: 8, 16, 32 (``I``, ``F``), or a DICOM's
            ``BitsStored``.
        scale_bits: the depth the values were divided by (``2**scale_bits - 1``); 0 where the
            image was min-max scaled (DICOM, 32-bit, float, signed 16-bit).
        depth_from: where ``scale_bits`` came from: ``"file"`` (8 bits, or a 16-bit image whose
            maximum needs more than 14 bits), ``"sBIT"`` (the PNG's significant-bits chunk),
            ``"range"`` (the image's maximum rounded up to one of :data:`STANDARD_DEPTHS`), or
            ``"min-max"``.
    """

    height: int
    width: int
    bits: int
    scale_bits: int
    depth_from: str

    @property
    def partial_depth(self) -> bool:
        """A 16-bit image whose values use fewer bits (scaled by its own depth, not 65535)."""
        return self.bits == 16 and 0 < self.scale_bits < 16


def check_on_bad_image(value: str) -> str:
    """Validate an ``on_bad_image`` policy (one of :data:`ON_BAD_IMAGE`).

    Args:
        value: ``"error"`` (stop at the first bad file, naming it) or ``"skip"`` (leave bad
            files out and list each with its reason).

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: ``value`` is not one of :data:`ON_BAD_IMAGE`.

    Example:
        >>> check_on_bad_image("skip")
        'skip'
    """
    if value not in ON_BAD_IMAGE:
        raise ConfigError(
            f"Expected argument `on_bad_image` to be one of {list(ON_BAD_IMAGE)}, but got "
            f"{value!r}."
        )
    return value


def _has_dicom_magic(path: Path) -> bool:
    """``DICM`` at byte 128: the Part 10 preamble, whatever the file is called."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


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
    return path.suffix.lower() in DICOM_EXTENSIONS or _has_dicom_magic(path)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a radiograph as a normalised 2-D grayscale array (:func:`read_image_info`'s array).

    Args:
        path: the image file.

    Returns:
        ``float32`` array of shape ``(H, W)``, C-contiguous, values in ``[0, 1]``, finite.

    Raises:
        ImageReadError: see :func:`read_image_info`.
    """
    return read_image_info(path)[0]


def read_image_info(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """:func:`_read_image_info`, with a file that the system cannot open (permissions, a broken
    link, a folder named like an image) an :class:`~osteolightning.errors.ImageReadError`
    naming it, as is any other unreadable file."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageReadError(path, f"it is a broken symbolic link (to '{os.readlink(path)}').")
    try:
        return _read_image_info(path)
    except ImageReadError:
        raise
    except OSError as err:
        raise ImageReadError(
            path, f"the file cannot be opened ({err.strerror or err}). {ACCEPTED}"
        ) from err


def _read_image_info(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """Read a radiograph as a normalised 2-D grayscale array, and say how it was scaled.

    The content decides the decoder, never the name: a file with the DICOM ``DICM`` magic is
    read as DICOM, a file PIL identifies as PNG, JPEG, TIFF or BMP is read with PIL (a PNG
    named ``.jpg``, a DICOM named ``.png`` and a PNG with no or an unknown extension all
    read), and only a file that is neither falls back to pydicom when it is named
    ``.dcm`` / ``.dicom`` (DICOM without the 128-byte preamble). Anything else (GIF, WebP,
    text, ``.DS_Store``) raises, naming the format found when PIL knows it.

    Rules, by format:

    - **PNG, JPEG, TIFF, BMP** (read with PIL). The EXIF orientation is applied
      (``ImageOps.exif_transpose``), so a rotated camera JPEG comes out upright. A truncated
      or corrupt file raises; truncated files are never padded. Modes:

      - ``1``, ``L``, ``LA`` (alpha dropped): 8-bit gray, divided by 255;
      - ``P`` (palette), ``RGB``, ``RGBA`` (alpha dropped), ``CMYK``, ``YCbCr``: converted
        to RGB, then to luminance with the ITU-R 601 weights ``0.299 R + 0.587 G + 0.114 B``
        (as PIL's ``L``), divided by 255;
      - ``I;16*`` (16-bit PNG and TIFF), and ``I`` from a PNG (older Pillow's 16-bit
        gray): divided by ``2**b - 1`` for the image's bit depth ``b``: the PNG's ``sBIT``
        chunk where it has one (and the values fit it), else the smallest of
        :data:`STANDARD_DEPTHS` (10, 12, 14, 16) that holds the image's maximum. So 12-bit
        detector data in a 16-bit file (maximum 4095) spans ``[0, 1]`` instead of
        ``[0, 0.06]`` (which uint8 caching would leave with 16 gray levels), and images of one
        depth stay comparable; data using more than 14 bits is divided by 65535 as before;
      - ``I`` (32-bit integer) and ``F`` (float): min-max scaled to ``[0, 1]``.

      Multi-page TIFF and animated PNG are rejected. Images of more than
      :data:`MAX_IMAGE_PIXELS` pixels are refused from their header, before decoding.
    - **DICOM** (read with pydicom): the modality LUT (Rescale Slope / Intercept) and then
      the VOI LUT or window (Window Center / Width) are applied; MONOCHROME1 is inverted so
      bone is bright as in MONOCHROME2; RGB, YBR and PALETTE COLOR are reduced to luminance;
      the result is min-max scaled to ``[0, 1]``. Files without pixel data and multi-frame
      files (NumberOfFrames > 1) are rejected.

    In every case a constant image comes out as zeros, any NaN or infinity raises, and an
    image less than :data:`MIN_IMAGE_SIDE` pixels high or wide raises. Arrays are kept in
    ``float32`` for 8-bit images, so an 8000 x 8000 radiograph needs about 0.5 GB at peak.

    Args:
        path: the image file.

    Returns:
        ``(array, info)``: ``float32`` of shape ``(H, W)``, C-contiguous, values in ``[0, 1]``,
        finite; and the :class:`ImageInfo` (size, bit depth, how it was scaled).

    Raises:
        ImageReadError: the file is missing, empty, not of an accepted format, truncated,
            corrupt, of an unsupported mode or photometric interpretation, multi-frame, too
            small, too large, or holds non-finite values. The message names the file and what
            is accepted.

    Example:
        >>> img, info = read_image_info("knee_12bit.png")  # doctest: +SKIP
        >>> img.shape, img.dtype, info.scale_bits  # doctest: +SKIP
        ((1024, 1024), dtype('float32'), 12)
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ImageReadError(path, f"the path {what}. {ACCEPTED}")
    if path.stat().st_size == 0:
        raise ImageReadError(path, f"the file is empty (0 bytes). {ACCEPTED}")
    if _has_dicom_magic(path):
        arr, depth = _read_dicom(path)
    else:
        try:
            arr, depth = _read_pil(path)
        except _NotAnImageError as exc:
            if path.suffix.lower() not in DICOM_EXTENSIONS:
                raise ImageReadError(path, f"{exc} {ACCEPTED}") from None
            arr, depth = _read_dicom(path)  # DICOM without the Part 10 preamble
    if not np.isfinite(arr).all():
        raise ImageReadError(
            path, f"the image holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s). {ACCEPTED}"
        )
    height, width = arr.shape
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            path,
            f"the image is too small ({height}x{width} pixels, height x width); the minimum is "
            f"{MIN_IMAGE_SIDE} pixels on each side. {ACCEPTED}",
        )
    return np.ascontiguousarray(arr, dtype=np.float32), ImageInfo(height, width, *depth)


#: ``(bits, scale_bits, depth_from)`` of :class:`ImageInfo`.
_Depth = tuple[int, int, str]


class _NotAnImageError(Exception):
    """PIL found no accepted image format in the file (the message says what it found)."""


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


def _luminance8(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → ``(H, W)`` float32 luminance in ``[0, 1]``, one channel at a
    time, so a large image never holds a float copy of all three channels."""
    out = rgb[..., 0] * np.float32(_LUMA[0] / 255.0)  # (H, W) float32
    out += rgb[..., 1] * np.float32(_LUMA[1] / 255.0)
    out += rgb[..., 2] * np.float32(_LUMA[2] / 255.0)
    return out


def _open_pil(path: Path) -> Image.Image:
    """Open (header only) an accepted PIL image, or raise :class:`_NotAnImageError`."""
    try:
        img = Image.open(path)  # every plugin, so the message can name what the file is
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path,
            f"the image is absurdly large, refused as a decompression bomb ({exc}). {ACCEPTED}",
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise _NotAnImageError(
            f"the content is not an image of an accepted format (extension '{path.suffix}', "
            f"{type(exc).__name__})."
        ) from None
    if img.format not in _PIL_FORMATS and img.format != "MPO":
        img.close()
        raise _NotAnImageError(
            f"the content is a {img.format} image (extension '{path.suffix}'), which is not an "
            f"accepted format."
        )
    return img


def _read_pil(path: Path) -> tuple[np.ndarray, _Depth]:
    """Decode a PNG / JPEG / TIFF / BMP into ``(H, W)`` float in ``[0, 1]`` and its depth."""
    with _open_pil(path) as img:
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageReadError(
                path,
                f"the image is too large ({height}x{width} = {width * height:,} pixels); the "
                f"limit is {MAX_IMAGE_PIXELS:,} pixels, so it is refused before decoding. "
                f"{ACCEPTED}",
            )
        try:
            if img.format not in ("JPEG", "MPO") and getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(
                    path,
                    f"the {img.format} file holds {img.n_frames} frames; only single-frame "
                    f"images are read. {ACCEPTED}",
                )
            img.load()  # decode now, so a truncated file raises here
            ImageOps.exif_transpose(img, in_place=True)  # no copy of a large image
            return _pil_to_array(path, img)
        except ImageReadError:
            raise
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
            raise ImageReadError(
                path,
                f"the {img.format} file is truncated or corrupt "
                f"({type(exc).__name__}: {exc}). {ACCEPTED}",
            ) from exc


def _png_sbit(path: Path) -> int | None:
    """The significant bits of a gray PNG's samples (its ``sBIT`` chunk), or ``None``.

    ``sBIT`` precedes the image data, so only the chunk headers before ``IDAT`` are read.
    """
    try:
        with path.open("rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return None
            while len(header := fh.read(8)) == 8:
                length, kind = struct.unpack(">I4s", header)
                if kind == b"sBIT":
                    data = fh.read(length)
                    return data[0] if 1 <= len(data) <= 2 else None  # gray (+ alpha)
                if kind in (b"IDAT", b"IEND"):
                    return None
                fh.seek(length + 4, os.SEEK_CUR)  # data and CRC
    except OSError:
        return None
    return None


def _scale_16bit(path: Path, arr: np.ndarray, fmt: str | None) -> tuple[np.ndarray, _Depth]:
    """Unsigned 16-bit values → ``[0, 1]``, divided by ``2**b - 1`` for the image's depth ``b``:
    the PNG's ``sBIT`` when its values fit it, else the smallest standard depth that holds its
    maximum (see :func:`read_image_info`)."""
    peak = int(arr.max()) if arr.size else 0
    sbit = _png_sbit(path) if fmt == "PNG" else None
    if sbit is not None and peak <= (1 << sbit) - 1:
        bits, source = sbit, "sBIT" if sbit < 16 else "file"
    else:
        bits = next(b for b in STANDARD_DEPTHS if peak <= (1 << b) - 1)
        source = "range" if bits < 16 else "file"
    return arr / float((1 << bits) - 1), (16, bits, source)


def _pil_to_array(path: Path, img: Image.Image) -> tuple[np.ndarray, _Depth]:
    """Apply the mode rules of :func:`read_image_info` to a loaded PIL image."""
    mode = img.mode
    if mode in _GRAY8_MODES:
        gray = img if mode == "L" else img.convert("L")  # convert() always copies
        arr = np.asarray(gray, dtype=np.float32)  # (H, W)
        return np.divide(arr, np.float32(255.0), out=arr), (8, 8, "file")
    if mode in _COLOR8_MODES:
        rgb = img if mode == "RGB" else img.convert("RGB")
        return _luminance8(np.asarray(rgb)), (8, 8, "file")
    if mode.startswith("I;16"):
        arr = np.asarray(img)
        if arr.dtype.kind == "u":
            return _scale_16bit(path, arr, img.format)
        return _minmax(arr), (16, 0, "min-max")
    if mode == "I" and img.format == "PNG":  # Pillow < 10.4 opens 16-bit gray PNG as "I"
        return _scale_16bit(path, np.asarray(img, dtype=np.float64), img.format)
    if mode in ("I", "F"):
        return _minmax(np.asarray(img)), (32, 0, "min-max")
    raise ImageReadError(
        path,
        f"unsupported image mode '{mode}'; accepted modes: 1, L, LA, P, RGB, RGBA, CMYK, "
        f"I;16, I, F. {ACCEPTED}",
    )


def _read_dicom(path: Path) -> tuple[np.ndarray, _Depth]:
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
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
    return _minmax(arr), (bits, 0, "min-max")

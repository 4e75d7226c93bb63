"""Segmentation masks: reading, checking and letterboxing them exactly like their images.

A mask is read into a ``(H, W)`` uint8 array of class indices ``0..num_classes-1`` by
:func:`read_mask`, in one of the :data:`MASK_FORMATS`:

- ``label``: each pixel value *is* the class index. Accepted modes: ``L`` and ``1`` (8-bit
  gray), ``P`` (the palette *indices* are the classes, whatever colours the palette shows),
  ``I;16`` (16-bit gray) and an ``RGB`` image whose three channels are equal everywhere.
- ``binary``: foreground (class 1) where the image converted to 8-bit gray is above a threshold
  (``Image.convert("L") > threshold``; a 16-bit image is scaled to 8 bits first), background
  (class 0) elsewhere. Any 8/16-bit gray, RGB or palette image is accepted; ``num_classes``
  must be 2. This is the usual export of annotation tools (0/255 PNGs, black/white palettes).

As :func:`osteolightning.data.io.read_image` does for images, the EXIF orientation of a mask is
applied. :func:`letterbox_mask` pads and resizes a mask with the exact geometry of
:func:`osteolightning.data.cache.letterbox_resize` (nearest-neighbour, pixel centres aligned),
so a cached image and its mask stay aligned pixel for pixel, and :func:`unletterbox` maps a
predicted mask back to the original resolution. :func:`image_shape` gives the ``(H, W)`` that
:func:`~osteolightning.data.io.read_image` would return, from the file's header where possible.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import pydicom
from PIL import Image, ImageOps

from osteolightning.data.io import DICOM_EXTENSIONS, _has_dicom_magic
from osteolightning.errors import ConfigError, DataSourceError, ImageReadError, shorten

__all__ = [
    "MASK_ACCEPTED",
    "MASK_FORMATS",
    "MaskReadError",
    "check_mask_format",
    "check_mask_threshold",
    "image_shape",
    "letterbox_mask",
    "read_foreground",
    "read_mask",
    "read_mask_info",
    "unletterbox",
]

#: How pixel values become classes: ``binary`` (threshold) or ``label`` (value = class index).
MASK_FORMATS: Final = ("binary", "label")

#: What :func:`read_mask` accepts, quoted in its error messages.
MASK_ACCEPTED = (
    "Masks are PNG, TIFF, BMP or JPEG files (lossless PNG recommended); mask_format=label reads "
    "pixel values as class indices (modes L, 1, P (palette indices), I;16, or RGB with equal "
    "channels), mask_format=binary thresholds the gray level (any 8/16-bit gray, RGB or palette "
    "image)."
)

_MASK_PIL_FORMATS = ("PNG", "TIFF", "BMP", "JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transposed or rotated by 90 degrees
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_METADATA_CHUNKS = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})


class MaskReadError(ImageReadError):
    """A mask file cannot be read as a mask of the run's classes.

    Args:
        path: the mask file.
        reason: what is wrong with it and what would be accepted.
    """

    def __init__(self, path: object, reason: str) -> None:  # noqa: D107
        self.path = str(path)
        self.reason = reason
        DataSourceError.__init__(self, f"Cannot read mask '{self.path}': {reason}")


def check_mask_format(mask_format: str, num_classes: int) -> str:
    """Validate a ``mask_format`` against the number of classes.

    Args:
        mask_format: one of :data:`MASK_FORMATS`.
        num_classes: the number of mask classes, background included.

    Returns:
        ``mask_format`` unchanged.

    Raises:
        ConfigError: unknown format, fewer than two classes, more than 256 classes (masks are
            stored as uint8), or ``binary`` with other than two classes.

    Example:
        >>> check_mask_format("binary", 2)
        'binary'
    """
    if mask_format not in MASK_FORMATS:
        raise ConfigError(
            f"Expected argument `mask_format` to be one of {list(MASK_FORMATS)}, but got "
            f"{mask_format!r}."
        )
    if not isinstance(num_classes, int) or not 2 <= num_classes <= 256:
        raise ConfigError(
            f"Expected the number of mask classes (background included) to be an integer in "
            f"2..256, but got {num_classes!r}."
        )
    if mask_format == "binary" and num_classes != 2:
        raise ConfigError(
            f"mask_format=binary gives two classes (background, foreground), but "
            f"{num_classes} class names are configured; use mask_format=label for label masks "
            f"or configure two class names, e.g. [background, bone]."
        )
    return mask_format


def check_mask_threshold(threshold: int) -> int:
    """Validate a binary-mask threshold: an integer gray level in 0..254.

    Args:
        threshold: pixels whose 8-bit gray level is above it are foreground.

    Returns:
        ``threshold`` unchanged.

    Raises:
        ConfigError: ``threshold`` is not an integer in 0..254.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < 255:
        raise ConfigError(
            f"Expected argument `mask_threshold` to be an integer in 0..254, but got {threshold!r}."
        )
    return threshold


def _open_mask(path: Path) -> Image.Image:
    """Open, decode and EXIF-orient a single-frame mask image with PIL."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise MaskReadError(path, f"the path {what}. {MASK_ACCEPTED}")
    if path.stat().st_size == 0:
        raise MaskReadError(path, f"the file is empty (0 bytes). {MASK_ACCEPTED}")
    try:
        img = Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MaskReadError(
            path,
            f"the content is not an image of an accepted format ({type(exc).__name__}). "
            f"{MASK_ACCEPTED}",
        ) from None
    try:
        if img.format not in _MASK_PIL_FORMATS:
            raise MaskReadError(
                path, f"the content is a {img.format} image, not an accepted one. {MASK_ACCEPTED}"
            )
        if img.format not in ("JPEG", "MPO") and getattr(img, "n_frames", 1) > 1:
            raise MaskReadError(
                path, f"the file holds {img.n_frames} frames; a mask is a single frame."
            )
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except MaskReadError:
        img.close()
        raise
    except Exception as exc:  # truncated or corrupt: OSError, SyntaxError, EOFError, ...
        img.close()
        raise MaskReadError(
            path,
            f"the {img.format} file is truncated or corrupt ({type(exc).__name__}: {exc}). "
            f"{MASK_ACCEPTED}",
        ) from exc
    return img


def _gray8(img: Image.Image) -> np.ndarray:
    """The image as 8-bit gray: ``convert("L")``, 16-bit values scaled by 255 / 65535."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        values = np.asarray(img).astype(np.float64)
        return np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    if img.mode in ("I", "F"):
        raise ValueError(f"mode '{img.mode}' (32-bit) is not a mask mode")
    with warnings.catch_warnings():  # "palette images with transparency ..." is harmless here
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(img.convert("L"))


def _label_values(path: Path, img: Image.Image) -> np.ndarray:
    """Raw class indices of a label mask (``(H, W)`` uint8 or uint16)."""
    mode = img.mode
    if mode in ("L", "P"):
        return np.asarray(img)  # P: the palette indices
    if mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("LA", "PA"):
        return np.asarray(img)[..., 0]
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        return np.asarray(img).astype(np.uint16)  # "I": older Pillow's 16-bit gray PNG
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img)[..., :3]
        differ = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])
        if differ.any():
            ys, xs = np.nonzero(differ)
            colours = np.unique(rgb[differ].reshape(-1, 3), axis=0)[:5]
            shown = ", ".join(str(tuple(int(v) for v in c)) for c in colours)
            raise MaskReadError(
                path,
                f"an RGB colour mask (e.g. pixel (row {ys[0]}, column {xs[0]}); colours "
                f"{shown}) cannot be read as class indices. Save label masks as 8-bit gray or "
                f"palette PNGs whose values are the class indices, or use mask_format=binary "
                f"for a two-class mask.",
            )
        return rgb[..., 0]
    raise MaskReadError(
        path,
        f"unsupported mode '{mode}' for mask_format=label; accepted modes: L, 1, P, I;16, "
        f"RGB with equal channels. {MASK_ACCEPTED}",
    )


def read_mask(
    path: str | os.PathLike[str],
    num_classes: int,
    mask_format: str = "label",
    threshold: int = 127,
) -> np.ndarray:
    """Read a segmentation mask as class indices (:func:`read_mask_info`'s array).

    Args:
        path: the mask file.
        num_classes: number of mask classes, background (class 0) included.
        mask_format: ``"label"`` or ``"binary"``; see :func:`read_mask_info`.
        threshold: gray level (0..254) above which a ``binary`` mask pixel is foreground.

    Returns:
        ``(H, W)`` uint8 array with values in ``0..num_classes-1``, EXIF orientation applied.

    Raises:
        MaskReadError: see :func:`read_mask_info`.
        ConfigError: bad ``mask_format``, ``num_classes`` or ``threshold``.

    Example:
        >>> mask = read_mask("masks/K00000.png", num_classes=5)  # doctest: +SKIP
        >>> mask.dtype, int(mask.max()) < 5  # doctest: +SKIP
        (dtype('uint8'), True)
    """
    return read_mask_info(path, num_classes, mask_format, threshold)[0]


def read_mask_info(
    path: str | os.PathLike[str],
    num_classes: int,
    mask_format: str = "label",
    threshold: int = 127,
) -> tuple[np.ndarray, int]:
    """Read a segmentation mask as class indices, and count the values the file holds.

    Args:
        path: the mask file.
        num_classes: number of mask classes, background (class 0) included.
        mask_format: ``"label"`` (pixel value = class index) or ``"binary"`` (foreground
            where the 8-bit gray level is above ``threshold``); see the module docstring.
        threshold: gray level (0..254) above which a ``binary`` mask pixel is foreground.

    Returns:
        ``(mask, levels)``: ``(H, W)`` uint8 with values in ``0..num_classes-1``, EXIF
        orientation applied; and the number of distinct values in the file (8-bit gray levels
        for ``binary``, so a value above 2 means the threshold decided between more than two
        levels, as in a JPEG-compressed or anti-aliased mask or a label mask read as binary).

    Raises:
        MaskReadError: (an :class:`~osteolightning.errors.ImageReadError`, so a
            ``DataSourceError``) the file is missing, empty, not an accepted image, truncated,
            multi-frame, an RGB colour mask (``label``), or holds values outside
            ``0..num_classes-1``; the message names the file, lists the offending values and
            the accepted ones, and suggests ``mask_format=binary`` for a 0/255 mask.
        ConfigError: bad ``mask_format``, ``num_classes`` or ``threshold``.
    """
    check_mask_format(mask_format, num_classes)
    check_mask_threshold(threshold)
    path = Path(path)
    with _open_mask(path) as img:
        if mask_format == "binary":
            try:
                gray = _gray8(img)
            except ValueError as exc:
                raise MaskReadError(path, f"{exc}. {MASK_ACCEPTED}") from None
            levels = int(np.count_nonzero(np.bincount(gray.ravel(), minlength=256)))
            return (gray > threshold).astype(np.uint8), levels
        values = _label_values(path, img)
        present = np.unique(values)
        bad = present[present >= num_classes]
        if bad.size:
            two_tone = img.mode in ("P", "PA") and np.unique(_gray8(img)).size <= 2
            raise _out_of_range(path, bad, present, num_classes, two_tone)
    return values.astype(np.uint8), int(present.size)


def _out_of_range(
    path: Path, bad: np.ndarray, present: np.ndarray, num_classes: int, two_tone: bool
) -> MaskReadError:
    """The error for label values outside ``0..num_classes-1``, with a binary hint."""
    shown = shorten([int(v) for v in bad], 10, quote=False)
    hint = ""
    if two_tone or set(present.tolist()) <= {0, 255}:
        hint = (
            " The mask looks like a black/white binary mask: use mask_format=binary (with "
            "two class names, e.g. [background, bone])."
        )
    error = MaskReadError(
        path,
        f"mask_format=label: pixel values {shown} are not class indices; accepted values are "
        f"0..{num_classes - 1} ({num_classes} classes).{hint}",
    )
    error.details = [str(int(v)) for v in bad]  # every value the message shortened
    return error


def read_foreground(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask as foreground / background: every non-zero pixel is foreground.

    Non-zero means a class index above 0 for a label mask (the palette *index* for a palette
    PNG), the white of a 0/255 binary mask, or any non-black pixel of an RGB mask. Used to
    restrict a classifier's input to the segmented bone.

    Args:
        path: the mask file.

    Returns:
        ``(H, W)`` uint8 array of 0 (background) and 1 (foreground), EXIF orientation applied.

    Raises:
        MaskReadError: the file is missing, empty, not an accepted image, truncated or
            multi-frame.
    """
    path = Path(path)
    with _open_mask(path) as img:
        if img.mode in ("L", "P", "1", "LA", "PA"):
            values = np.asarray(img)
            values = values[..., 0] if values.ndim == 3 else values
        elif img.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            values = np.asarray(img.convert("RGB")).max(axis=-1)
        else:
            try:
                values = _gray8(img)  # 16-bit: scaled, so 1/65535 noise stays background
            except ValueError as exc:
                raise MaskReadError(path, f"{exc}. {MASK_ACCEPTED}") from None
    return (values > 0).astype(np.uint8)


def _letterbox_geometry(shape: tuple[int, int]) -> tuple[int, int, int]:
    """``(side, top, left)`` of the square canvas of :func:`cache.letterbox_resize`."""
    h, w = shape
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def letterbox_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Pad a mask to a square and resize it exactly as its image is letterboxed.

    The geometry is that of :func:`osteolightning.data.cache.letterbox_resize` (centred
    zero padding to ``max(H, W)``, then a resize to ``size``); resampling is nearest-neighbour
    with pixel centres aligned (``cv2.INTER_NEAREST_EXACT``), so classes are never blended and
    the mask lies on its image.

    Args:
        mask: ``(H, W)`` uint8 class indices.
        size: side of the output.

    Returns:
        ``(size, size)`` uint8; the padding is class 0.

    Example:
        >>> letterbox_mask(np.ones((4, 8), np.uint8), 8)[:, 0].tolist()
        [0, 0, 1, 1, 1, 1, 0, 0]
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"Expected a 2-D (H, W) mask, but got shape {mask.shape}.")
    h, w = mask.shape
    side, top, left = _letterbox_geometry((h, w))
    canvas = np.zeros((side, side), dtype=np.uint8)
    canvas[top : top + h, left : left + w] = mask
    if side == size:
        return canvas
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def unletterbox(mask_s: np.ndarray, original_shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`letterbox_mask`: map a square mask back onto the original image.

    Args:
        mask_s: ``(S, S)`` uint8 mask in the letterboxed frame (e.g. a prediction).
        original_shape: ``(H, W)`` of the original image (see :func:`image_shape`).

    Returns:
        ``(H, W)`` uint8: the square resized (nearest-neighbour) to ``max(H, W)`` and the
        padding cropped away.

    Example:
        >>> m = np.zeros((30, 50), np.uint8); m[10:20, 5:40] = 2
        >>> bool((unletterbox(letterbox_mask(m, 50), (30, 50)) == m).all())
        True
    """
    mask_s = np.asarray(mask_s)
    if mask_s.ndim != 2 or mask_s.shape[0] != mask_s.shape[1]:
        raise ValueError(f"Expected a square (S, S) mask, but got shape {mask_s.shape}.")
    h, w = (int(v) for v in original_shape)
    side, top, left = _letterbox_geometry((h, w))
    square = mask_s.astype(np.uint8, copy=False)
    if square.shape[0] != side:
        square = cv2.resize(square, (side, side), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.ascontiguousarray(square[top : top + h, left : left + w])


def _png_has_late_metadata(path: Path) -> bool:
    """Whether a PNG holds EXIF/text chunks after its image data (PIL reads them on load)."""
    with path.open("rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            return True  # not a plain PNG stream: let PIL decide
        seen_data = False
        while header := fh.read(8):
            if len(header) < 8:
                return False
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IDAT":
                seen_data = True
            elif seen_data and kind in _PNG_METADATA_CHUNKS:
                return True
            elif kind == b"IEND":
                return False
            fh.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return False


def image_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`~osteolightning.data.io.read_image` returns it.

    Read from the header where possible: DICOM ``Rows`` / ``Columns`` (pixel data not read),
    PIL's header size for PNG, JPEG, TIFF and BMP. The EXIF orientation is honoured as
    :func:`read_image` honours it (``ImageOps.exif_transpose``): orientations 5 to 8 swap height
    and width. Only a PNG with metadata chunks after its image data is decoded, because PIL
    finds its EXIF there only then.

    Args:
        path: the image file.

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        ImageReadError: the file is missing or neither a DICOM file nor an image PIL reads.

    Example:
        >>> image_shape("knee.dcm")  # doctest: +SKIP
        (2048, 2500)
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ImageReadError(path, f"the path {what}.")
    if _has_dicom_magic(path):
        return _dicom_shape(path)
    try:
        img = Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if path.suffix.lower() in DICOM_EXTENSIONS:
            return _dicom_shape(path)  # DICOM without the Part 10 preamble
        raise ImageReadError(
            path, f"the content is not an image of an accepted format ({type(exc).__name__})."
        ) from None
    with img:
        width, height = img.size
        try:
            if img.format == "PNG" and not _png_has_late_metadata(path):
                exif = Image.Image.getexif(img)  # chunks before the data only: no decoding
            else:  # PIL decodes a PNG to reach its later chunks; other formats: header only
                exif = img.getexif()
            orientation = exif.get(_EXIF_ORIENTATION, 1)
        except Exception as exc:  # corrupt metadata: read_image would fail to decode too
            raise ImageReadError(
                path, f"the {img.format} file is truncated or corrupt ({type(exc).__name__})."
            ) from exc
    if orientation in _SWAPPED_ORIENTATIONS:
        return width, height
    return height, width


def _dicom_shape(path: Path) -> tuple[int, int]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # InvalidDicomError, missing Rows/Columns, ...
        raise ImageReadError(
            path, f"not a readable DICOM file with Rows/Columns ({type(exc).__name__}: {exc})."
        ) from exc


def crop_to_foreground(
    images: np.ndarray, masks: np.ndarray, size: int, margin: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Crop each image (and its mask) to the square around its mask's foreground, resized to
    ``size``: the region of the bone at the resolution of ``images``, not of the whole knee.

    The square is centred on the foreground's bounding box, its side the box's longer side
    plus ``margin`` of it on each side, kept inside the image (shifted, and shrunk only when
    the image is smaller).

    Args:
        images: ``(N, S, S)`` uint8 letterboxed images.
        masks: ``(N, S, S)`` uint8 masks aligned with them (foreground: non-zero).
        size: output side.
        margin: extra context around the box, as a fraction of its side.

    Returns:
        ``(N, size, size)`` uint8 images and masks (area-averaged images, nearest masks).

    Raises:
        DataSourceError: a mask without foreground (its index named).
    """
    out_images = np.empty((len(images), size, size), np.uint8)
    out_masks = np.empty((len(images), size, size), np.uint8)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        rows, cols = np.nonzero(mask)
        if not len(rows):
            raise DataSourceError(f"Mask {i} has no foreground: there is no region to crop to.")
        side = int(
            np.ceil(max(rows.max() - rows.min(), cols.max() - cols.min()) * (1 + 2 * margin))
        )
        side = min(max(side, 8), image.shape[0])
        top = int(np.clip((rows.min() + rows.max() - side) // 2, 0, image.shape[0] - side))
        left = int(np.clip((cols.min() + cols.max() - side) // 2, 0, image.shape[1] - side))
        window = (slice(top, top + side), slice(left, left + side))
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out_images[i] = cv2.resize(image[window], (size, size), interpolation=interpolation)
        out_masks[i] = cv2.resize(mask[window], (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return out_images, out_masks

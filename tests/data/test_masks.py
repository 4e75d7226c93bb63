"""Masks: reading every accepted format, clear errors, letterbox geometry, header-only shapes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.data.cache import letterbox_resize
from osteolightning.data.io import read_image
from osteolightning.data.masks import (
    MaskReadError,
    image_shape,
    letterbox_mask,
    read_foreground,
    read_mask,
    unletterbox,
)
from osteolightning.errors import ConfigError, DataSourceError, ImageReadError
from tests.helpers import write_dicom, write_exif_rotated_jpeg


def _labels(shape: tuple[int, int] = (40, 56), num_classes: int = 5) -> np.ndarray:
    """A label mask with every class present, in blocks (not symmetric)."""
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    for c in range(1, num_classes):
        mask[(c * h) // (num_classes + 1) : ((c + 1) * h) // (num_classes + 1), c * 3 : w - c] = c
    return mask


def _palette_image(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    img = Image.fromarray(indices, mode="P")
    flat = [v for colour in colours for v in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


# -- label masks ------------------------------------------------------------------------------
def test_label_gray_png_round_trip(tmp_path: Path) -> None:
    mask = _labels()
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", num_classes=5)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


def test_label_palette_reads_indices_not_colours(tmp_path: Path) -> None:
    mask = _labels()
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    _palette_image(mask, colours).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 5), mask)


def test_label_16bit_png_round_trip(tmp_path: Path) -> None:
    mask = _labels().astype(np.uint16)
    Image.fromarray(mask).save(tmp_path / "m16.png")
    assert Image.open(tmp_path / "m16.png").mode.startswith("I")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png", 5), mask)


def test_label_rgb_with_equal_channels_is_accepted(tmp_path: Path) -> None:
    mask = _labels()
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", 5), mask)


def test_label_rgb_colour_mask_is_refused_naming_the_file(tmp_path: Path) -> None:
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[10:20, 10:20] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(MaskReadError, match=r"colour\.png.*RGB colour mask.*\(255, 0, 0\)"):
        read_mask(tmp_path / "colour.png", 5)


def test_out_of_range_values_are_listed_with_the_accepted_set(tmp_path: Path) -> None:
    mask = _labels()
    mask[0, :3] = (7, 9, 9)
    Image.fromarray(mask).save(tmp_path / "bad.png")
    with pytest.raises(MaskReadError) as info:
        read_mask(tmp_path / "bad.png", 5)
    message = str(info.value)
    assert "bad.png" in message and "7, 9" in message and "0..4" in message
    assert "binary" not in message  # not a 0/255 mask: no misleading hint
    assert isinstance(info.value, ImageReadError) and isinstance(info.value, DataSourceError)


def test_a_0_255_mask_read_as_labels_suggests_binary(tmp_path: Path) -> None:
    Image.fromarray((_labels() > 0).astype(np.uint8) * 255).save(tmp_path / "bw.png")
    with pytest.raises(MaskReadError, match=r"bw\.png.*255.*mask_format=binary"):
        read_mask(tmp_path / "bw.png", 3)


def test_a_two_colour_palette_with_many_indices_suggests_binary(tmp_path: Path) -> None:
    """Like the real femur masks: hundreds of palette indices, all but index 0 white."""
    indices = np.zeros((40, 40), np.uint8)
    indices[10:30, 10:30] = np.arange(1, 201, dtype=np.uint8).reshape(10, 20).repeat(2, axis=0)
    _palette_image(indices, [(0, 0, 0)] + [(255, 255, 255)] * 255).save(tmp_path / "p.png")
    with pytest.raises(MaskReadError, match="mask_format=binary"):
        read_mask(tmp_path / "p.png", 2)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", 2, "binary"), indices > 0)


# -- binary masks -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gray", "rgb", "palette", "gray16", "bilevel"])
def test_binary_round_trip_from_every_mode(tmp_path: Path, kind: str) -> None:
    fg = _labels() > 0
    path = tmp_path / f"{kind}.png"
    if kind == "gray":
        Image.fromarray(fg.astype(np.uint8) * 255).save(path)
    elif kind == "rgb":
        Image.fromarray(np.stack([fg.astype(np.uint8) * 200] * 3, axis=-1)).save(path)
    elif kind == "palette":
        _palette_image(fg.astype(np.uint8), [(0, 0, 0), (255, 255, 255)]).save(path)
    elif kind == "gray16":
        Image.fromarray(fg.astype(np.uint16) * 65535).save(path)
    else:
        Image.fromarray(fg).save(path)  # mode "1"
    out = read_mask(path, num_classes=2, mask_format="binary")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, fg.astype(np.uint8))


def test_binary_threshold_is_on_the_8bit_gray_scale(tmp_path: Path) -> None:
    gray = np.array([[0, 100, 127, 128, 200, 255]] * 32, np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    for name in ("g.png", "g16.png"):
        assert read_mask(tmp_path / name, 2, "binary")[0].tolist() == [0, 0, 0, 1, 1, 1]
        assert read_mask(tmp_path / name, 2, "binary", threshold=50)[0].tolist() == [
            0,
            1,
            1,
            1,
            1,
            1,
        ]


def test_bad_format_arguments_are_config_errors(tmp_path: Path) -> None:
    Image.fromarray(_labels()).save(tmp_path / "m.png")
    with pytest.raises(ConfigError, match="mask_format.*'binary', 'label'.*'rle'"):
        read_mask(tmp_path / "m.png", 5, "rle")
    with pytest.raises(ConfigError, match="binary.*two classes.*5 class names"):
        read_mask(tmp_path / "m.png", 5, "binary")
    with pytest.raises(ConfigError, match="mask_threshold.*0..254.*300"):
        read_mask(tmp_path / "m.png", 2, "binary", threshold=300)
    with pytest.raises(ConfigError, match="2..256"):
        read_mask(tmp_path / "m.png", 1)


@pytest.mark.parametrize("content", [None, b"", b"not an image at all", "truncated"])
def test_unreadable_masks_raise_naming_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 5, (64, 64), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:80])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(MaskReadError, match=r"Cannot read mask '.*broken\.png'"):
        read_mask(path, 5)
    with pytest.raises(MaskReadError, match=r"broken\.png"):
        read_foreground(path)


def test_read_foreground_is_any_non_zero_pixel(tmp_path: Path) -> None:
    mask = _labels()
    Image.fromarray(mask).save(tmp_path / "labels.png")
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp_path / "bw.png")
    colour = np.zeros((*mask.shape, 3), np.uint8)
    colour[mask > 0] = (0, 0, 90)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    for name in ("labels.png", "bw.png", "colour.png"):
        np.testing.assert_array_equal(read_foreground(tmp_path / name), mask > 0)


# -- geometry ---------------------------------------------------------------------------------
def _blob_image(shape: tuple[int, int]) -> np.ndarray:
    """A float image in [0, 1] with two bright ellipses, off-centre (no symmetry to hide bugs)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    a = ((x - 0.3 * w) / (0.2 * w)) ** 2 + ((y - 0.4 * h) / (0.25 * h)) ** 2 < 1
    b = ((x - 0.75 * w) / (0.12 * w)) ** 2 + ((y - 0.7 * h) / (0.2 * h)) ** 2 < 1
    return (0.1 + 0.8 * (a | b)).astype(np.float32)


@pytest.mark.parametrize("shape, size", [((120, 200), 64), ((200, 90), 64), ((50, 80), 160)])
def test_letterbox_mask_lies_on_the_letterboxed_image(shape: tuple[int, int], size: int) -> None:
    image = _blob_image(shape)
    mask = (image > 0.5).astype(np.uint8)
    expected = letterbox_resize(image, size) > 127  # the image's own geometry
    got = letterbox_mask(mask, size)
    assert got.shape == (size, size) and got.dtype == np.uint8
    differ = expected != (got > 0)
    # only boundary pixels may differ: each one has both classes in its 3x3 neighbourhood
    padded = np.pad(expected, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    boundary = windows.any(axis=(-1, -2)) & ~windows.all(axis=(-1, -2))
    assert not (differ & ~boundary).any()
    assert differ.sum() <= 0.25 * boundary.sum()
    # a shift by one pixel (a misaligned grid) would break that
    shifted = np.roll(got > 0, 2, axis=1) != expected
    assert (shifted & ~boundary).any()


def test_letterbox_mask_pads_with_background_and_keeps_classes() -> None:
    mask = _labels((30, 90), num_classes=4)
    out = letterbox_mask(mask, 45)
    assert set(np.unique(out).tolist()) == {0, 1, 2, 3}  # no blended values
    assert not out[:7].any() and not out[-7:].any()  # the 30-px band is centred in 90 → 45


@pytest.mark.parametrize("shape", [(30, 50), (51, 20), (40, 40)])
def test_unletterbox_inverts_letterbox(shape: tuple[int, int]) -> None:
    mask = _labels(shape, num_classes=3)
    side = max(shape)
    for size in (side, 2 * side):  # exact where the grid maps pixel to pixel
        np.testing.assert_array_equal(unletterbox(letterbox_mask(mask, size), shape), mask)
    approx = unletterbox(letterbox_mask(mask, 37), shape)  # a coarser grid: boundaries move
    assert approx.shape == shape and (approx == mask).mean() > 0.9


def test_unletterbox_rejects_a_non_square_mask() -> None:
    with pytest.raises(ValueError, match="square"):
        unletterbox(np.zeros((10, 12), np.uint8), (10, 12))


# -- image_shape --------------------------------------------------------------------------------
def _png_with_exif_after_idat(path: Path, pixels: np.ndarray, orientation: int) -> None:
    """A PNG whose eXIf chunk follows the image data (legal; PIL finds it only on load)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    payload = exif.tobytes()
    if payload.startswith(b"Exif\x00\x00"):
        payload = payload[6:]
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    iend = data.rindex(b"IEND") - 4
    path.write_bytes(data[:iend] + chunk + data[iend:])


def test_image_shape_matches_read_image(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((40, 70), np.uint8)).save(tmp_path / "plain.png")
    Image.fromarray(np.zeros((40, 70), np.uint16)).save(tmp_path / "deep.tif")
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(tmp_path / "rgb.jpg")
    jpeg, _ = write_exif_rotated_jpeg(tmp_path / "rotated.jpg")
    late = tmp_path / "late_exif.png"
    _png_with_exif_after_idat(late, np.zeros((36, 64), np.uint8), orientation=8)
    dicom = write_dicom(tmp_path / "scan.dcm", np.zeros((48, 80), np.uint16))
    no_ext = tmp_path / "dicom_no_extension"
    no_ext.write_bytes(dicom.read_bytes())
    paths = ["plain.png", "deep.tif", "rgb.jpg", jpeg.name, late.name, dicom.name, no_ext.name]
    for name in paths:
        assert image_shape(tmp_path / name) == read_image(tmp_path / name).shape, name
    assert image_shape(jpeg) == (64, 32)  # EXIF orientation 6 swaps height and width
    assert image_shape(late) == (64, 36)


def test_image_shape_reads_only_the_header(tmp_path: Path) -> None:
    """A PNG cut inside its pixel data: no decoding, so the header's size comes back."""
    path = tmp_path / "cut.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 500), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageReadError):
        read_image(path)  # decoding fails ...
    assert image_shape(path) == (300, 500)  # ... the header is enough


def test_image_shape_of_a_missing_or_foreign_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nothing.png.*does not exist"):
        image_shape(tmp_path / "nothing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.txt"):
        image_shape(tmp_path / "notes.txt")


def test_mask_exif_orientation_is_applied_like_the_image(tmp_path: Path) -> None:
    jpeg, raw = write_exif_rotated_jpeg(tmp_path / "image.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray((raw > 127).astype(np.uint8)).save(tmp_path / "mask.png", exif=exif)
    mask = read_mask(tmp_path / "mask.png", 2)
    image = read_image(jpeg)
    assert mask.shape == image.shape == image_shape(jpeg)
    np.testing.assert_array_equal(mask, (image > 0.5).astype(np.uint8))

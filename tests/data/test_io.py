"""Tests of osteolightning.data.io: every accepted format, and every way a file can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from osteolightning.data.cache import letterbox_resize
from osteolightning.data.io import (
    IMAGE_EXTENSIONS,
    MIN_IMAGE_SIDE,
    ImageInfo,
    is_dicom,
    read_image,
    read_image_info,
)
from osteolightning.errors import ImageReadError
from tests.helpers import write_dicom, write_exif_rotated_jpeg

RNG = np.random.default_rng(0)


def check_output(arr: np.ndarray) -> None:
    """The contract every read shares: finite float32 (H, W) in [0, 1]."""
    assert arr.dtype == np.float32
    assert arr.ndim == 2
    assert arr.flags.c_contiguous
    assert np.isfinite(arr).all()
    assert arr.min() >= 0.0 and arr.max() <= 1.0


def pil_luminance(path: Path) -> np.ndarray:
    """Reference: PIL's own RGB → L conversion (ITU-R 601), scaled to [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.float32) / 255.0


def noise(shape: tuple[int, ...], high: int = 256, dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(dtype)


def grow(pixels: np.ndarray | list) -> np.ndarray:
    """Tile a small (H, W[, C]) pattern until both sides reach MIN_IMAGE_SIDE."""
    pixels = np.asarray(pixels)
    h, w = pixels.shape[:2]
    reps = (-(-MIN_IMAGE_SIDE // h), -(-MIN_IMAGE_SIDE // w)) + (1,) * (pixels.ndim - 2)
    return np.tile(pixels, reps)


# --------------------------------------------------------------------------- PIL formats


def test_extensions_are_lower_case() -> None:
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} == IMAGE_EXTENSIONS


def test_png_8bit(tmp_path: Path) -> None:
    pixels = noise((40, 48))
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    out = read_image(path)
    check_output(out)
    np.testing.assert_allclose(out, pixels / 255.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["1", "LA"])
def test_png_other_gray_modes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"{mode}.png"
    Image.fromarray(noise((40, 40))).convert(mode).save(path)
    out = read_image(path)
    check_output(out)
    with Image.open(path) as img:
        np.testing.assert_allclose(out, np.asarray(img.convert("L")) / 255.0, atol=1e-6)


def test_png_16bit_divides_by_65535(tmp_path: Path) -> None:
    pixels = grow(np.array([[0, 1000, 32768], [40000, 65534, 65535]], dtype=np.uint16))
    path = tmp_path / "b.png"
    Image.fromarray(pixels).save(path)
    out = read_image(path)
    check_output(out)
    assert out.max() == 1.0
    np.testing.assert_allclose(out, pixels / 65535.0, atol=1e-7)


def _png16(path: Path, pixels: np.ndarray, sbit: int | None = None) -> Path:
    """A 16-bit gray PNG, with an sBIT chunk (significant bits) when given."""
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(pixels.astype(np.uint16)).save(path, pnginfo=info)
    return path


def test_12bit_data_in_a_16bit_png_spans_the_range(tmp_path: Path) -> None:
    # a 12-bit detector's values (0..4095) in a 16-bit PNG without sBIT: divided by 4095, so
    # the letterboxed uint8 image keeps ~256 gray levels instead of the 16 of 4095 / 65535
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    out, info = read_image_info(_png16(tmp_path / "c.png", pixels))
    check_output(out)
    np.testing.assert_allclose(out, pixels / 4095.0, atol=1e-6)
    assert (info.bits, info.scale_bits, info.depth_from) == (16, 12, "range")
    assert info.partial_depth and (info.height, info.width) == (64, 64)
    assert len(np.unique(letterbox_resize(out, 64))) == 256
    assert len(np.unique(letterbox_resize(pixels / 65535.0, 64))) == 17  # the old scaling


@pytest.mark.parametrize(
    ("peak", "sbit", "divisor", "source"),
    [
        (3000, 14, 16383, "sBIT"),  # the file says 14 bits: not the 12 its maximum needs
        (3000, 10, 4095, "range"),  # values above 2^10 - 1: the chunk is wrong, range decides
        (900, None, 1023, "range"),
        (16000, None, 16383, "range"),
        (40000, None, 65535, "file"),
        (3000, 16, 65535, "file"),
    ],
)
def test_16bit_depth_from_sbit_or_range(tmp_path: Path, peak, sbit, divisor, source) -> None:
    pixels = grow(np.array([[0, peak // 2, peak]], dtype=np.uint16))
    out, info = read_image_info(_png16(tmp_path / "d.png", pixels, sbit))
    np.testing.assert_allclose(out, pixels / divisor, atol=1e-6)
    assert info.depth_from == source and (1 << info.scale_bits) - 1 == divisor


def test_12bit_tiff_uses_its_range(tmp_path: Path) -> None:
    pixels = noise((40, 37), high=4096, dtype=np.uint16)
    pixels[0, 0] = 4095
    Image.fromarray(pixels).save(tmp_path / "e.tif")
    out, info = read_image_info(tmp_path / "e.tif")
    np.testing.assert_allclose(out, pixels / 4095.0, atol=1e-6)
    assert info.scale_bits == 12 and info.partial_depth


def test_8bit_and_dicom_are_not_partial_depth(tmp_path: Path) -> None:
    Image.fromarray(noise((40, 40))).save(tmp_path / "a.png")
    assert read_image_info(tmp_path / "a.png")[1] == ImageInfo(40, 40, 8, 8, "file")
    dicom = read_image_info(write_dicom(tmp_path / "a.dcm", ramp()))[1]
    assert dicom.scale_bits == 0 and dicom.depth_from == "min-max" and not dicom.partial_depth


def test_rgb_jpeg_is_luminance(tmp_path: Path) -> None:
    path = tmp_path / "rgb.JPG"  # upper-case extension
    Image.fromarray(noise((40, 36, 3))).save(path, quality=95)
    out = read_image(path)
    check_output(out)
    assert out.shape == (40, 36)
    np.testing.assert_allclose(out, pil_luminance(path), atol=1 / 255 + 1e-6)


def test_palette_png(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    img = Image.fromarray(noise((40, 40, 3))).convert("P", palette=Image.Palette.ADAPTIVE)
    assert img.mode == "P"
    img.save(path)
    out = read_image(path)
    check_output(out)
    np.testing.assert_allclose(out, pil_luminance(path), atol=1 / 255 + 1e-6)


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = noise((40, 41, 4))
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = read_image(path)
    check_output(out)
    expected = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(noise((40, 40, 3))).convert("CMYK").save(path, quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    out = read_image(path)
    check_output(out)
    np.testing.assert_allclose(out, pil_luminance(path), atol=1 / 255 + 1e-6)


def test_tiff_16bit(tmp_path: Path) -> None:
    pixels = noise((40, 37), high=65536, dtype=np.uint16)
    path = tmp_path / "d.tiff"
    Image.fromarray(pixels).save(path)
    out = read_image(path)
    check_output(out)
    np.testing.assert_allclose(out, pixels / 65535.0, atol=1e-7)


def test_tiff_float_is_min_max_scaled(tmp_path: Path) -> None:
    pixels = grow(np.array([[-3.0, 0.0], [1.0, 5.0]], dtype=np.float32))
    path = tmp_path / "f.tif"
    Image.fromarray(pixels, mode="F").save(path)
    out = read_image(path)
    check_output(out)
    np.testing.assert_allclose(out, grow([[0.0, 0.375], [0.5, 1.0]]), atol=1e-6)


def test_tiff_int32_is_min_max_scaled_and_constant_gives_zeros(tmp_path: Path) -> None:
    path = tmp_path / "i.tif"
    Image.fromarray(grow(np.array([[10, 20, 30]], dtype=np.int32))).save(path)
    np.testing.assert_allclose(read_image(path), grow([[0.0, 0.5, 1.0]]))
    const = tmp_path / "const.tif"
    Image.fromarray(np.full((32, 32), 7, dtype=np.int32)).save(const)
    np.testing.assert_array_equal(read_image(const), np.zeros((32, 32)))


def test_bmp(tmp_path: Path) -> None:
    pixels = noise((40, 42))
    path = tmp_path / "e.bmp"
    Image.fromarray(pixels).save(path)
    np.testing.assert_allclose(read_image(path), pixels / 255.0, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path, raw = write_exif_rotated_jpeg(tmp_path / "rot.jpg")
    out = read_image(path)
    check_output(out)
    assert out.shape == (64, 32)
    np.testing.assert_allclose(out, np.rot90(raw, k=-1) / 255.0, atol=0.1)  # bright top


# ------------------------------------------------------------------------------ DICOM


def ramp() -> np.ndarray:
    """(40, 100) uint16 ramp 0..3999, each row a fortieth of the range."""
    return np.arange(4000, dtype=np.uint16).reshape(40, 100)


def test_dicom_monochrome2(tmp_path: Path) -> None:
    pixels = ramp()
    out = read_image(write_dicom(tmp_path / "a.dcm", pixels))
    check_output(out)
    np.testing.assert_allclose(out, pixels / 3999.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = noise((40, 42), high=4096, dtype=np.uint16)
    kwargs = {"slope": 1.0, "intercept": 0.0, "center": 2000.0, "width": 3000.0}
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", **kwargs))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", **kwargs))
    check_output(mono1)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_rescale_then_window_clips(tmp_path: Path) -> None:
    pixels = ramp()
    # Stored 0..3999 → 2 * p - 100 = -100..7898; window 800..1000 in rescaled units,
    # i.e. stored values 450..550.
    path = write_dicom(
        tmp_path / "w.dcm", pixels, slope=2.0, intercept=-100.0, center=900.0, width=200.0
    )
    out = read_image(path)
    check_output(out)
    assert (out[pixels <= 450] == 0.0).all()
    assert (out[pixels > 550] == 1.0).all()
    inside = out[(pixels > 451) & (pixels < 549)]
    assert ((inside > 0.0) & (inside < 1.0)).all()
    assert (np.diff(out.ravel()) >= 0).all()  # still monotonic in the stored value


def test_dicom_rgb_is_luminance(tmp_path: Path) -> None:
    rgb = noise((40, 36, 3))
    out = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    check_output(out)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(out, (lum - lum.min()) / (lum.max() - lum.min()), atol=1e-5)


def test_dicom_without_extension(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM000001", ramp())
    assert is_dicom(path)
    np.testing.assert_allclose(read_image(path), ramp() / 3999.0, atol=1e-6)


def test_is_dicom(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    Image.fromarray(noise((4, 4))).save(png)
    assert is_dicom(tmp_path / "anything.DCM")  # by extension, even if it does not exist
    assert not is_dicom(png)
    assert not is_dicom(tmp_path / "missing")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "report.dcm", None)
    with pytest.raises(ImageReadError, match="no pixel data") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_dicom_multi_frame(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cine.dcm", np.stack([ramp(), ramp()]), frames=2)
    with pytest.raises(ImageReadError, match="multi-frame") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_dicom_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.dcm"
    path.write_text("not a dicom file\n")
    with pytest.raises(ImageReadError, match="DICOM") as info:
        read_image(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------ errors


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises(tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(noise((64, 64, 3))).save(full)
    read_image(full)  # the intact file reads
    path = truncated_copy(full, tmp_path / f"cut{suffix}")
    with pytest.raises(ImageReadError, match="truncated or corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "Accepted" in str(info.value)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageReadError, match="empty") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not an image\n")
    with pytest.raises(ImageReadError, match="Accepted: PNG, JPEG") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_nan_in_float_tiff(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32), mode="F").save(path)
    with pytest.raises(ImageReadError, match="NaN") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.gif"  # the content decides: GIF is not an accepted format
    Image.fromarray(noise((40, 40))).save(path)
    with pytest.raises(ImageReadError, match="content is a GIF image") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    with pytest.raises(ImageReadError, match="does not exist") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_multi_page_tiff(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    first, second = Image.fromarray(noise((4, 4))), Image.fromarray(noise((4, 4)))
    first.save(path, save_all=True, append_images=[second])
    with pytest.raises(ImageReadError, match="2 frames") as info:
        read_image(path)
    assert str(path) in str(info.value)

"""Hard inputs, one test each: what read_image does, and what `on_bad_image` does with them.

For every bad file, ``on_bad_image="skip"`` must drop exactly that file from a small class-folder
tree and list it with a reason that names the problem, and ``"error"`` must raise naming it.
Files the sources can see are bad (a text file) are caught by :class:`FolderSource`; files that
only decoding shows to be bad (a truncated JPEG) by :meth:`PreprocessedCache.prepare`.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.data.cache import PrepareResult, PreprocessedCache
from osteolightning.data.folders import FolderSource
from osteolightning.data.io import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, read_image
from osteolightning.data.sources import ManifestSource
from osteolightning.errors import ConfigError, DataSourceError, ImageReadError
from tests.helpers import write_dicom, write_exif_rotated_jpeg

CLASSES = ["normal", "osteopenia", "osteoporosis"]
RNG = np.random.default_rng(0)


def noise(shape: tuple[int, ...], high: int = 256, dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(dtype)


# ------------------------------------------------------------------------------ writers
# Each writes one hard input into `folder` and returns its path.


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` 8-bit gray pixels but holds no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(folder: Path) -> Path:
    full = folder / "full.tmp"
    Image.fromarray(noise((64, 64, 3))).save(full, format="JPEG")
    path = folder / "cut.jpg"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return path


def zero_byte(folder: Path) -> Path:
    path = folder / "empty.png"
    path.touch()
    return path


def text_file(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("patient list, do not share\n")
    return path


def text_named_png(folder: Path) -> Path:
    path = folder / "notes.png"
    path.write_text("these are notes, not an image\n")
    return path


def ds_store(folder: Path) -> Path:
    path = folder / ".DS_Store"
    path.write_bytes(b"\0\0\0\1Bud1" + b"\0" * 64)
    return path


def thumbs_db(folder: Path) -> Path:
    path = folder / "Thumbs.db"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 64)  # an OLE2 file
    return path


def png_named_jpg(folder: Path) -> Path:
    path = folder / "really_png.jpg"
    Image.fromarray(noise((40, 40))).save(path, format="PNG")
    return path


def dicom_named_png(folder: Path) -> Path:
    return write_dicom(folder / "really_dicom.png", noise((40, 40), high=4096, dtype=np.uint16))


def tiff_16bit(folder: Path) -> Path:
    path = folder / "deep.tif"
    Image.fromarray(noise((40, 40), high=65536, dtype=np.uint16)).save(path)
    return path


def cmyk_jpeg(folder: Path) -> Path:
    path = folder / "print.jpg"
    Image.fromarray(noise((40, 40, 3))).convert("CMYK").save(path, quality=95)
    return path


def exif_rotated(folder: Path) -> Path:
    return write_exif_rotated_jpeg(folder / "rotated.jpg")[0]


@functools.cache
def _huge_png_bytes() -> bytes:
    pixels = np.zeros((8000, 8000), dtype=np.uint8)  # flat, so the PNG is small
    pixels[:4000, :4000] = 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def huge_8000(folder: Path) -> Path:
    path = folder / "huge.png"
    path.write_bytes(_huge_png_bytes())  # encoded once per session
    return path


def too_small(folder: Path) -> Path:
    path = folder / "thumb.png"
    Image.fromarray(noise((MIN_IMAGE_SIDE - 1, 100))).save(path)
    return path


def dicom_no_pixels(folder: Path) -> Path:
    return write_dicom(folder / "report.dcm", None)


def dicom_monochrome1(folder: Path) -> Path:
    return write_dicom(
        folder / "mono1.dcm", noise((40, 40), high=4096, dtype=np.uint16), "MONOCHROME1"
    )


def float_tiff(folder: Path, value: float, name: str) -> Path:
    pixels = np.linspace(0.0, 1.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    pixels[3, 5] = value
    path = folder / name
    Image.fromarray(pixels, mode="F").save(path)
    return path


def nan_tiff(folder: Path) -> Path:
    return float_tiff(folder, np.nan, "nan.tif")


def inf_tiff(folder: Path) -> Path:
    return float_tiff(folder, np.inf, "inf.tif")


# ------------------------------------------------------------------------- read_image


def check_output(arr: np.ndarray) -> None:
    assert arr.dtype == np.float32 and arr.ndim == 2 and arr.flags.c_contiguous
    assert np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0


def raises_naming(path: Path, match: str) -> None:
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "Accepted:" in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    raises_naming(truncated_jpeg(tmp_path), "JPEG file is truncated or corrupt")


def test_zero_byte_file(tmp_path: Path) -> None:
    raises_naming(zero_byte(tmp_path), r"empty \(0 bytes\)")


@pytest.mark.parametrize("writer", [ds_store, thumbs_db, text_file, text_named_png])
def test_non_image(tmp_path: Path, writer: Callable[[Path], Path]) -> None:
    raises_naming(writer(tmp_path), "not an image of an accepted format")


def test_png_named_jpg_decodes_by_content(tmp_path: Path) -> None:
    path = png_named_jpg(tmp_path)
    with Image.open(path) as img:
        expected = np.asarray(img, dtype=np.float32) / 255.0
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_dicom_named_png_decodes_by_content(tmp_path: Path) -> None:
    out = read_image(dicom_named_png(tmp_path))
    check_output(out)
    assert out.shape == (40, 40)


def test_png_named_dcm_and_unknown_extension_decode_by_content(tmp_path: Path) -> None:
    pixels = noise((40, 40))
    for name in ("really_png.dcm", "scan.raw", "IM0001"):
        Image.fromarray(pixels).save(tmp_path / name, format="PNG")
        np.testing.assert_allclose(read_image(tmp_path / name), pixels / 255.0, atol=1e-6)


def test_tiff_16bit(tmp_path: Path) -> None:
    path = tiff_16bit(tmp_path)
    with Image.open(path) as img:
        expected = np.asarray(img) / 65535.0
    np.testing.assert_allclose(read_image(path), expected, atol=1e-7)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = cmyk_jpeg(tmp_path)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        expected = np.asarray(img.convert("RGB").convert("L"), dtype=np.float32) / 255.0
    out = read_image(path)
    check_output(out)
    np.testing.assert_allclose(out, expected, atol=1 / 255 + 1e-6)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    out = read_image(exif_rotated(tmp_path))
    assert out.shape == (64, 32)
    assert out[:32].mean() > 0.9 and out[32:].mean() < 0.1  # bright top


def test_8000_pixel_image_decodes(tmp_path: Path) -> None:
    out = read_image(huge_8000(tmp_path))
    check_output(out)
    assert out.shape == (8000, 8000)
    assert out[0, 0] == pytest.approx(200 / 255) and out[-1, -1] == 0.0


def test_bomb_limit_is_raised_but_kept(tmp_path: Path) -> None:
    assert Image.MAX_IMAGE_PIXELS >= MAX_IMAGE_PIXELS == 30_000 * 30_000
    # 20000 x 20000 is over PIL's default limit: it must reach the decoder (and fail there,
    # as the file holds no pixel data), not be refused as a bomb.
    raises_naming(png_header_only(tmp_path / "big.png", 20_000, 20_000), "truncated or corrupt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        raises_naming(png_header_only(tmp_path / "bomb.png", 40_000, 40_000), "too large")
    raises_naming(png_header_only(tmp_path / "bomb2.png", 50_000, 50_000), "decompression bomb")


def test_image_under_32_pixels(tmp_path: Path) -> None:
    raises_naming(too_small(tmp_path), rf"too small \(31x100 .*minimum is {MIN_IMAGE_SIDE} pixels")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    raises_naming(dicom_no_pixels(tmp_path), "no pixel data")


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = noise((40, 40), high=4096, dtype=np.uint16)
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1"))
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2"))
    check_output(mono1)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


@pytest.mark.parametrize("writer", [nan_tiff, inf_tiff])
def test_nan_or_inf_pixels(tmp_path: Path, writer: Callable[[Path], Path]) -> None:
    raises_naming(writer(tmp_path), r"1 NaN/inf value")


# ----------------------------------------------------------------------- the policy

# writer → (where it is caught, a regex the listed reason must match)
BAD: dict[Callable[[Path], Path], tuple[str, str]] = {
    truncated_jpeg: ("cache", "truncated or corrupt"),
    zero_byte: ("cache", "empty"),
    text_file: ("source", "not an image: extension '.txt'"),
    text_named_png: ("cache", "not an image of an accepted format"),
    too_small: ("cache", "too small"),
    dicom_no_pixels: ("cache", "no pixel data"),
    nan_tiff: ("cache", "NaN/inf"),
    inf_tiff: ("cache", "NaN/inf"),
}
SYSTEM = [ds_store, thumbs_db]
GOOD = [
    png_named_jpg,
    dicom_named_png,
    tiff_16bit,
    cmyk_jpeg,
    exif_rotated,
    dicom_monochrome1,
    huge_8000,
]


def class_tree(root: Path, writer: Callable[[Path], Path]) -> tuple[list[Path], Path]:
    """One good 40 x 40 PNG per class, plus the hard input in ``normal/``."""
    good = []
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        good.append(root / name / "good.png")
        Image.fromarray(noise((40, 40))).save(good[-1])
    return good, writer(root / "normal")


def run_skip(root: Path, cache_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Source + cache with ``skip``: the kept paths and everything listed as skipped."""
    source = FolderSource(root, on_bad_image="skip")
    paths = [s.path for s in source.samples(CLASSES)]
    result = PreprocessedCache(cache_dir, image_size=32, workers=1).prepare(paths, "skip")
    assert isinstance(result, PrepareResult) and len(result.digests) == len(paths)
    kept = [p for p, d in zip(paths, result.digests, strict=True) if d is not None]
    return kept, source.skipped + result.skipped


@pytest.mark.parametrize("writer", list(BAD), ids=lambda w: w.__name__)
def test_bad_file_policy(tmp_path: Path, writer: Callable[[Path], Path]) -> None:
    stage, reason = BAD[writer]
    good, bad = class_tree(tmp_path / "root", writer)

    kept, skipped = run_skip(tmp_path / "root", tmp_path / "cache")
    assert kept == sorted(good, key=str)
    assert [p for p, _ in skipped] == [bad]
    assert re.search(reason, skipped[0][1]), skipped

    if stage == "source":
        with pytest.raises(DataSourceError, match="not images") as info:
            FolderSource(tmp_path / "root").samples(CLASSES)
    else:
        paths = [s.path for s in FolderSource(tmp_path / "root").samples(CLASSES)]
        assert bad in paths
        with pytest.raises(ImageReadError, match=reason) as info:
            PreprocessedCache(tmp_path / "cache2", image_size=32, workers=1).prepare(paths)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("writer", SYSTEM, ids=lambda w: w.__name__)
def test_system_files_always_listed(
    tmp_path: Path, writer: Callable[[Path], Path], policy: str
) -> None:
    good, bad = class_tree(tmp_path, writer)
    source = FolderSource(tmp_path, on_bad_image=policy)
    assert [s.path for s in source.samples(CLASSES)] == sorted(good, key=str)
    assert source.skipped == [(bad, "system file")]


@pytest.mark.parametrize("writer", GOOD, ids=lambda w: w.__name__)
def test_hard_but_good_file_is_kept(tmp_path: Path, writer: Callable[[Path], Path]) -> None:
    good, hard = class_tree(tmp_path / "root", writer)
    kept, skipped = run_skip(tmp_path / "root", tmp_path / "cache")
    assert kept == sorted([*good, hard], key=str)
    assert skipped == []


def test_same_bad_content_twice_lists_both(tmp_path: Path) -> None:
    first, second = zero_byte(tmp_path), tmp_path / "empty2.png"
    second.touch()
    cache = PreprocessedCache(tmp_path / "cache", image_size=32, workers=1)
    result = cache.prepare([first, second], on_bad_image="skip")
    assert result.digests == [None, None]
    assert [p for p, _ in result.skipped] == [first, second]
    with pytest.raises(ImageReadError, match="empty") as info:
        cache.prepare([second, first])
    assert str(second) in str(info.value)


def test_stray_file_in_root(tmp_path: Path) -> None:
    good, _ = class_tree(tmp_path, ds_store)
    stray = tmp_path / "labels.xlsx"
    stray.write_bytes(b"PK")
    with pytest.raises(DataSourceError, match="directly in the root") as info:
        FolderSource(tmp_path).samples(CLASSES)
    assert str(stray) in str(info.value)
    source = FolderSource(tmp_path, on_bad_image="skip")
    assert [s.path for s in source.samples(CLASSES)] == sorted(good, key=str)
    assert (stray, "not in a class folder (lies directly in the root)") in source.skipped


def test_manifest_missing_file_policy(tmp_path: Path) -> None:
    Image.fromarray(noise((40, 40))).save(tmp_path / "a.png")
    csv = tmp_path / "m.csv"
    csv.write_text("image,label\na.png,normal\ngone.png,osteopenia\n")
    with pytest.raises(DataSourceError, match="line 3: image 'gone.png' does not exist"):
        ManifestSource(csv).samples(CLASSES)
    source = ManifestSource(csv, on_bad_image="skip")
    assert [s.path for s in source.samples(CLASSES)] == [tmp_path / "a.png"]
    ((path, reason),) = source.skipped
    assert path == tmp_path / "gone.png" and reason.startswith("line 3: image 'gone.png'")


def test_manifest_skip_keeps_other_row_errors(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("image,label\ngone.png,osteopetrosis\n")
    with pytest.raises(DataSourceError, match="Unknown class 'osteopetrosis'"):
        ManifestSource(csv, on_bad_image="skip").samples(CLASSES)


def test_manifest_all_rows_skipped_raises(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("image,label\ngone.png,normal\n")
    with pytest.raises(DataSourceError, match="all 1 row"):
        ManifestSource(csv, on_bad_image="skip").samples(CLASSES)


@pytest.mark.parametrize(
    "make",
    [
        lambda p, v: FolderSource(p, on_bad_image=v),
        lambda p, v: ManifestSource(p / "m.csv", on_bad_image=v),
        lambda p, v: PreprocessedCache(p, image_size=32).prepare([], on_bad_image=v),
    ],
    ids=["folder", "manifest", "cache"],
)
def test_on_bad_image_is_validated(tmp_path: Path, make: Callable[[Path, str], object]) -> None:
    expected = "Expected argument `on_bad_image` to be one of ['error', 'skip'], but got 'ignore'."
    with pytest.raises(ConfigError) as info:
        make(tmp_path, "ignore")
    assert str(info.value) == expected

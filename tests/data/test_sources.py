"""Tests of osteolightning.data.sources on real files written to tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.data.folders import FolderSource
from osteolightning.data.sources import (
    CLASS_ALIASES,
    ManifestSource,
    normalize_class_name,
    resolve_class,
)
from osteolightning.errors import ConfigError, DataSourceError

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def write_png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)
    return path


def write_dicom_stub(path: Path) -> Path:
    """A file with the DICOM magic; sources check the magic, they do not decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return path


# ------------------------------------------------------------------------ class names


@pytest.mark.parametrize(
    ("name", "expected"),
    [("  Low-Bone Mass ", "low_bone_mass"), ("OSTEOPENIA", "osteopenia"), ("a  b", "a_b")],
)
def test_normalize_class_name(name: str, expected: str) -> None:
    assert normalize_class_name(name) == expected


def test_resolve_class_case_and_aliases() -> None:
    assert resolve_class("Normal", CLASSES) == 0
    assert resolve_class("HEALTHY", CLASSES) == 0
    assert resolve_class("low bone mass", CLASSES) == 1
    assert resolve_class("Low-BMD", CLASSES) == 1
    assert resolve_class("osteoporotic", CLASSES) == 2
    for canonical, aliases in CLASS_ALIASES.items():
        for alias in aliases:
            assert resolve_class(alias, CLASSES) == CLASSES.index(canonical)


def test_resolve_class_configured_alias_name() -> None:
    # A run may name its classes by an alias; the canonical name still finds them.
    assert resolve_class("normal", ["Healthy", "Osteoporotic"]) == 0
    assert resolve_class("osteoporosis", ["Healthy", "Osteoporotic"]) == 1


def test_resolve_class_unknown_suggests() -> None:
    with pytest.raises(DataSourceError) as info:
        resolve_class("osteopeina", CLASSES)
    message = str(info.value)
    assert "'osteopeina'" in message
    assert "did you mean 'osteopenia'" in message
    assert "osteoporosis (or osteoporotic, porosis)" in message


def test_resolve_class_rejects_duplicate_class_names() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        resolve_class("normal", ["Normal", "normal"])


# ----------------------------------------------------------------------- FolderSource


def test_folder_tree_with_aliases_case_nesting_and_system_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "knees"
    a = write_png(root / "Normal" / "n1.png")
    b = write_png(root / "Normal" / "batch 2" / "deeper" / "n2.JPG")
    c = write_png(root / "OSTEOPENIA" / "op1.tif")
    d = write_dicom_stub(root / "osteoporotic" / "IM0001")  # extension-less DICOM
    e = write_png(root / "osteoporotic" / "os1.jpeg")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "Normal" / "Thumbs.db").write_bytes(b"\0")
    (root / "OSTEOPENIA" / "._op1.tif").write_bytes(b"\0")
    write_png(root / "OSTEOPENIA" / ".hidden" / "skip.png")

    source = FolderSource(root)
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.sources"):
        samples = source.samples(CLASSES)

    assert [s.path for s in samples] == sorted([a, b, c, d, e], key=str)
    assert {s.path.name: s.label for s in samples} == {
        "n1.png": 0,
        "n2.JPG": 0,
        "op1.tif": 1,
        "IM0001": 2,
        "os1.jpeg": 2,
    }
    assert all(s.path.is_absolute() and s.mask is None for s in samples)
    assert "Skipped 4 file(s)/folder(s)" in caplog.text
    assert source.skipped == [  # nothing is dropped silently: system entries are listed
        (root / ".DS_Store", "system file"),
        (root / "Normal" / "Thumbs.db", "system file"),
        (root / "OSTEOPENIA" / "._op1.tif", "system file"),
        (root / "OSTEOPENIA" / ".hidden", "system folder"),
    ]


def test_folder_source_is_deterministic(tmp_path: Path) -> None:
    for i in range(5):
        write_png(tmp_path / "osteopenia" / f"{i}.png")
        write_png(tmp_path / "normal" / f"{i}.png")
    source = FolderSource(tmp_path)
    assert source.samples(CLASSES) == source.samples(CLASSES)
    assert "class-folder tree" in source.describe() and str(tmp_path) in source.describe()


def test_folder_source_relative_root_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_png(tmp_path / "data" / "normal" / "a.png")
    monkeypatch.chdir(tmp_path)
    (sample,) = FolderSource("data").samples(CLASSES)
    assert sample.path == tmp_path / "data" / "normal" / "a.png"


def test_unknown_class_folder(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "a.png")
    write_png(tmp_path / "osteopeina" / "b.png")
    with pytest.raises(DataSourceError) as info:
        FolderSource(tmp_path).samples(CLASSES)
    message = str(info.value)
    assert str(tmp_path / "osteopeina") in message
    assert "did you mean 'osteopenia'" in message
    assert "normal (or healthy" in message


def test_empty_class_folder_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_png(tmp_path / "normal" / "a.png")
    (tmp_path / "osteoporosis").mkdir()
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.sources"):
        samples = FolderSource(tmp_path).samples(CLASSES)
    assert len(samples) == 1
    assert "osteopenia, osteoporosis" in caplog.text


def test_alias_folders_are_merged_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_png(tmp_path / "normal" / "a.png")
    write_png(tmp_path / "healthy" / "b.png")
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.sources"):
        samples = FolderSource(tmp_path).samples(CLASSES)
    assert [s.label for s in samples] == [0, 0]
    assert "merged" in caplog.text


@pytest.mark.parametrize("case", ["missing", "empty", "only_empty_folders", "only_system"])
def test_root_without_images(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    if case != "missing":
        root.mkdir()
    if case == "only_empty_folders":
        (root / "normal").mkdir()
        (root / "osteopenia" / "sub").mkdir(parents=True)
    if case == "only_system":
        (root / "normal").mkdir()
        (root / "normal" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataSourceError) as info:
        FolderSource(root).samples(CLASSES)
    assert str(root) in str(info.value)
    assert "ROOT/<class>/*.png|jpg|jpeg|tif|dcm" in str(info.value)


def test_non_image_file_raises(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "a.png")
    notes = tmp_path / "normal" / "sub" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("reader comments")
    with pytest.raises(DataSourceError, match="not images") as info:
        FolderSource(tmp_path).samples(CLASSES)
    assert str(notes) in str(info.value)


def test_stray_file_in_root_raises(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "a.png")
    stray = write_png(tmp_path / "lost.png")
    with pytest.raises(DataSourceError, match="directly in the root") as info:
        FolderSource(tmp_path).samples(CLASSES)
    assert str(stray) in str(info.value)
    assert "ROOT/<class>/" in str(info.value)


# --------------------------------------------------------------------- ManifestSource


def write_csv(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_manifest_all_columns(tmp_path: Path) -> None:
    a = write_png(tmp_path / "data" / "img" / "a.png")
    b = write_png(tmp_path / "data" / "img" / "b.png")
    c = write_png(tmp_path / "elsewhere" / "c.png")  # referenced by absolute path
    m = write_png(tmp_path / "data" / "masks" / "a.png", 255)
    csv = write_csv(
        tmp_path / "data" / "manifest.csv",
        "Image, Label ,mask,t_score,patient_id,age,sex,bmi,side\n"
        " img/b.png , 2 ,, -2.9 ,P2,71,F,22.5,left\n"
        "img/a.png,Healthy,masks/a.png,-0.4,P1,55,M,27.1,right\n"
        "\n"
        f'"{c}",osteopenic,,NaN,,,,,\n',
        bom=True,
    )
    samples = ManifestSource(csv).samples(CLASSES)
    assert [s.path for s in samples] == sorted([a, b, c], key=str)
    by_name = {s.path.name: s for s in samples}
    assert by_name["a.png"].label == 0
    assert by_name["a.png"].mask == m
    assert by_name["a.png"].t_score == pytest.approx(-0.4)
    assert by_name["a.png"].patient_id == "P1"
    assert by_name["a.png"].extra == {"age": "55", "sex": "M", "bmi": "27.1", "side": "right"}
    assert by_name["b.png"].label == 2 and by_name["b.png"].mask is None
    assert by_name["b.png"].t_score == pytest.approx(-2.9)
    assert by_name["c.png"].label == 1
    assert by_name["c.png"].t_score is None and by_name["c.png"].patient_id is None
    assert all(s.path.is_absolute() for s in samples)
    assert str(csv) in ManifestSource(csv).describe()


def test_manifest_minimal_columns(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    csv = write_csv(tmp_path / "m.csv", "image,label\nx.png,0\n")
    (sample,) = ManifestSource(csv).samples(CLASSES)
    assert (sample.label, sample.mask, sample.t_score, sample.extra) == (0, None, None, {})


def test_manifest_missing_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", "path,class\nx.png,normal\n")
    with pytest.raises(DataSourceError) as info:
        ManifestSource(csv).samples(CLASSES)
    message = str(info.value)
    assert str(csv) in message
    assert "Found columns: path, class" in message
    assert "required: image, label" in message


@pytest.mark.parametrize(("text", "match"), [("", "is empty"), ("image,label\n", "no rows")])
def test_manifest_empty(tmp_path: Path, text: str, match: str) -> None:
    csv = write_csv(tmp_path / "m.csv", text)
    with pytest.raises(DataSourceError, match=match) as info:
        ManifestSource(csv).samples(CLASSES)
    assert str(csv) in str(info.value)


def test_manifest_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist") as info:
        ManifestSource(tmp_path / "nope.csv").samples(CLASSES)
    assert str(tmp_path / "nope.csv") in str(info.value)


def test_manifest_missing_image_names_line(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "m.csv", "image,label\na.png,normal\ngone.png,normal\n")
    with pytest.raises(DataSourceError) as info:
        ManifestSource(csv).samples(CLASSES)
    message = str(info.value)
    assert str(csv) in message
    assert "line 3: image 'gone.png' does not exist" in message
    assert str(tmp_path / "gone.png") in message


def test_manifest_missing_mask(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "m.csv", "image,label,mask\na.png,normal,masks/a.png\n")
    with pytest.raises(DataSourceError, match="line 2: mask 'masks/a.png' does not exist"):
        ManifestSource(csv).samples(CLASSES)


def test_manifest_unknown_and_empty_label(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "m.csv", "image,label\na.png,osteoporsis\na.png,\na.png,3\n")
    with pytest.raises(DataSourceError) as info:
        ManifestSource(csv).samples(CLASSES)
    message = str(info.value)
    assert "line 2: Unknown class 'osteoporsis'; did you mean 'osteoporosis'" in message
    assert "line 3: empty label" in message
    assert "line 4: label 3 is not a class index 0..2" in message


def test_manifest_bad_t_score(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    csv = write_csv(
        tmp_path / "m.csv", "image,label,T-Score\na.png,normal,-1.2\na.png,normal,low\n"
    )
    with pytest.raises(DataSourceError, match="line 3: t_score 'low' is not a number") as info:
        ManifestSource(csv).samples(CLASSES)
    assert str(csv) in str(info.value)


def test_manifest_reports_bad_rows_together(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    rows = "".join(f"missing{i}.png,normal\n" for i in range(15))
    csv = write_csv(tmp_path / "m.csv", "image,label\na.png,normal\n" + rows + "a.png,x,extra\n")
    with pytest.raises(DataSourceError) as info:
        ManifestSource(csv).samples(CLASSES)
    message = str(info.value)
    assert "has 16 bad row(s)" in message
    for line in range(3, 13):  # the first ten bad rows are listed
        assert f"line {line}:" in message
    assert "line 13:" not in message
    assert "... and 6 more" in message


def test_manifest_row_problems_are_combined(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", "image,label,t_score\ngone.png,nope,abc\n")
    with pytest.raises(DataSourceError) as info:
        ManifestSource(csv).samples(CLASSES)
    message = str(info.value)
    assert "line 2: image 'gone.png' does not exist" in message
    assert "Unknown class 'nope'" in message
    assert "t_score 'abc' is not a number" in message


def test_manifest_wrong_field_count(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "m.csv", "image,label\na.png,normal,oops\n")
    with pytest.raises(DataSourceError, match="line 2: 3 field"):
        ManifestSource(csv).samples(CLASSES)

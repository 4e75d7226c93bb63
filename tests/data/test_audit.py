import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from osteolightning.data.audit import audit
from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.folders import FolderSource
from osteolightning.data.phantom import CLASS_NAMES, generate_knee
from osteolightning.data.sources import ManifestSource
from osteolightning.errors import ConfigError, DataSourceError
from tests.helpers import write_dicom

SHARED_DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
KNEE_SET = SHARED_DATASETS / "knee-osteoporosis"


def _save(image: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path, **kwargs)
    return path


def make_tree(root: Path, planted: bool = True) -> Path:
    """Phantom knees in class folders; ``planted`` adds a conflicting exact copy, a
    re-saved near copy and a truncated file."""
    knees = [generate_knee(seed=0, index=i, size=96).image for i in range(6)]
    for i, knee in enumerate(knees):
        _save(knee, root / CLASS_NAMES[i % 3] / f"k{i}.png")
    if planted:
        shutil.copy(root / "normal" / "k0.png", root / "osteopenia" / "k0_copy.png")
        pil = Image.open(root / "osteoporosis" / "k2.png").resize((90, 90))
        pil.save(root / "osteoporosis" / "k2_resaved.jpg", quality=85)
        data = (root / "normal" / "k3.png").read_bytes()
        (root / "normal" / "broken.png").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("audit") / "knees")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> PreprocessedCache:
    return PreprocessedCache(tmp_path_factory.mktemp("cache"), image_size=128, workers=2)


def write_splits(path: Path, tree: Path, moved: dict[str, str]) -> Path:
    """A run's splits.csv: every image in train except those in ``moved`` (name → split)."""
    rows = []
    for image in sorted(tree.rglob("*.*")):
        split = moved.get(image.name, "train")
        patient = "P1" if image.name in ("k1.png", "k4.png") else ""
        rows.append([split, str(image), image.parent.name, patient, 0, ""])
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "label", "patient_id", "group", "sha1"])
        writer.writerows(rows)
    return path


def test_audit_finds_each_planted_problem(tree, cache):
    report = audit(FolderSource(tree), CLASS_NAMES, cache)
    assert report.n_images == 9
    assert report.class_counts == {"normal": 3, "osteopenia": 3, "osteoporosis": 3}
    assert report.formats == {"PNG": 8, "JPEG": 1} and report.modes == {"L": 9}
    assert report.sizes["height"] == {"min": 90, "median": 96.0, "max": 96}

    [exact] = report.exact_duplicates
    assert [Path(f).name for f in exact.files] == ["k0.png", "k0_copy.png"]
    assert exact.labels == ["normal", "osteopenia"] and exact.conflict
    [near] = report.near_duplicates
    assert [Path(f).name for f in near.files] == ["k2.png", "k2_resaved.jpg"]
    assert near.labels == ["osteoporosis"] * 2 and not near.conflict
    assert report.label_conflicts == [exact]
    [bad] = report.unreadable
    assert Path(bad["path"]).name == "broken.png" and "truncated" in bad["reason"]

    assert report.leakage is None
    assert report.has_problems() and report.has_problems(strict=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["label_conflicts"][0]["files"] == exact.files
    assert data["problems"] == ["1 label-conflict group(s)", "1 unreadable file(s)"]

    out = io.StringIO()
    report.render(Console(file=out, width=160))
    text = out.getvalue()
    assert "LABEL CONFLICT" in text and "broken.png" in text and "k2_resaved.jpg" in text


def test_leakage_of_copies_and_patients_across_splits(tree, cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_splits(run_dir / "splits.csv", tree, {"k0_copy.png": "test", "k4.png": "val"})
    report = audit(FolderSource(tree), CLASS_NAMES, cache, splits=run_dir)
    leaks = {leak.kind: leak for leak in report.leakage}
    assert set(leaks) == {"exact", "patient"}
    assert leaks["exact"].splits == ["train", "test"]
    assert leaks["patient"].key == "P1" and leaks["patient"].splits == ["train", "val"]
    assert report.not_in_splits == 0 and "2 group(s) leak across splits" in report.problems()


def test_clean_tree_without_near_search(tmp_path, cache):
    tree = make_tree(tmp_path / "clean", planted=False)
    manifest = tmp_path / "clean.csv"
    lines = ["image,label"] + [
        f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(tree.rglob("*.png"))
    ]
    manifest.write_text("\n".join(lines) + "\n")
    report = audit(ManifestSource(manifest), CLASS_NAMES, cache, near_duplicates=False)
    assert report.n_images == 6 and report.near_duplicates is None
    assert not report.exact_duplicates and not report.has_problems()


def test_bad_arguments(tree, cache, tmp_path):
    with pytest.raises(ConfigError, match="`max_distance`"):
        audit(FolderSource(tree), CLASS_NAMES, cache, max_distance=70)
    with pytest.raises(DataSourceError, match="splits.csv"):
        audit(FolderSource(tree), CLASS_NAMES, cache, splits=tmp_path / "nowhere")


def test_dicom_headers_and_unreadable_files(tmp_path):
    tree = make_tree(tmp_path / "knees")
    knee = generate_knee(seed=0, index=7, size=96).image
    write_dicom(tree / "normal" / "k7.dcm", np.rint(knee[:80] * 4095))
    data = (tree / "normal" / "k0.png").read_bytes()
    (tree / "osteopenia" / "broken2.png").write_bytes(data[:100])
    cache = PreprocessedCache(tmp_path / "cache", image_size=64, workers=1)
    report = audit(FolderSource(tree), CLASS_NAMES, cache, near_duplicates=False)
    assert report.formats["DICOM"] == 1 and report.modes["DICOM"] == 1
    assert report.sizes["height"]["min"] == 80
    assert sorted(Path(b["path"]).name for b in report.unreadable) == ["broken.png", "broken2.png"]


@pytest.mark.slow
@pytest.mark.skipif(
    not KNEE_SET.is_dir(), reason=f"the real knee set is not on this machine ({KNEE_SET})"
)
def test_real_knee_set_has_exact_duplicates_with_label_conflicts():
    # A persistent cache (as the CLI's default): decoding 182 large JPEGs once takes ~20 s.
    cache_root = Path(os.environ.get("OSTEO_CACHE_DIR", Path(__file__).parents[2] / ".cache"))
    cache = PreprocessedCache(cache_root / "preprocessed", image_size=128)
    report = audit(FolderSource(KNEE_SET), CLASS_NAMES, cache)
    assert report.n_images == 182 and not report.unreadable
    assert len(report.exact_duplicates) == 17
    assert sum(g.conflict for g in report.exact_duplicates) == 7

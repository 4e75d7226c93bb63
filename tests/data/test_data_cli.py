import csv
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from osteolightning.data.cli import main
from osteolightning.data.phantom import CLASS_NAMES, generate_knee


def test_phantom_verb_writes_a_data_set(tmp_path):
    out = tmp_path / "ph"
    assert main(["phantom", f"out={out}", "n=6", "seed=3", "size=64", "workers=1"]) == 0
    with open(out / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all((out / r["image"]).is_file() for r in rows)


def test_bad_arguments_are_reported(tmp_path, capsys):
    assert main(["phantom", f"out={tmp_path / 'a'}", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err
    assert main(["phantom", "n=3"]) == 2
    assert "out=" in capsys.readouterr().err
    assert main(["fantom"]) == 2
    assert main(["phantom", f"out={tmp_path / 'b'}", "n=0"]) == 2
    assert "`n`" in capsys.readouterr().err


def test_console_entry_runs_as_module(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "osteolightning.data.cli",
            "phantom",
            f"out={tmp_path / 'c'}",
            "n=2",
            "size=64",
            "workers=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "phantom.json").is_file()


def make_tree(root, planted=True):
    """Four phantom knees in class folders; ``planted`` copies one into another class."""
    for i in range(4):
        path = root / CLASS_NAMES[i % 3] / f"k{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = generate_knee(seed=0, index=i, size=96).image
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path)
    if planted:
        (root / "osteopenia" / "k0_copy.png").write_bytes((root / "normal" / "k0.png").read_bytes())
    return root


def write_splits(path, tree, moved):
    """A splits.csv with every image in train except those in ``moved`` (name → split)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "label", "patient_id", "group", "sha1"])
        for image in sorted(tree.rglob("*.png")):
            writer.writerow([moved.get(image.name, "train"), image, image.parent.name, "", 0, ""])
    return path


def test_audit_verb_strict_fails_on_conflicts_and_leakage(tmp_path, capsys, caplog):
    tree = make_tree(tmp_path / "knees")
    splits = write_splits(tmp_path / "splits.csv", tree, {"k0_copy.png": "test"})
    out = tmp_path / "audit.json"
    args = [f"cache_dir={tmp_path / 'cache'}", "image_size=64"]
    code = main(["audit", str(tree), "--strict", f"out={out}", f"splits={splits}", *args])
    assert code == 1
    captured = capsys.readouterr()
    assert "LABEL CONFLICT" in captured.out
    assert "label-conflict" in caplog.records[-1].getMessage()  # the last line says why
    report = json.loads(out.read_text())
    assert report["n_images"] == 5 and report["leakage"][0]["splits"] == ["train", "test"]
    # Without --strict the same findings are reported but do not fail the command.
    assert main(["audit", f"root={tree}", f"out={out}", *args]) == 0


def test_audit_verb_passes_a_clean_tree(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "clean", planted=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OSTEO_CACHE_DIR", str(tmp_path / "env-cache"))
    assert main(["audit", str(tree), "--strict", "image_size=64"]) == 0
    assert not list(tmp_path.glob("*.json"))  # audit.json only where asked (out=)
    assert (tmp_path / "env-cache" / "preprocessed").is_dir()  # OSTEO_CACHE_DIR honoured


def test_audit_verb_bad_arguments(tmp_path, capsys):
    assert main(["audit", str(tmp_path), "max_distance=99"]) == 2
    assert "`max_distance`" in capsys.readouterr().err
    assert main(["audit", str(tmp_path), "--strikt"]) == 2
    assert "--strikt" in capsys.readouterr().err
    assert main(["audit", str(tmp_path), "extra"]) == 2
    assert "extra" in capsys.readouterr().err
    assert main(["audit"]) == 2
    assert "root=" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "missing")]) == 1  # a data error, not an argument
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err

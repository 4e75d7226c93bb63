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


def write_splits(path, tree, moved, omit=()):
    """A splits.csv with every image in train except those in ``moved`` (name → split) and
    those in ``omit`` (left out, as a run leaves out the copies it drops)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "label", "patient_id", "group", "sha1"])
        for image in sorted(p for p in tree.rglob("*.png") if p.name not in omit):
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


def test_each_verb_has_help(capsys):
    assert main(["audit", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("osteo-data audit ROOT") and "--strict" in out and "out " in out
    assert main(["phantom", "-h"]) == 0
    assert "bit_depth" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "osteo-data VERB --help" in capsys.readouterr().out


def test_strict_with_splits_judges_the_run_s_split(tmp_path, caplog):
    """A label conflict the run dropped (its files are not in splits.csv) passes --strict; one
    it kept in its split fails."""
    tree = make_tree(tmp_path / "knees")  # normal/k0.png == osteopenia/k0_copy.png
    args = [f"cache_dir={tmp_path / 'cache'}", "image_size=64", "near_duplicates=false"]
    dropped = write_splits(tmp_path / "dropped.csv", tree, {}, omit={"k0.png", "k0_copy.png"})
    out = tmp_path / "audit.json"
    assert main(["audit", str(tree), "--strict", f"splits={dropped}", f"out={out}", *args]) == 0
    report = json.loads(out.read_text())
    assert len(report["label_conflicts"]) == 1 and report["conflicts_in_split"] == []
    kept = write_splits(tmp_path / "kept.csv", tree, {})
    assert main(["audit", str(tree), "--strict", f"splits={kept}", *args]) == 1
    assert "1 label-conflict group(s) in the run's split" in caplog.records[-1].getMessage()
    assert main(["audit", str(tree), "--strict", *args]) == 1  # no splits: every conflict
    elsewhere = write_splits(tmp_path / "other.csv", make_tree(tmp_path / "copy"), {})
    assert main(["audit", str(tree), "--strict", f"splits={elsewhere}", *args]) == 1
    assert "none of the audited images" in caplog.records[-1].getMessage()


def test_audit_warns_about_suspicious_images(tmp_path):
    tree = make_tree(tmp_path / "knees", planted=False)
    knee = generate_knee(seed=0, index=9, size=96).image
    Image.fromarray(np.rint(knee * 4095).astype(np.uint16)).save(tree / "normal" / "deep.png")
    Image.fromarray(np.full((40, 400), 90, np.uint8)).save(tree / "osteopenia" / "strip.png")
    out = tmp_path / "audit.json"
    args = [f"cache_dir={tmp_path / 'cache'}", "image_size=64", f"out={out}"]
    assert main(["audit", str(tree), "--strict", *args]) == 0  # warnings do not fail --strict
    findings = {f["kind"]: f for f in json.loads(out.read_text())["findings"]}
    assert set(findings) == {
        "partial_bit_depth",
        "extreme_aspect_ratio",
        "few_images",
        "blank_image",
    }
    assert findings["partial_bit_depth"]["files"] == [str(tree / "normal" / "deep.png")]
    assert findings["extreme_aspect_ratio"]["files"] == [str(tree / "osteopenia" / "strip.png")]
    assert findings["blank_image"]["files"] == [str(tree / "osteopenia" / "strip.png")]  # one gray
    assert "osteoporosis=1" in findings["few_images"]["message"]


def test_errors_reach_the_terminal_without_a_traceback(tmp_path, capsys):
    """Run as the console script would: a data error exits 1 with its message alone."""
    result = subprocess.run(
        [sys.executable, "-m", "osteolightning.data.cli", "audit", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "nowhere" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert main(["audit", str(tmp_path), "image_size=8"]) == 2  # a bad argument
    err = capsys.readouterr().err
    assert err.startswith("osteo-data: error: Expected argument `image_size`")
    assert "Traceback" not in err

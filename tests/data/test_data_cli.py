import csv
import subprocess
import sys

from osteolightning.data.cli import main


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

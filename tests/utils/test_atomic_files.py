"""Atomic results files get the permissions a plain ``open()`` gives, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

from osteolightning.utils.files import atomic_write_json, atomic_write_text, process_umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_results_files_honour_the_umask_like_open(tmp_path):
    umask = process_umask()
    assert umask == os.umask(umask)  # read without changing it
    written = atomic_write_json(tmp_path / "metrics.json", {"test/acc": 0.5})
    with open(tmp_path / "plain.txt", "w") as handle:  # the reference: a normal open()
        handle.write("x")
    assert _mode(written) == _mode(tmp_path / "plain.txt") == 0o666 & ~umask
    if umask == 0o022:
        assert _mode(written) == 0o644  # readable by the group, like the checkpoints


def test_an_existing_file_keeps_its_mode(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

"""Progress: a few log lines off a terminal (quarters), nothing for short loops, a bar on one."""

from __future__ import annotations

import logging

from osteolightning.utils import progress as progress_module
from osteolightning.utils.progress import progress

log = logging.getLogger("test-progress")


def _run(total: int) -> None:
    with progress(total, "Preprocessing images", log) as advance:
        for _ in range(total):
            advance()


def test_log_lines_at_each_quarter_off_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="test-progress"):
        _run(200)
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "Preprocessing images: 50/200 (25 %)",
            "Preprocessing images: 100/200 (50 %)",
            "Preprocessing images: 150/200 (75 %)",
            "Preprocessing images: 200/200 (100 %)",
        ]
        caplog.clear()
        _run(10)  # short work: quiet
        _run(0)
        assert not caplog.records


def test_a_bar_on_a_terminal(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "_on_terminal", lambda: True)
    with caplog.at_level(logging.INFO, logger="test-progress"):
        _run(150)
    assert not caplog.records  # the bar, not log lines

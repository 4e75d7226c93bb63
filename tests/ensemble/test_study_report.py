"""``report.html``: one self-contained file (every figure a decodable embedded PNG, no script,
no link outside it) with every section, and it renders in a real browser (headless Chromium,
from the system packages; skipped with the reason where none is installed)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.ensemble.leaderboard import run_leaderboard
from tests.ensemble.test_comparisons import make_study

BROWSER = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)
SECTIONS = (
    "audit",
    "leaderboard",
    "comparisons",
    "critical-difference",
    "roc",
    "reliability",
    "spread",
    "configs",
    "failed",
    "reproduce",
)


class _Parts(HTMLParser):
    """The tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Parts:
    parts = _Parts()
    parts.feed(html)
    return parts


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a 3-backbone x 5-fold sweep with a mean ensemble, and a fourth backbone
    whose one job failed."""
    root = tmp_path_factory.mktemp("study") / "sweep"
    make_study(root)
    failed = root / "15"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- model/backbone=broken\n- data.fold=0\n")
    (failed / "error.json").write_text(
        json.dumps({"error": "CUDA out of memory", "type": "RuntimeError"})
    )
    _, files = run_leaderboard(root, methods=["mean"], n_resamples=50)
    return files["report"]


def test_the_report_is_one_self_contained_file_with_every_section(report):
    html = report.read_text(encoding="utf-8")
    parts = _parse(html)
    tags = [t for t, _ in parts.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", html)
    assert {a["id"] for t, a in parts.tags if t == "h2"} == set(SECTIONS)
    images = [a for t, a in parts.tags if t == "img"]
    assert len(images) == 5  # leaderboard, CD diagram, ROC, reliability, per-fold spread
    for attrs in images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        png = Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix) :])))
        png.load()  # a complete, decodable image
        assert min(png.size) > 100 and np.asarray(png.convert("L")).std() > 5  # not blank
    text = " ".join(parts.text)
    assert "strong is better than" in text and "Friedman test over" in text
    assert "CUDA out of memory" in text  # the failed job and why
    assert "osteo-train hydra.mode=RUN model/backbone=broken data.fold=0" in text
    assert "osteo-train hydra.mode=RUN model/backbone=weak seed=0 data.fold=4" in text
    assert "'methods=[mean]' 'members=[strong,middle,weak]'" in text  # the ensemble row
    assert "osteo-train reproduce=" in text and "model.net.name" in text  # config differences
    assert "/data/.DS_Store" in text and "system file" in text  # the audit's skipped file


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [BROWSER, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(
    BROWSER is None,
    reason="no headless browser: install Debian's `chromium` (apt-get install -y chromium; "
    ".ci/run does) to check that report.html renders",
)
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = _parse(dom.stdout)
    source = _parse(report.read_text(encoding="utf-8"))
    for tag in ("table", "img", "h2", "pre"):
        count = sum(t == tag for t, _ in source.tags)
        assert count > 0 and sum(t == tag for t, _ in rendered.tags) == count, tag
    assert "Pairwise comparisons" in dom.stdout and "strong is better than" in dom.stdout
    shot = tmp_path / "report.png"
    result = _chromium(
        ["--window-size=1280,12000", f"--screenshot={shot}", url], tmp_path / "profile"
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # matplotlib's default blue (31, 119, 180) is in every figure and nowhere in the page's style:
    # the embedded PNGs were decoded and drawn
    blue = (np.abs(pixels - [31, 119, 180]).max(axis=1) <= 8).sum()
    assert blue > 2000, blue
    assert len(np.unique(pixels[::7], axis=0)) > 200  # figures, not a blank or text-only page

import warnings

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from osteolightning.metrics.figures import (
    plot_confusion_matrix,
    plot_reliability,
    plot_roc,
    write_figures,
)

CLASSES = ["normal", "osteopenia", "osteoporosis"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _predictions(n=90, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    return labels, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_write_figures_writes_valid_pngs(tmp_path):
    paths = write_figures(*_predictions(), CLASSES, tmp_path / "figures")
    assert set(paths) == {"confusion_matrix", "roc", "reliability"}
    for name, path in paths.items():
        assert path == tmp_path / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0


@pytest.mark.parametrize("plot", [plot_confusion_matrix, plot_roc, plot_reliability])
def test_plots_return_figures_with_class_names(plot):
    fig = plot(*_predictions(), CLASSES)
    assert isinstance(fig, Figure)
    text = {t.get_text() for ax in fig.axes for t in [*ax.texts, *ax.get_xticklabels(),
            *ax.get_yticklabels()]}  # fmt: skip
    legends = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts}
    if plot is plot_roc:
        assert any(t.startswith("osteoporosis (AUROC") for t in legends)
    elif plot is plot_confusion_matrix:
        assert set(CLASSES) <= text
    else:
        assert "ECE" in fig.axes[0].get_title()


def test_figures_leave_no_open_figures(tmp_path):
    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "More than 20 figures have been opened"
        for _ in range(25):
            write_figures(*_predictions(30), CLASSES, tmp_path)
    assert plt.get_fignums() == before


def test_roc_skips_an_absent_class(tmp_path):
    labels, probs = _predictions()
    keep = labels != 2
    fig = plot_roc(labels[keep], probs[keep], CLASSES)
    legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
    assert not any(t.startswith("osteoporosis") for t in legend)

"""The fitted-head models (linear probe, texture): real runs on the tiny phantom, the feature
cache, and the head against scikit-learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from osteolightning.errors import ConfigError
from osteolightning.evaluate import evaluate
from osteolightning.models.checkpointing import load_model
from osteolightning.models.components.feature_cache import FeatureCache
from osteolightning.models.components.features import (
    BackboneEmbedder,
    TextureEmbedder,
    probe_net,
    strip_head,
)
from osteolightning.models.linear_fits import fit_logistic
from osteolightning.predict import predict
from osteolightning.train import train
from tests.helpers import run_osteo

#: a linear probe on a small random network: the run contract, in seconds
PROBE = ["debug=tiny", "model=linear_probe", "model/backbone=resnet10t", "model.C=1.0"]


def _csv(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [float(r[key]) for r in csv.DictReader(handle) if r.get(key)]


def test_a_linear_probe_run_is_a_run_like_any_other(make_cfg, class_tree):
    cfg = make_cfg("train", PROBE, run="probe")
    metrics, objects = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/n"] > 0 and "test/auroc_macro_ci95" in saved
    assert Path(saved["ckpt_path"]).name.startswith("epoch_")  # a best checkpoint exists
    for name in ("predictions.csv", "val_predictions.csv", "splits.csv"):
        assert (run_dir / name).is_file()
    # every training image went into the fit (no last batch dropped)
    assert _csv(run_dir, "train/n_fitted") == [len(objects["datamodule"].datasets["train"])]
    # osteo-eval and osteo-predict take its checkpoint
    ckpt = saved["ckpt_path"]
    eval_cfg = make_cfg(
        "eval",
        ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny", f"ckpt_path={ckpt}"]
        + ["data=folder", f"data.root={class_tree}"],
        run="eval",
    )
    assert evaluate(eval_cfg)[0]["test/n"] == len(list(class_tree.rglob("*.png")))
    rows = predict(ckpt, [sorted(class_tree.rglob("*.png"))[0]])
    assert len(rows) == 1 and abs(sum(float(v) for v in rows[0][1:4]) - 1) < 1e-4


def test_a_second_run_embeds_nothing_again(make_cfg):
    first = make_cfg("train", PROBE, run="first")
    train(first)
    second = make_cfg("train", [*PROBE, "model.C=0.1"], run="second")  # another head only
    train(second)
    n_train = _csv(Path(first.paths.output_dir), "train/n_fitted")[0]
    assert _csv(Path(second.paths.output_dir), "train/cache_misses") == [0.0]
    assert _csv(Path(second.paths.output_dir), "train/cache_hits") == [n_train]


def test_the_texture_baseline_runs_and_reloads(make_cfg, class_tree):
    cfg = make_cfg("train", ["debug=tiny", "model=texture", "model.C=auto"], run="texture")
    metrics, _ = train(cfg)
    assert 0 <= metrics["test/f1_macro"] <= 1
    model = load_model(metrics["ckpt_path"])
    image = torch.zeros(2, 1, 64, 64)
    probs = model.predict_proba(image)
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))


def test_the_head_is_scikit_learns_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 12))
    y = np.repeat(np.arange(3), 30)
    x[:, 0] += y  # one informative feature
    fit = fit_logistic(x, y, 3, C=0.3)
    head = probe_head(fit, 12)
    ours = head(torch.as_tensor(x, dtype=torch.float32)).softmax(1).numpy()
    z = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=0.3, class_weight="balanced", max_iter=5000).fit(z, y)
    np.testing.assert_allclose(ours, reference.predict_proba(z), atol=1e-5)


def test_the_binary_head_is_scikit_learns_too():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = np.repeat([0, 2], 30)  # class 1 absent from the training data
    x[:, 1] += y
    fit = fit_logistic(x, y, 3, C=1.0)
    probs = probe_head(fit, 5)(torch.as_tensor(x, dtype=torch.float32)).softmax(1).numpy()
    z = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(z, y)
    np.testing.assert_allclose(probs[:, [0, 2]], reference.predict_proba(z), atol=1e-5)
    assert np.all(probs[:, 1] < 1e-6)  # an absent class gets no probability


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_a_wide_head_is_scikit_learns_on_the_full_features(C):
    """More features than images (an embedding): the fit in the rows' span is the same fit."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(45, 300))
    y = np.repeat(np.arange(3), 15)
    x[:, :5] += y[:, None]
    fit = fit_logistic(x, y, 3, C=C)
    z = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=C, class_weight="balanced", max_iter=20000, tol=1e-10).fit(
        z, y
    )
    new = rng.normal(size=(20, 300)) + np.repeat(np.arange(3), 7)[:20, None] * 0.5
    for data in (x, new):
        ours = probe_head(fit, 300)(torch.as_tensor(data, dtype=torch.float32)).softmax(1)
        zd = (data - x.mean(0)) / x.std(0)
        np.testing.assert_allclose(ours.numpy(), reference.predict_proba(zd), atol=2e-3)


def test_auto_C_searches_grouped_inner_folds():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 4)) + y[:, None] * 2.0
    groups = np.arange(60) // 2  # pairs of copies
    fit = fit_logistic(x, y, 3, C="auto", Cs=(0.001, 1.0), groups=groups, inner_folds=3)
    assert set(fit.inner_scores) == {0.001, 1.0} and fit.C == 1.0  # separable: weak penalty
    with pytest.raises(ConfigError, match="one class only"):
        fit_logistic(x[:20], y[:20], 3)


def probe_head(fit, dim: int):
    from osteolightning.models.components.features import FeatureHead

    head = FeatureHead(torch.nn.Identity(), 3, dim=dim)
    head.set_head(fit.mean, fit.scale, fit.coef, fit.intercept)
    return head.head


def test_a_corrupt_or_foreign_cache_entry_is_computed_again(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("emb", ["img1", "img2"], np.ones((2, 4)))
    assert [v is not None for v in cache.get("emb", ["img1", "img2"])] == [True, True]
    path = tmp_path / "emb" / "im" / "img1.npz"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    (tmp_path / "emb" / "im" / "img2.npz").replace(tmp_path / "emb" / "im" / "img3.npz")
    found = cache.get("emb", ["img1", "img3"])  # img3's file holds img2's vector
    assert found == [None, None] and cache.rebuilt == 2


def test_features_of_every_backbone_kind():
    timm_net = BackboneEmbedder("resnet10t", scales=[64, 96], hflip=True, tiles=2)
    assert timm_net(torch.zeros(2, 1, 128, 128)).shape == (2, timm_net.dim)
    vision = probe_net("alexnet", 3)  # torchvision: its last linear layer removed
    assert vision(torch.zeros(1, 1, 96, 96)).shape == (1, 3)
    texture = TextureEmbedder(tiles=2)
    image = torch.rand(2, 1, 64, 64)
    assert texture(image).shape == (2, texture.dim)
    with pytest.raises(ConfigError, match="no classifier layer"):
        strip_head(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), "plain_cnn")


def test_a_sweep_of_the_two_fitted_recipes_ends_with_its_leaderboard(
    tmp_path, cache_dir, phantom_dir
):
    args = ["-m", "debug=tiny", "model=linear_probe,texture", "++model.C=0.3"]
    done = run_osteo("train", args, tmp_path, cache_dir, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    board = json.loads((sweep / "leaderboard" / "leaderboard.json").read_text())
    names = {row["name"] for row in board["rows"]}
    assert {"linear_probe", "texture"} <= names
    assert any(row["kind"] == "ensemble" for row in board["rows"])

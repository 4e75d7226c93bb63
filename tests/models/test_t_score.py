"""The T-score head: a two-head run on the tiny phantom, its report against scikit-learn /
scipy, conformal intervals, regression-only mode, covariates, osteo-eval and osteo-predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error

from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.regression import empirical_coverage, who_category
from osteolightning.models.classifier import KneeClassifier
from osteolightning.models.components.backbone import create_backbone
from osteolightning.models.targets import who_index
from osteolightning.train import train
from tests.helpers import write_manifest

CLASSES = ["normal", "osteopenia", "osteoporosis"]
TWO_HEADS = ["debug=tiny", "model.t_score_weight=1", "model.covariates=[age,sex,bmi]"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory, cache_dir):
    """One tiny fit + test with a T-score head and covariates."""
    from hydra.core.global_hydra import GlobalHydra

    from osteolightning.utils.config import compose_config

    run_dir = tmp_path_factory.mktemp("t_score") / "run"
    metrics, objects = train(compose_config("train", TWO_HEADS, run_dir, cache_dir))
    GlobalHydra.instance().clear()
    return run_dir, metrics, objects


def test_the_two_head_model_fits_and_tests(two_heads):
    run_dir, metrics, objects = two_heads
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("mae", "rmse", "r", "rho", "ccc", "bias", "loa_low", "loa_high"):
        assert isinstance(saved[f"test/t_score_{key}"], float)
        assert len(saved[f"test/t_score_{key}_ci95"]) == 2
    assert saved["test/t_score_n"] + saved["test/t_score_n_missing"] == saved["test/n"]
    assert saved["test/who_n"] == saved["test/n"] and "test/who_f1_macro_ci95" in saved
    assert saved["test/f1_macro"] is not None  # the class head's, beside the WHO categories'
    assert saved["train/t_score_n"] == len(objects["datamodule"].datasets["train"])
    assert saved["train/imputed_age"] == 0 and saved["test/imputed_bmi"] == 0
    assert (run_dir / "figures" / "t_score" / "bland_altman.png").is_file()
    assert (run_dir / "figures" / "t_score" / "predicted_vs_true.png").is_file()
    # logged per epoch like the class metrics
    logged = read_rows(run_dir / "csv" / "metrics.csv")
    assert any(r.get("val/t_score_mae") for r in logged)
    assert any(r.get("train/t_score_mae") for r in logged)
    table = (run_dir / "csv" / "test_metrics.csv").read_text()
    assert "test/t_score_mae" in table and "test/who_acc" in table


def test_regression_metrics_equal_scikit_learn_and_scipy(two_heads):
    run_dir, _, _ = two_heads
    saved = json.loads((run_dir / "metrics.json").read_text())
    rows = read_rows(run_dir / "predictions.csv")
    t = np.array([float(r["t_score"]) for r in rows])
    p = np.array([float(r["t_score_pred"]) for r in rows])
    assert saved["test/t_score_mae"] == pytest.approx(mean_absolute_error(t, p), abs=1e-3)
    assert saved["test/t_score_rmse"] == pytest.approx(mean_squared_error(t, p) ** 0.5, abs=1e-3)
    assert saved["test/t_score_r"] == pytest.approx(stats.pearsonr(t, p).statistic, abs=2e-3)
    assert saved["test/t_score_rho"] == pytest.approx(stats.spearmanr(t, p).statistic, abs=2e-3)
    d = p - t
    assert saved["test/t_score_bias"] == pytest.approx(d.mean(), abs=1e-3)
    assert saved["test/t_score_loa_high"] == pytest.approx(
        d.mean() + 1.96 * d.std(ddof=1), abs=2e-3
    )
    # the WHO categories of the predicted T-score, scored like the class head
    labels = [CLASSES.index(r["label"]) for r in rows]
    who = [CLASSES.index(r["who_prediction"]) for r in rows]
    np.testing.assert_array_equal(who, who_category(np.round(p, 4)))
    assert saved["test/who_acc"] == pytest.approx(accuracy_score(labels, who))
    present = sorted(set(labels))
    assert saved["test/who_f1_macro"] == pytest.approx(
        f1_score(labels, who, average="macro", labels=present, zero_division=0)
    )
    # the intervals of predictions.csv give the reported coverage
    low = np.array([float(r["t_score_low"]) for r in rows])
    high = np.array([float(r["t_score_high"]) for r in rows])
    assert saved["test/t_score_interval_coverage"] == pytest.approx(
        empirical_coverage(t, low, high), abs=1e-9
    )
    np.testing.assert_allclose(high - low, 2 * saved["test/t_score_interval_halfwidth"], atol=2e-4)


def test_the_intervals_are_calibrated_on_the_validation_split(two_heads):
    run_dir, _, objects = two_heads
    conformal = json.loads((run_dir / "conformal.json").read_text())
    val = read_rows(run_dir / "val_predictions.csv")
    dm = objects["datamodule"]
    truth = {str(dm.samples[i].path): t for i, t in zip(dm.datasets["val"].indices,
                                                         dm.datasets["val"].targets, strict=True)}  # fmt: skip
    residuals = np.sort([abs(truth[r["path"]] - float(r["target_pred"])) for r in val])
    n = len(residuals)
    k = int(np.ceil((n + 1) * conformal["coverage"]))
    assert conformal["n_calibration"] == n
    assert conformal["quantile"] == pytest.approx(residuals[k - 1], abs=1e-4)
    assert Path(conformal["ckpt_path"]).name.startswith("epoch_")


def test_osteo_predict_prints_the_t_score_interval_and_who(two_heads, phantom_dir, capsys):
    from osteolightning.predict import main

    run_dir, _, _ = two_heads
    ckpt = json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]
    assert main([ckpt, str(phantom_dir / "manifest.csv")]) == 0
    out = capsys.readouterr()
    rows = list(csv.DictReader(out.out.splitlines()))
    assert len(rows) == 60
    row = rows[0]
    halfwidth = json.loads((run_dir / "conformal.json").read_text())["quantile"]
    pred = float(row["t_score_pred"])
    assert float(row["t_score_low"]) == pytest.approx(pred - halfwidth, abs=2e-4)
    assert float(row["t_score_high"]) == pytest.approx(pred + halfwidth, abs=2e-4)
    assert row["who_prediction"] == CLASSES[int(who_category([round(pred, 4)])[0])]
    assert "covariates" in out.err and "age=0" in out.err
    # the same image given alone has no covariates: imputed, and counted
    assert main([ckpt, str(phantom_dir / "images" / "K00000.png")]) == 0
    assert "age=1, sex=1, bmi=1 of 1 images" in capsys.readouterr().err


def test_osteo_eval_uses_the_recorded_calibration(two_heads, make_cfg, phantom_dir):
    from osteolightning.evaluate import evaluate

    run_dir, _, _ = two_heads
    ckpt = json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]
    cfg = make_cfg(
        "eval",
        ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny", f"ckpt_path={ckpt}",
         "data=manifest", f"data.root={phantom_dir / 'manifest.csv'}"],
    )  # fmt: skip
    metrics, _ = evaluate(cfg)
    recorded = json.loads((run_dir / "conformal.json").read_text())
    assert metrics["test/t_score_n"] == 60
    assert metrics["test/t_score_interval_halfwidth"] == recorded["quantile"]
    assert "test/who_acc" in metrics


def test_regression_only_reports_the_who_category_as_its_class(make_cfg):
    cfg = make_cfg(
        "train",
        ["debug=tiny", "model.class_weight=0", "model.t_score_weight=1", "trainer.max_epochs=1"],
    )
    metrics, _ = train(cfg)
    rows = read_rows(Path(cfg.paths.output_dir) / "predictions.csv")
    assert all(r["prediction"] == r["who_prediction"] for r in rows)
    assert {r["prob_normal"] for r in rows} <= {"0.000000", "1.000000"}
    assert metrics["test/acc"] == pytest.approx(metrics["test/who_acc"])


def test_who_index_equals_who_category():
    t = torch.tensor([-3.0, -2.5, -2.49, -1.0001, -1.0, 0.7])
    np.testing.assert_array_equal(who_index(t, (-2.5, -1.0)).numpy(), who_category(t.numpy()))


def _hinted_model(covariates: list[str], train_values: np.ndarray) -> KneeClassifier:
    # a small network with a classification layer: what the late fusion needs of a backbone
    net = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(16, 3)
    )
    return KneeClassifier(net, CLASSES, image_size=32, covariates=covariates,
                          covariates_train=train_values.tolist() if covariates else None)  # fmt: skip


def test_covariates_that_carry_the_label_help_through_late_fusion():
    torch.manual_seed(0)

    def draw(n: int) -> dict[str, torch.Tensor]:
        labels = torch.arange(n) % 3
        hint = labels.float()[:, None] + 0.1 * torch.randn(n, 1)  # carries the label
        return {"image": torch.randn(n, 1, 32, 32), "label": labels, "covariates": hint}

    batch, held_out = draw(240), draw(60)  # the images carry nothing
    scores = {}
    for name, covariates in (("without", []), ("with", ["hint"])):
        torch.manual_seed(0)
        model = _hinted_model(covariates, batch["covariates"].numpy())
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
        for _ in range(150):
            loss = model.model_step(batch)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            probs = model.predict_batch(held_out)[0]
            scores[name] = (probs.argmax(1) == held_out["label"]).float().mean().item()
            if covariates:  # the covariates change the prediction; unknown ones are imputed
                other = model.predict_proba(held_out["image"], held_out["covariates"].flip(0))
                assert not torch.allclose(other, probs)
                assert torch.isfinite(model.predict_proba(held_out["image"])).all()
    assert scores["with"] > 0.95 and scores["with"] > scores["without"] + 0.3, scores


def test_a_fitted_model_uses_covariates_that_carry_the_label(make_cfg, phantom_dir, tmp_path):
    def edit(i, row):
        row["hint"] = str(CLASSES.index(row["label"]))

    manifest = write_manifest(phantom_dir, tmp_path / "hint.csv", edit)
    data = [
        "debug=tiny",
        "data=manifest",
        f"data.root={manifest}",
        "model.C=1.0",
        "model.alpha=1.0",
        "data.allow_separating=[hint]",  # the label in disguise, on purpose (the leakage guard)
    ]
    # the clinical baseline alone, and the texture model with the covariates appended
    without, _ = train(
        make_cfg("train", [*data, "model=covariates", "model.covariates=[age]"], run="a")
    )
    hinted, _ = train(
        make_cfg("train", [*data, "model=covariates", "model.covariates=[age,hint]"], run="b")
    )
    _, texture = train(
        make_cfg("train", [*data, "model=texture", "model.covariates=[age,hint]"], run="c")
    )
    assert hinted["test/balanced_acc"] == 1.0 and without["test/balanced_acc"] < 0.8
    # appended to 71 texture statistics, the hint gets the fitted head's largest weight
    weight = texture["model"].net.linear.weight.abs()  # (K, D + [age, hint, 2 indicators])
    assert weight.shape[1] == texture["model"].net.image_dim + 4
    assert weight[:, -3].max() == weight.max()


def test_bad_target_settings_are_config_errors(make_cfg, phantom_dir, tmp_path):
    net = create_backbone("resnet10t", 3, in_chans=1)
    with pytest.raises(ConfigError, match="constant"):
        KneeClassifier(net, CLASSES, image_size=32, t_score_weight=1.0, target_train=[-1.0] * 9)
    with pytest.raises(ConfigError, match="none of the 3"):
        KneeClassifier(net, CLASSES, image_size=32, t_score_weight=1.0, target_train=[np.nan] * 3)
    with pytest.raises(ConfigError, match="both are 0"):
        KneeClassifier(net, CLASSES, image_size=32, class_weight=0.0)
    with pytest.raises(ConfigError, match="regression-only"):
        KneeClassifier(net, CLASSES, image_size=32, class_weight=0, t_score_weight=1, target="bmd")
    # a target column the data lacks names the columns it has
    manifest = write_manifest(phantom_dir, tmp_path / "m.csv")
    cfg = make_cfg("train", ["debug=tiny", "data=manifest", f"data.root={manifest}",
                             "model.t_score_weight=1", "model.target=bone_density"])  # fmt: skip
    with pytest.raises(DataSourceError, match="bone_density") as err:
        train(cfg)
    assert "bmd" in str(err.value)


def test_a_classifier_without_the_new_heads_keeps_its_checkpoint_keys():
    net = create_backbone("resnet10t", 3, in_chans=1)
    plain = KneeClassifier(net, CLASSES, image_size=32)
    assert all(k.startswith(("net.", "class_weights")) for k in plain.state_dict())
    heads = KneeClassifier(create_backbone("resnet10t", 3, in_chans=1), CLASSES, image_size=32,
                           t_score_weight=1.0, target_train=[-2.0, 0.5, 1.0],
                           covariates=["age"], covariates_train=[[60.0], [70.0], [np.nan]])  # fmt: skip
    extra = set(heads.state_dict()) - set(plain.state_dict())
    assert extra == {
        "target_stats", "target_head.weight", "target_head.bias",
        "covariate_encoder.mean", "covariate_encoder.std", "covariate_head.weight",
    }  # fmt: skip
    assert heads.covariate_encoder.n_imputed.tolist() == [1]


def test_an_export_refuses_the_t_score_head_and_covariates(two_heads):
    from osteolightning.models.checkpointing import load_model
    from osteolightning.models.exporting import probability_head

    run_dir, _, _ = two_heads
    model = load_model(json.loads((run_dir / "metrics.json").read_text())["ckpt_path"])
    with pytest.raises(ConfigError, match="regression head"):
        probability_head(model)

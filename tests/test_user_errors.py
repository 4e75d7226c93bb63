"""A mistake of the user's: its message alone on the terminal, exit status 1, the traceback in
the log file; the config is checked before any work."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from osteolightning.errors import ConfigError, DataSourceError, shorten
from osteolightning.evaluate import evaluate
from osteolightning.runs import lifecycle
from osteolightning.runs.checks import check_config
from osteolightning.runs.failures import describe, user_error, user_errors
from osteolightning.train import train
from tests.helpers import run_osteo


def _run(args: list[str], cwd: Path, cache_dir: Path, **env: str) -> subprocess.CompletedProcess:
    module, *rest = args
    return run_osteo(
        module.removeprefix("osteolightning."), rest, cwd, cache_dir, timeout=300, **env
    )


def test_a_bad_data_folder_ends_with_its_message_alone(tmp_path, cache_dir, class_tree):
    (class_tree / "osteopetrosis").mkdir()
    (class_tree / "osteopetrosis" / "x.png").write_bytes(
        next(class_tree.rglob("*.png")).read_bytes()
    )
    args = ["osteolightning.train", "debug=tiny", "data=folder", f"data.root={class_tree}"]
    done = _run(args, tmp_path, cache_dir)
    assert done.returncode == 1
    assert "osteo-train: error:" in done.stderr and "osteopetrosis" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    (log,) = tmp_path.glob("logs/train/runs/*/train.log")
    assert "Traceback" in log.read_text() and "osteopetrosis" in log.read_text()
    # a run that failed before its first checkpoint is not left `running`
    assert lifecycle.read_marker(log.parent)["state"] == "failed"

    shown = _run(args, tmp_path, cache_dir, HYDRA_FULL_ERROR="1")
    assert shown.returncode != 0 and "Traceback" in shown.stderr


def test_an_unset_data_root_is_named_before_any_work(tmp_path, cache_dir):
    done = _run(["osteolightning.train", "debug=tiny", "data=folder"], tmp_path, cache_dir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "data.root" in done.stderr and "data.root=..." in done.stderr
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not list(
        (tmp_path / "logs" / "train" / "runs").glob("*/.osteo_run.json")
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=folder", "data.root="], "`data.root` to name a folder"),
        (["+trainer.max_epoch=3"], "Did you mean 'max_epochs'"),
        (["+callbacks.model_checkpoint.save_topk=1"], "Did you mean 'save_top_k'"),
        (["+data.batchsize=4"], "Did you mean 'batch_size'"),
        (["data.num_folds=5", "data.fold=5"], r"`data.fold` in \[0, 4\]"),
        (["trainer.min_epochs=5", "trainer.max_epochs=2"], "min_epochs <= trainer.max_epochs"),
        (
            ["evaluation.temperature_scaling=true", "data.val_fraction=0"],
            "data.val_fraction=0 leaves none",
        ),
    ],
)
def test_config_mistakes_are_caught_before_work(make_cfg, overrides, message):
    cfg = make_cfg("train", ["debug=tiny", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert lifecycle.read_marker(cfg.paths.output_dir) is None  # nothing was claimed


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("monitor=val/f1macro", "Did you mean 'val/f1_macro'"),
        ("callbacks.model_checkpoint.monitor=val/acuracy", "Did you mean .val/acc."),
    ],
)
def test_a_monitor_the_model_does_not_log_is_named(make_cfg, override, shown):
    with pytest.raises(ConfigError, match=shown) as caught:
        train(make_cfg("train", ["debug=tiny", override]))
    assert "It logs: val/acc" in str(caught.value)


def test_a_segmentation_checkpoint_on_classification_data_says_so(segmented, make_cfg, class_tree):
    ckpt = segmented[0] / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        "eval",
        ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]
        + [f"ckpt_path={ckpt}", "data=folder", f"data.root={class_tree}"],
    )
    with pytest.raises(ConfigError, match="is a segmentation checkpoint"):
        evaluate(cfg)


def test_a_classification_checkpoint_on_segmentation_data_says_so(trained, make_cfg, phantom_dir):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        "eval",
        ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]
        + [f"ckpt_path={ckpt}", "data=seg_manifest", f"data.root={phantom_dir / 'manifest.csv'}"],
    )
    with pytest.raises(ConfigError, match="is a classification checkpoint"):
        evaluate(cfg)


def test_long_lists_are_shortened_and_written_in_full(tmp_path, capsys):
    names = [f"scan_{i:03d}.txt" for i in range(40)]
    err = DataSourceError(f"40 files are not images: {shorten(names)}.", details=names)
    assert "and 35 more" in str(err)
    with pytest.raises(SystemExit) as stop, user_errors("osteo-test", tmp_path):
        raise err
    assert stop.value.code == 1
    printed = capsys.readouterr().err
    assert printed.startswith("osteo-test: error: 40 files are not images: 'scan_000.txt'")
    assert f"The full list (40) is in {tmp_path / 'error_details.txt'}" in printed
    assert (tmp_path / "error_details.txt").read_text().split() == names


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError), user_errors("osteo-test"):
        _ = 1 / 0


def test_a_framework_error_wrapped_by_hydra_is_found():
    from hydra.errors import InstantiationException

    try:
        try:
            raise ConfigError("Expected argument `x` to be positive, but got -1.")
        except ConfigError as inner:
            raise InstantiationException("Error in call to target 'X'") from inner
    except InstantiationException as outer:
        assert isinstance(user_error(outer), ConfigError)
        assert describe(user_error(outer)).startswith("Expected argument `x`")


def test_eval_warns_when_most_images_trained_the_checkpoint(trained, make_cfg, class_tree, caplog):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        "eval",
        ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]
        + [f"ckpt_path={ckpt}", "data=folder", f"data.root={class_tree}"],
    )
    with caplog.at_level("WARNING"):
        evaluate(cfg)
    warned = [r.message for r in caplog.records if "training split" in r.message]
    assert warned and "not a held-out estimate" in warned[0]
    n_train = len(trained[2]["datamodule"].datasets["train"])
    assert f"{n_train} of the 60 evaluated images" in warned[0]

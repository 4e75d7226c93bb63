"""The error surface (issue 24): the hostile inputs a new user tried, one class each. Each is
handled cleanly: flagged, or refused before any work with a message naming the file, key or
value and what would be accepted, exit status 1 and no traceback."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import hydra
import numpy as np
import pytest
from PIL import Image

from osteolightning.data.folders import FolderSource
from osteolightning.data.hygiene import apply_conflict_policy, apply_record_policy, find_copies
from osteolightning.data.masks import read_mask
from osteolightning.data.near_duplicates import near_duplicate_pairs, perceptual_hash
from osteolightning.data.seg_sources import SegmentationTreeSource
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.evaluate import evaluate
from osteolightning.models.checkpointing import torch_load
from osteolightning.runs import lifecycle
from osteolightning.runs.checks import check_config
from osteolightning.train import train
from tests.helpers import run_osteo, write_manifest


# -- 1. blank or constant images ------------------------------------------------------------
def _blank(path: Path, value: int, shape: tuple[int, int] = (96, 96)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _plant_blanks(tree: Path) -> tuple[list[Path], Path]:
    """Four different blank files in three classes (two letterboxed: 64 x 128), and a byte copy
    of the first under another class."""
    blanks = [
        _blank(tree / "normal" / "blank_black.png", 0),
        _blank(tree / "osteoporosis" / "blank_white.png", 255),
        _blank(tree / "osteopenia" / "blank_wide.png", 120, (64, 128)),
        _blank(tree / "normal" / "blank_wide_dark.png", 60, (64, 128)),
    ]
    copy = tree / "osteopenia" / "blank_black_copy.png"
    shutil.copy(blanks[0], copy)
    return blanks, copy


def test_two_different_blank_images_are_no_near_duplicates():
    black, gray = np.zeros((64, 64), np.uint8), np.full((80, 80), 200, np.uint8)
    hashes = [perceptual_hash(black), perceptual_hash(black[:50]), perceptual_hash(gray)]
    images = [black, black[:50], gray]
    assert near_duplicate_pairs(hashes, 6) != []  # they hash alike ...
    assert near_duplicate_pairs(hashes, 6, images) == []  # ... but are copies of nothing
    knee = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    assert near_duplicate_pairs([0, 0], 6, [knee, knee], blank=[True, False]) == []


def test_blank_images_are_flagged_and_not_grouped_as_copies(make_cfg, class_tree):
    blanks, copy = _plant_blanks(class_tree)
    cfg = make_cfg("train", ["debug=tiny", "data=folder", f"data.root={class_tree}"])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    kinds = {f.kind: f for f in dm.findings}
    assert sorted(kinds["blank_image"].files) == sorted(map(str, [*blanks, copy]))
    assert "single gray level" in kinds["blank_image"].message
    assert "blank_black.png" in dm.summary()
    # the byte copy under another class is still a label conflict (dropped by default) ...
    assert sorted(p for _, p, _, _ in dm.conflicts) == sorted([str(blanks[0]), str(copy)])
    # ... but the other blank files, of different classes, are no copies of each other
    kept = {str(s.path) for s in dm.samples}
    assert {str(b) for b in blanks[1:]} <= kept


def test_osteo_data_audit_flags_blank_images(tmp_path, cache_dir, class_tree):
    blanks, copy = _plant_blanks(class_tree)
    out = tmp_path / "audit.json"
    done = run_osteo(
        "data", ["audit", str(class_tree), f"out={out}", "image_size=64"], tmp_path, cache_dir
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    findings = {f["kind"]: f for f in report["findings"]}
    assert sorted(findings["blank_image"]["files"]) == sorted(map(str, [*blanks, copy]))
    assert "blank_image" in done.stdout + done.stderr
    near = [f for group in report["near_duplicates"] for f in group["files"]]
    assert not set(near) & set(map(str, [*blanks, copy]))
    conflicts = [sorted(g["files"]) for g in report["label_conflicts"]]
    assert conflicts == [sorted([str(blanks[0]), str(copy)])]


# -- 2. contradicting options ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.val_fraction=0.6", "data.test_fraction=0.5"],
            r"data.val_fraction=0.6 and data.test_fraction=0.5 add up to 1.1",
        ),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "add up to 1"),
        (["data.num_folds=2", "data.val_fraction=0.5"], r"data.num_folds=2 \(a test fold of 0.5"),
        (["data.val_fraction=-0.1"], r"`data.val_fraction` .* \(0, 1\) range, but got -0.1"),
        (["data.batch_size=0"], "`data.batch_size` to be a positive integer, but got 0"),
        (["data.batch_size=2.5"], "`data.batch_size` to be a positive integer, but got 2.5"),
        (["data.num_workers=-1"], r"`data.num_workers` to be an integer >= 0 .* got -1"),
        (["trainer.max_epochs=0"], "`trainer.max_epochs` to be a positive integer"),
        (["trainer.max_epochs=-3"], "`trainer.max_epochs` to be a positive integer"),
        (["trainer.max_epochs=-1"], r"or -1, no limit, with trainer.max_steps"),
        (["data.num_folds=1"], "`data.num_folds` to be an integer >= 2"),
        (["data.num_folds=5", "data.fold=-1"], r"`data.fold` in \[0, 4\]"),
        (["data.num_folds=3", "data.fold=3"], r"`data.fold` in \[0, 2\]"),
        (["data.num_folds=3", "data.inner_folds=2", "data.inner_fold=2"], r"`data.inner_fold`"),
        (["data.train_fraction=0"], r"`data.train_fraction` in \(0, 1\]"),
    ],
)
def test_contradicting_or_senseless_options_are_refused_before_work(make_cfg, overrides, message):
    cfg = make_cfg("train", ["debug=tiny", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert lifecycle.read_marker(cfg.paths.output_dir) is None  # nothing was claimed


def test_an_unbounded_max_epochs_with_max_steps_is_accepted(make_cfg):
    check_config(make_cfg("train", ["debug=tiny", "trainer.max_epochs=-1", "+trainer.max_steps=3"]))


def test_split_fractions_summing_past_one_end_the_command_cleanly(tmp_path, cache_dir):
    args = ["debug=tiny", "data.val_fraction=0.6", "data.test_fraction=0.5"]
    done = run_osteo("train", args, tmp_path, cache_dir, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "osteo-train: error:" in done.stderr
    assert "data.val_fraction=0.6 and data.test_fraction=0.5" in done.stderr
    assert not list(tmp_path.glob("logs/train/runs/*/.osteo_run.json"))  # no run was started
    assert not list(tmp_path.glob("logs/train/runs/*/checkpoints"))


# -- 3. a class absent from the evaluated split --------------------------------------------
def test_an_absent_class_is_logged_as_undefined_not_zero(trained, make_cfg, class_tree):
    shutil.rmtree(class_tree / "osteoporosis")
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        "eval",
        ["common=tiny", "callbacks=tiny", "logger=tiny", "trainer=tiny"]
        + [f"ckpt_path={ckpt}", "data=folder", f"data.root={class_tree}"],
    )
    metrics, objects = evaluate(cfg)
    assert metrics["test/absent_classes"] == ["osteoporosis"]
    assert metrics["test/auroc_osteoporosis"] is None
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("test/acc")]
    assert row["test/auroc_osteoporosis"] in ("", "nan")  # undefined, not 0
    logged = objects["trainer"].callback_metrics
    assert math.isnan(float(logged["test/auroc_osteoporosis"]))
    # the macro averages leave it out, as metrics.json does
    for key in ("test/balanced_acc", "test/f1_macro", "test/auroc_macro", "test/precision_macro"):
        assert float(row[key]) == pytest.approx(metrics[key], abs=1e-5), key


# -- 4. a refused run touches nothing of the run it collides with -------------------------
def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_a_sweep_over_another_sweeps_jobs_is_refused_before_hydra_writes(tmp_path, cache_dir):
    """`osteo-train -m ... hydra.sweep.dir=<an earlier sweep>` without resume=auto: the job
    folders of that sweep keep their .hydra files, log, marker and results, byte for byte."""
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("original: true\n")
    (job / "train.log").write_text("the earlier run's log\n")
    (job / "metrics.json").write_text('{"test/acc": 0.9}')
    (job / ".osteo_run.json").write_text('{"state": "finished"}')
    before = _tree(sweep)
    args = ["-m", "debug=tiny", "seed=0", f"hydra.sweep.dir={sweep}"]
    done = run_osteo("train", args, tmp_path, cache_dir, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "osteo-train: error: The multirun directory" in done.stderr
    assert f"{job} (metrics.json, .osteo_run.json)" in done.stderr and "resume=auto" in done.stderr
    assert _tree(sweep) == before  # nothing added, nothing rewritten


# -- 5. damaged files ----------------------------------------------------------------------
def _cut_short(trained, tmp_path: Path) -> Path:
    data = (trained[0] / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 3])  # an interrupted copy
    return cut


def _assert_damaged_named(done, prog: str, cut: Path) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{prog}: error: Cannot read '{cut}'" in done.stderr
    assert "cut short" in done.stderr and "osteo-train" in done.stderr  # what is accepted


def test_a_truncated_checkpoint_is_named_by_osteo_predict(trained, tmp_path, cache_dir):
    cut = _cut_short(trained, tmp_path)
    image = next((trained[0]).glob("predictions.csv"))  # any file: the checkpoint fails first
    done = run_osteo("predict", [str(cut), str(image)], tmp_path, cache_dir, timeout=300)
    _assert_damaged_named(done, "osteo-predict", cut)


def test_a_truncated_checkpoint_is_named_by_osteo_eval(trained, tmp_path, cache_dir):
    cut = _cut_short(trained, tmp_path)
    args = ["common=tiny", "trainer=tiny", "logger=tiny", "callbacks=tiny", f"ckpt_path={cut}"]
    done = run_osteo("evaluate", args, tmp_path, cache_dir, timeout=300)
    _assert_damaged_named(done, "osteo-eval", cut)


def test_a_truncated_checkpoint_to_continue_from_is_named_before_the_run(
    trained, make_cfg, tmp_path
):
    cut = _cut_short(trained, tmp_path)
    cfg = make_cfg("train", ["debug=tiny", f"ckpt_path={cut}"])
    with pytest.raises(ConfigError, match=rf"Cannot read '{cut}' \(\d+ bytes\): it ends before"):
        train(cfg)
    assert lifecycle.read_marker(cfg.paths.output_dir) is None  # refused before the run started


def test_damaged_files_are_told_from_files_that_need_unpickling(tmp_path):
    for name, blob in (("empty", b""), ("text", b"patient list\n"), ("zeros", b"\0" * 4096)):
        (tmp_path / f"{name}.ckpt").write_bytes(blob)
        for unsafe in (False, True):
            with pytest.raises(ConfigError, match=rf"Cannot read '.*{name}.ckpt' \(\d+ bytes\)"):
                torch_load(tmp_path / f"{name}.ckpt", allow_unsafe_pickle=unsafe)


# -- 6. invalid optimiser values -----------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("train", ["model.optimizer.lr=-1"], "`model.optimizer.lr` to be a positive .* got -1"),
        ("train", ["model.optimizer.lr=0"], "`model.optimizer.lr` to be a positive .* got 0"),
        (
            "train",
            ["model.optimizer.weight_decay=-0.1"],
            r"`model.optimizer.weight_decay` to be a value torch.optim.AdamW accepts, but got -0.1",
        ),
        ("train", ["+model.optimizer.betas=[0.9,1.5]"], r"`model.optimizer.betas` .* \[0.9, 1.5\]"),
        ("train", ["+model.optimizer.foo=1"], "`model.optimizer.foo` is not an argument of"),
        (
            "train",
            ["model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=-1"],
            "`model.optimizer.momentum` to be a value torch.optim.SGD accepts",
        ),
        ("train", ["model.scheduler.warmup_fraction=1.5"], r"`model.scheduler.warmup_fraction`"),
        ("train", ["model.optimizer.lr=fast"], "`model.optimizer` to hold values .* lr=fast"),
        ("segment", ["model.optimizer.weight_decay=-0.1"], "`model.optimizer.weight_decay`"),
    ],
)
def test_invalid_optimiser_values_are_refused_before_training(make_cfg, config, overrides, message):
    debug = "debug=tiny" if config == "train" else "debug=seg_tiny"
    cfg = make_cfg(config, [debug, *overrides])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert lifecycle.read_marker(cfg.paths.output_dir) is None  # refused before the run started


def test_a_negative_learning_rate_ends_osteo_train_cleanly(tmp_path, cache_dir):
    done = run_osteo("train", ["debug=tiny", "model.optimizer.lr=-1"], tmp_path, cache_dir)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "osteo-train: error: Expected `model.optimizer.lr`" in done.stderr
    assert not list(tmp_path.glob("logs/train/runs/*/.osteo_run.json"))


# -- 7. every console script ends a framework error with its message alone -----------------
#: For each console script of pyproject.toml: arguments that make it fail on a user mistake,
#: and what its message must name.
MISTAKES = {
    "osteo-train": (["debug=tiny", "data.batch_size=0"], "data.batch_size"),
    "osteo-segment": (["debug=seg_tiny", "data.batch_size=0"], "data.batch_size"),
    "osteo-eval": (["ckpt_path=/nowhere/last.ckpt"], "/nowhere/last.ckpt"),
    "osteo-predict": (["/nowhere/last.ckpt", "knee.png"], "/nowhere/last.ckpt"),
    "osteo-ensemble": (["sweep=/nowhere/multirun"], "/nowhere/multirun"),
    "osteo-data": (["audit", "/nowhere/knees"], "/nowhere/knees"),
    "osteo-export": (["ckpt_path=/nowhere/last.ckpt"], "/nowhere/last.ckpt"),
}


def _scripts() -> dict[str, str]:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["scripts"]


def test_every_console_script_has_a_mistake_to_make():
    assert set(_scripts()) == set(MISTAKES)


@pytest.mark.parametrize("prog", sorted(MISTAKES))
def test_every_console_script_ends_a_user_mistake_without_a_traceback(prog, tmp_path, cache_dir):
    module = _scripts()[prog].split(":")[0].removeprefix("osteolightning.")
    args, named = MISTAKES[prog]
    done = run_osteo(module, args, tmp_path, cache_dir, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{prog}: error:" in done.stderr and named in done.stderr


def test_osteo_export_names_a_truncated_checkpoint(trained, tmp_path, cache_dir):
    cut = _cut_short(trained, tmp_path)
    done = run_osteo("export", [f"ckpt_path={cut}"], tmp_path, cache_dir, timeout=300)
    _assert_damaged_named(done, "osteo-export", cut)


# -- 8. an output path below a regular file -------------------------------------------------
def test_osteo_predict_checks_out_before_predicting(trained, tmp_path, cache_dir, class_tree):
    (tmp_path / "notes.txt").write_text("not a folder\n")
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    args = [str(ckpt), str(class_tree), "--out", "notes.txt/preds.csv"]
    done = run_osteo("predict", args, tmp_path, cache_dir, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "osteo-predict: error: Expected `--out`" in done.stderr
    assert "below 'notes.txt', which is a file" in done.stderr
    assert "wrote" not in done.stderr  # refused before any prediction


def test_an_output_dir_below_a_file_is_refused_before_work(make_cfg, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder\n")
    cfg = make_cfg("train", ["debug=tiny"])
    cfg.paths.output_dir = str(tmp_path / "notes.txt" / "run")
    with pytest.raises(ConfigError, match=r"`paths.output_dir` .* below '.*notes.txt', which is"):
        train(cfg)


@pytest.mark.parametrize(
    ("module", "args", "key"),
    [
        ("train", ["debug=tiny", "hydra.run.dir=notes.txt/run"], "hydra.run.dir"),
        ("train", ["-m", "debug=tiny", "hydra.sweep.dir=notes.txt/sweep"], "hydra.sweep.dir"),
        ("train", ["debug=tiny", "paths.output_dir=notes.txt/run"], "paths.output_dir"),
        ("export", ["ckpt_path=x.ckpt", "out=notes.txt/model.onnx"], "out"),
    ],
)
def test_a_run_folder_below_a_file_ends_with_its_message(tmp_path, cache_dir, module, args, key):
    (tmp_path / "notes.txt").write_text("not a folder\n")
    done = run_osteo(module, args, tmp_path, cache_dir, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert f"error: Expected `{key}` to name" in done.stderr
    assert "below 'notes.txt', which is a file, not a folder" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "not a folder\n"


# -- 9. "... and N more" always comes with the full list (error_details.txt) --------------
def test_a_manifest_with_many_bad_rows_writes_the_full_list(tmp_path, cache_dir, phantom_dir):
    def missing(i: int, row: dict) -> None:
        if i < 12:
            row["image"] = row["image"].replace("images/", "images/missing_")

    manifest = write_manifest(phantom_dir, tmp_path / "bad.csv", edit=missing)
    args = ["debug=tiny", "data=manifest", f"data.root={manifest}"]
    done = run_osteo("train", args, tmp_path, cache_dir, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "has 12 bad row(s)" in done.stderr and "and 2 more" in done.stderr
    (details,) = tmp_path.glob("logs/train/runs/*/error_details.txt")
    assert f"The full list (12) is in {details}" in done.stderr
    lines = details.read_text().splitlines()
    assert len(lines) == 12 and all("missing_" in line for line in lines)


def test_every_shortened_list_of_the_data_sources_carries_its_details(tmp_path):
    labels = np.repeat(np.arange(2), 7)  # 7 pairs of copies, each pair under two classes
    copies = find_copies([f"d{i % 7}" for i in range(14)], labels)
    names = [f"f{i}.png" for i in range(14)]
    with pytest.raises(DataSourceError, match="and 2 more") as conflict:
        apply_conflict_policy(copies, "error", names, ["normal", "osteoporosis"], labels)
    assert len(conflict.value.details) == 14
    records = [({"age": str(i)}, None) for i in range(14)]
    keep = np.ones(14, dtype=bool)
    with pytest.raises(DataSourceError, match="and 2 more") as record:
        apply_record_policy(copies, records, keep, "error", names)
    assert len(record.value.details) == 14

    tree = tmp_path / "tree"
    (tree / "normal").mkdir(parents=True)
    for i in range(12):
        (tree / "normal" / f"notes_{i}.txt").write_text("not an image\n")
    with pytest.raises(DataSourceError, match="and 2 more") as folder:
        FolderSource(tree).samples(["normal"])
    assert sorted(map(str, folder.value.details)) == sorted(
        str(p) for p in (tree / "normal").glob("*.txt")
    )

    seg = tmp_path / "seg"
    for sub in ("images", "masks"):
        (seg / sub).mkdir(parents=True)
    for i in range(12):  # masks without images
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(seg / "masks" / f"m{i}.png")
    with pytest.raises(DataSourceError, match="and 2 more") as pairing:
        SegmentationTreeSource(seg).samples()
    assert len(pairing.value.details) == 12

    mask = tmp_path / "many_labels.png"
    Image.fromarray(np.arange(40 * 40, dtype=np.uint8).reshape(40, 40) % 40).save(mask)
    with pytest.raises(DataSourceError, match="and 27 more") as values:
        read_mask(mask, num_classes=3)
    assert len(values.value.details) == 37


def test_a_resume_of_another_config_lists_every_differing_key(make_cfg):
    cfg = make_cfg("train", ["debug=tiny"], run="first")
    lifecycle.start_run(cfg)
    lifecycle.stop_heartbeat()
    flat = lifecycle.hashed_config(cfg)
    changed = {**flat, **{f"extra.key{i}": i for i in range(12)}}
    with pytest.raises(ConfigError, match="and 2 more") as caught:
        lifecycle.check_resumable(Path(cfg.paths.output_dir), changed)
    assert len(caught.value.details) == 12 and "extra.key0: '<absent>' -> 0" in caught.value.details


def _error_calls_without_details() -> list[str]:
    """Functions of the package that build an error whose message shortens a list
    (``shorten(...)``, "and N more", a slice) without giving it ``details``."""
    import ast

    package = Path(__file__).resolve().parents[1] / "osteolightning"
    found = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text()
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, ast.FunctionDef):
                continue
            text = ast.get_source_segment(source, function) or ""
            if ".details = " in text:
                continue
            for call in ast.walk(function):
                name = getattr(call, "func", None)
                name = getattr(name, "id", getattr(name, "attr", ""))
                if not (isinstance(call, ast.Call) and name.endswith("Error")):
                    continue
                message = ast.get_source_segment(source, call) or ""
                shortened = "shorten(" in message or "more" in message or "listing(" in message
                if shortened and "details" not in [k.arg for k in call.keywords]:
                    found.append(f"{path.relative_to(package)}:{call.lineno}")
    return found


#: errors that name a few examples but no list of offending items the user must fix
NOT_LISTS = {
    "data/splits.py",  # "use more images": not a list
}


def test_no_error_shortens_a_list_without_its_details():
    left = [f for f in _error_calls_without_details() if f.split(":")[0] not in NOT_LISTS]
    assert left == []


# -- 10. a segmenter that finds no bone ------------------------------------------------------
def test_a_segmenter_that_finds_no_bone_is_warned_about(make_cfg, phantom_dir, tmp_path, caplog):
    import logging

    import torch

    from osteolightning.data.io import read_image
    from osteolightning.models.components.bone_region import BoneRegionEmbedder

    keep = "callbacks.last_checkpoint.keep_after_finish=true"  # its full state is edited below
    cfg = make_cfg("segment", ["debug=seg_tiny", "trainer.max_epochs=1", keep], run="seg")
    train(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    head = checkpoint["state_dict"]
    head["net.head.weight"].zero_()  # every pixel: background
    head["net.head.bias"].copy_(torch.tensor([10.0] + [-10.0] * (len(head["net.head.bias"]) - 1)))
    blind = tmp_path / "blind.ckpt"
    torch.save(checkpoint, blind)

    embedder = BoneRegionEmbedder(segmenter=str(blind))
    images = [read_image(p) for p in sorted((phantom_dir / "images").glob("*.png"))[:6]]
    batch = torch.from_numpy(np.stack(images))[:, None].float() * 2 - 1  # (6, 1, 96, 96)
    with caplog.at_level(logging.WARNING):
        features = embedder(batch)
        embedder(batch)
    assert not features.any()  # what the warning is about: the same zeros for every image
    assert (embedder.empty_bone, embedder.segmented) == (12, 12)
    warned = [r.getMessage() for r in caplog.records if "found no bone" in r.getMessage()]
    assert len(warned) == 2  # the first batch, then when the count doubled
    assert f"'{blind.resolve()}' found no bone in 6 of the 6 images" in warned[0]
    assert "found no bone in 12 of the 12 images" in warned[1]
    assert "model.net.segmenter=null" in warned[0]


# -- 11. saliency warnings only where they apply --------------------------------------------
def _saliency_setup(make_cfg, config: str, overrides: list[str], caplog):
    import logging

    from osteolightning.callbacks.writers import build_saliency
    from osteolightning.models.saliency import cam_layer_of

    cfg = make_cfg(config, overrides)
    saliency = make_cfg("eval", ["ckpt_path=x.ckpt"], run="eval").saliency  # osteo-eval's
    writers = build_saliency(saliency, cam_layer_of(cfg), cfg.paths.output_dir)
    extra = {"class_counts": [10, 10, 10]} if "class_counts" in cfg.model else {}
    model = hydra.utils.instantiate(cfg.model, **extra)
    with caplog.at_level(logging.INFO, logger="osteolightning.callbacks.saliency"):
        writers[0].setup(None, model, "test")
    said = [r for r in caplog.records if r.name == "osteolightning.callbacks.saliency"]
    return writers[0], said


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("texture", "TextureEmbedder"),
        ("bone_density", "BoneRegionEmbedder"),
        ("linear_probe", "BackboneEmbedder"),
        ("covariates", None),
        ("boosting", None),
        ("ost_rule", None),
    ],
)
def test_models_saliency_does_not_apply_to_get_no_warning(make_cfg, caplog, model, why):
    writer, said = _saliency_setup(make_cfg, "train", ["debug=tiny", f"model={model}"], caplog)
    assert not writer._active
    assert not [r for r in said if r.levelname == "WARNING"]  # no "cam_layer is not set"
    if why is None:
        assert said == []  # nothing to explain, no word
    else:
        (line,) = said
        assert line.levelname == "INFO" and why in line.getMessage()
        assert "without gradients" in line.getMessage()


def test_a_segmenter_evaluated_gets_no_saliency_warning(make_cfg, caplog):
    writer, said = _saliency_setup(make_cfg, "segment", ["debug=seg_tiny"], caplog)
    assert not writer._active and said == []


def test_a_classifier_with_its_layer_still_gets_its_saliency_report(make_cfg, caplog):
    writer, said = _saliency_setup(make_cfg, "train", ["debug=tiny"], caplog)
    assert writer._active and said == []


# -- 12. debug=tiny says that it turns W&B off ----------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["debug=tiny"], True),
        (["debug=seg_tiny"], True),
        (["debug=tiny", "logger=csv"], False),  # the user chose it: no word
        (["debug=tiny", "logger=default"], False),  # W&B on
        ([], False),  # the default logs to W&B
    ],
)
def test_a_debug_preset_says_that_it_turns_wandb_off(
    make_cfg, caplog, monkeypatch, overrides, said
):
    import logging

    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = "segment" if "debug=seg_tiny" in overrides else "train"
    cfg = make_cfg(config, overrides)
    with (
        caplog.at_level(logging.INFO, logger="osteolightning.runs.lifecycle"),
        lifecycle.session(cfg, model_card=False) as run,
    ):
        kinds = {type(logger).__name__ for logger in run.loggers}
    lines = [r.getMessage() for r in caplog.records if "W&B is off" in r.getMessage()]
    assert ("WandbLogger" not in kinds) == (said or "logger=csv" in overrides)
    if said:
        (line,) = lines
        debug = overrides[0].split("=")[1]
        assert f"debug={debug} sets logger=tiny" in line and "logger=default" in line
        assert str(Path(cfg.paths.output_dir) / "csv") in line
    else:
        assert lines == []

"""osteo-export: ONNX and TorchScript files of a tiny classifier and a tiny segmenter give the
checkpoint's probabilities (within 1e-4, batch sizes 1 and 3), carry the preprocessing facts,
and osteo-predict gives the checkpoint's answers from them."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from osteolightning.errors import ConfigError
from osteolightning.export import export
from osteolightning.models.portable import METADATA_KEY, load_portable
from osteolightning.predict import main
from osteolightning.utils.config import compose_config

#: the stated tolerance: the largest absolute difference of probabilities (parity.atol)
ATOL = 1e-4


def _ckpt(run_dir: Path) -> str:
    return json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, cache_dir, trained, segmented):
    """(task, format) → the export report, each exported once."""
    runs = {"classification": trained[0], "segmentation": segmented[0]}
    made = {}

    def _get(task: str, fmt: str) -> dict:
        if (task, fmt) not in made:
            out = tmp_path_factory.mktemp(f"export-{task}-{fmt}") / "run"
            cfg = compose_config("export", [f"ckpt_path={_ckpt(runs[task])}", f"format={fmt}"],
                                 out, cache_dir)  # fmt: skip
            made[task, fmt] = export(cfg)
            GlobalHydra.instance().clear()
        return made[task, fmt]

    return _get


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_export_matches_the_checkpoint_and_carries_its_preprocessing(exports, task, fmt):
    report = exports(task, fmt)
    path = Path(report["file"])
    assert path.is_file() and path.suffix == {"onnx": ".onnx", "torchscript": ".pt"}[fmt]
    assert report["parity"]["max_abs_diff"] <= ATOL
    assert {1, 3} <= set(report["parity"]["batch_sizes"])
    meta = load_portable(path).metadata
    assert meta["task"] == task and meta["format_version"] == 1
    for key in ("class_names", "image_size", "in_chans", "mean", "std", "letterbox"):
        assert meta[key] == report["metadata"][key]
    assert meta["input"]["shape"][0] == "batch"
    # the backbone registry's facts of the network (a segmenter's U-Net has none)
    backbone = meta["backbone"]
    if task == "segmentation":
        assert backbone is None
    else:
        assert backbone["name"] == "resnet10t" and backbone["cam_layer"] == "layer4"
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert "## Test metrics" in card and "## Export" in card and report["sha256"] in card
    assert json.loads((path.parent / "export.json").read_text())["sha256"] == report["sha256"]


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as handle:
        return {r["path"]: r for r in csv.DictReader(handle)}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_on_the_export_equals_predict_on_the_checkpoint(exports, trained, class_tree,
                                                                 tmp_path, fmt):  # fmt: skip
    exported = exports("classification", fmt)["file"]
    assert main([_ckpt(trained[0]), str(class_tree), "--out", str(tmp_path / "c.csv")]) == 0
    reference = _rows(tmp_path / "c.csv")
    for batch in ("1", "3"):
        out = tmp_path / f"e{batch}.csv"
        assert main([exported, str(class_tree), "--out", str(out), "--batch-size", batch]) == 0
        rows = _rows(out)
        assert rows.keys() == reference.keys()
        for key, row in rows.items():
            assert row["prediction"] == reference[key]["prediction"]
            for c in ("normal", "osteopenia", "osteoporosis"):
                assert float(row[f"prob_{c}"]) == pytest.approx(
                    float(reference[key][f"prob_{c}"]), abs=ATOL
                )


def test_segmentation_export_writes_the_checkpoints_masks(exports, segmented, class_tree, tmp_path):
    from osteolightning.data.masks import read_mask

    exported = exports("segmentation", "onnx")["file"]
    assert main([_ckpt(segmented[0]), str(class_tree), "--out", str(tmp_path / "c")]) == 0
    assert main([exported, str(class_tree), "--out", str(tmp_path / "e")]) == 0
    masks = sorted((tmp_path / "c" / "masks").rglob("*.png"))
    agree = [np.mean(read_mask(m, 5) == read_mask(tmp_path / "e" / m.relative_to(tmp_path / "c"),
                                                  5)) for m in masks]  # fmt: skip
    assert len(masks) == len(list(class_tree.rglob("*.png"))) and min(agree) > 0.999


def test_the_onnx_export_runs_without_lightning(exports, class_tree):
    """onnxruntime alone: the process cannot import Lightning."""
    exported = exports("classification", "onnx")["file"]
    image = sorted(class_tree.rglob("*.png"))[0]
    code = f"""
import sys
sys.modules["lightning"] = None
sys.modules["pytorch_lightning"] = None
import torch
from osteolightning.data.cache import letterbox_resize
from osteolightning.data.io import read_image
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.models.portable import load_portable
model = load_portable({exported!r})
pre = model.preprocessing
x = ToNormalizedTensor(pre.mean, pre.std, pre.in_chans)(letterbox_resize(read_image({str(image)!r}), pre.image_size))
print(model.predict_proba(x[None]).sum().item(), "lightning" in sys.modules and sys.modules["lightning"] is not None)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    total, lightning_loaded = result.stdout.split()
    assert float(total) == pytest.approx(1.0, abs=1e-5) and lightning_loaded == "False"


def test_files_without_or_with_unknown_metadata_are_refused(exports, class_tree, tmp_path, capsys):
    import onnx

    proto = onnx.load(exports("classification", "onnx")["file"])
    meta = {p.key: p.value for p in proto.metadata_props}
    cases = {"missing": None, "unknown": json.dumps({**json.loads(meta[METADATA_KEY]),
                                                     "format_version": 99})}  # fmt: skip
    for name, value in cases.items():
        del proto.metadata_props[:]
        if value is not None:
            onnx.helper.set_model_props(proto, {METADATA_KEY: value})
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        with pytest.raises(SystemExit) as stop:
            main([str(path), str(class_tree)])
        assert stop.value.code == 1  # a framework error: status 1
    err = capsys.readouterr().err
    assert "carries no osteolightning metadata" in err and "osteo-export" in err
    assert "format_version 99" in err and "reads [1]" in err
    scripted = tmp_path / "plain.pt"
    import torch

    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(scripted))
    with pytest.raises(ConfigError, match="carries no osteolightning metadata"):
        load_portable(scripted)


def test_a_missing_exporter_names_the_package(make_cfg, trained, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))  # fmt: skip
    cfg = make_cfg("export", [f"ckpt_path={_ckpt(trained[0])}", "format=onnx"])
    with pytest.raises(ConfigError, match=r"onnxscript.*pip install onnxscript"):
        export(cfg)


def test_a_failing_parity_check_stops_the_export(make_cfg, trained):
    # no export is closer than -1: the check fails, the difference is named, the file removed
    cfg = make_cfg("export", [f"ckpt_path={_ckpt(trained[0])}", "format=torchscript",
                              "parity.atol=-1"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"differs from the checkpoint by up to .*removed"):
        export(cfg)
    assert not (Path(cfg.paths.output_dir) / "model.pt").exists()

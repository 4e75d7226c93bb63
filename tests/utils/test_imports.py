"""Start-up imports: heavy optional libraries are imported where used, not by every job."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

from osteolightning.utils.imports import hidden_modules, lazy_exports


@pytest.fixture
def modules_on_path(tmp_path, monkeypatch):
    """A package ``lazy_pkg`` (its ``heavy`` submodule defines ``Thing``) and a module
    ``plain_mod``, importable from ``tmp_path``; forgotten afterwards."""
    package = tmp_path / "lazy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from osteolightning.utils.imports import lazy_exports\n"
        "__getattr__, __dir__ = lazy_exports(__name__, {'Thing': '.heavy'})\n"
    )
    (package / "heavy.py").write_text("class Thing:\n    pass\n")
    (tmp_path / "plain_mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("lazy_pkg", "lazy_pkg.heavy", "plain_mod"):
        sys.modules.pop(name, None)


def test_a_lazy_export_is_imported_on_first_use_only(modules_on_path):
    package = importlib.import_module("lazy_pkg")
    assert "lazy_pkg.heavy" not in sys.modules
    assert "Thing" in dir(package)
    thing = package.Thing
    assert "lazy_pkg.heavy" in sys.modules and thing is sys.modules["lazy_pkg.heavy"].Thing
    from lazy_pkg import Thing

    assert Thing is thing
    with pytest.raises(AttributeError, match="has no attribute 'Other'"):
        _ = package.Other


def test_a_hidden_module_cannot_be_imported_inside_the_block_only(modules_on_path):
    with hidden_modules("plain_mod"), pytest.raises(ImportError):
        importlib.import_module("plain_mod")
    assert importlib.import_module("plain_mod").VALUE == 1
    # a module already imported is left alone
    with hidden_modules("plain_mod"):
        assert importlib.import_module("plain_mod").VALUE == 1
    assert lazy_exports  # the helper module imports cleanly


def test_a_job_imports_no_heavy_optional_library_before_it_needs_one():
    """What every job of a sweep imports: the command's module and the Hydra callbacks of every
    run (osteolightning/conf/hydra/default.yaml). W&B (which timm would import), scikit-learn, statsmodels,
    MONAI, ONNX, Optuna and the leaderboard's statistics are not among them."""
    code = textwrap.dedent(
        """
        import json, sys
        import osteolightning.train
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from osteolightning.utils.config import CONFIG_DIR
        hydra_cfg = OmegaConf.load(f"{CONFIG_DIR}/hydra/default.yaml")
        callbacks = [instantiate(c) for c in hydra_cfg.callbacks.values()]
        heavy = ["wandb", "sklearn", "statsmodels", "monai", "onnx", "onnxruntime", "optuna",
                 "osteolightning.ensemble.fusion", "osteolightning.ensemble.leaderboard.board"]
        print(json.dumps({"loaded": [m for m in heavy if m in sys.modules],
                          "callbacks": len(callbacks)}))
        import wandb  # still importable where used
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["callbacks"] >= 4
    assert result["loaded"] == []

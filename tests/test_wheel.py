"""The package works as users install it: a wheel built from the repository holds every config
and the Hydra plugins, and installed outside the checkout, its commands run from an empty folder
and write there.

The wheel is built from a copy of the sources with the environment's own setuptools (no build
isolation, no index) and installed with ``pip install --no-deps --target`` (the environment
already has the dependencies); the commands run with only that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("osteolightning", "hydra_plugins")
#: the console scripts that are Hydra applications (the others parse their own arguments)
HYDRA_APPS = {"osteo-train", "osteo-segment", "osteo-eval", "osteo-ensemble", "osteo-export"}

#: Run in the installed copy: where each package was imported from, and every console script of
#: the installed distribution called with ``--help`` (in this one process: a start each is slow)
DRIVER = r"""
import contextlib, io, json, os, sys
from importlib import metadata

from hydra.core.global_hydra import GlobalHydra

import hydra_plugins.osteo_selection
import hydra_plugins.osteo_sweeps
import osteolightning
from osteolightning.utils.config import CONFIG_DIR

dist = metadata.distribution("osteolightning")
out = {
    "cwd": os.getcwd(),
    "dist": str(dist.locate_file("")),
    "config_dir": CONFIG_DIR,
    "modules": [m.__file__ for m in (osteolightning, hydra_plugins.osteo_sweeps,
                                     hydra_plugins.osteo_selection)],
    "help": {},
}
for entry in dist.entry_points:
    if entry.group != "console_scripts":
        continue
    buffer, code = io.StringIO(), 0
    sys.argv = [entry.name, "--help"]
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            entry.load()()
        except SystemExit as stop:
            code = stop.code or 0
    GlobalHydra.instance().clear()
    out["help"][entry.name] = [code, buffer.getvalue()]
print(json.dumps(out))
"""


def _project() -> dict:
    """``[project]`` of pyproject.toml."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pytest's own dependency on 3.10
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]


def _source_files() -> set[str]:
    """Every file of the packages in the checkout (caches aside), as wheel paths."""
    return {
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources: pip builds a local folder in place, and
    setuptools' ``build/`` (reused between builds) must neither land in nor come from the
    checkout."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(base / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (base / "dist").glob("osteolightning-*.whl")
    return built


def test_the_wheel_holds_every_config_the_plugins_and_the_commands(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
    packaged = {n for n in names if ".dist-info/" not in n}
    source = _source_files()
    configs = {n for n in source if n.startswith("osteolightning/conf/") and n.endswith(".yaml")}
    assert len(configs) > 100 and "osteolightning/conf/train.yaml" in configs
    assert configs <= packaged, f"configs missing from the wheel: {sorted(configs - packaged)}"
    assert "hydra_plugins/osteo_sweeps/sweepers.py" in packaged
    # every file the packages hold at run time, Python or not, and nothing else
    assert packaged == source, (sorted(source - packaged), sorted(packaged - source))
    for name, target in _project()["scripts"].items():
        assert f"{name} = {target}" in entry_points


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The wheel installed outside the checkout (``site``), and the environment that runs its
    commands: only ``site`` on ``PYTHONPATH``, no ``OSTEO_*`` settings, W&B off."""
    site = tmp_path_factory.mktemp("installed") / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
         "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSTEO_", "HYDRA_"))}
    env.update(PYTHONPATH=str(site), WANDB_MODE="disabled")
    return site, env


def _run(installed: tuple[Path, dict], job: Path, command: str, *args: str):
    """A console script of the installed wheel, as a user types it, in ``job``."""
    site, env = installed
    done = subprocess.run(
        [str(site / "bin" / command), *args], cwd=job, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{command} {args}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def job(installed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder outside the checkout, after one tiny training run from it."""
    folder = tmp_path_factory.mktemp("job")
    assert not any(folder.iterdir())
    _run(installed, folder, "osteo-train", "debug=tiny")
    return folder


def test_the_installed_wheel_finds_its_code_configs_and_commands(installed, tmp_path: Path):
    site, env = installed
    probe = subprocess.run(
        [sys.executable, "-c", DRIVER], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stdout + probe.stderr
    found = json.loads(probe.stdout.splitlines()[-1])
    assert Path(found["cwd"]) == tmp_path
    assert Path(found["dist"]) == site
    assert Path(found["config_dir"]) == site / "osteolightning" / "conf"
    for module in found["modules"]:
        assert Path(module).is_relative_to(site), module
    assert set(found["help"]) == set(_project()["scripts"])
    groups = sorted(p.name for p in (ROOT / "osteolightning" / "conf").iterdir() if p.is_dir())
    groups.remove("hydra")  # Hydra's own groups, listed by --hydra-help
    for name, (code, text) in found["help"].items():
        assert code == 0, f"`{name} --help` exited {code}:\n{text}"
        if name in HYDRA_APPS:
            assert "== Configuration groups ==" in text, text
            for group in groups:
                assert f"\n{group}:" in text, f"`{name} --help` lists no group {group}"
        else:
            assert f"usage: {name}" in text or f"``{name} " in text, text


def test_the_installed_wheel_trains_from_an_empty_folder(job: Path):
    """``osteo-train debug=tiny``: the run, the phantom and the image cache under the folder."""
    (run,) = (job / "logs" / "train" / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["test/n"] > 0
    assert list((run / "checkpoints").glob("epoch_*.ckpt"))
    with open(run / "splits.csv", newline="") as handle:
        images = [Path(row["path"]) for row in csv.DictReader(handle)]
    assert images and all(p.is_relative_to(job / ".cache" / "phantom") for p in images)
    assert list((job / ".cache" / "preprocessed").iterdir())
    versions = json.loads((run / "versions.json").read_text())
    assert versions["osteolightning"] == _project()["version"]
    assert "git_commit" not in versions  # an installed copy has no commit of its own


@pytest.mark.slow
def test_every_command_of_the_installed_wheel_runs_from_the_folder(installed, job: Path):
    """The other commands, each on what the tiny run left, each writing under the folder."""
    (run,) = (job / "logs" / "train" / "runs").iterdir()
    (ckpt,) = (run / "checkpoints").glob("epoch_*.ckpt")
    (phantom,) = (job / ".cache" / "phantom").iterdir()
    manifest = phantom / "manifest.csv"
    _run(installed, job, "osteo-segment", "debug=seg_tiny")
    _run(installed, job, "osteo-eval", f"ckpt_path={ckpt}", "data=manifest",
         f"data.root={manifest}", "logger=tiny")  # fmt: skip
    _run(installed, job, "osteo-ensemble", f"runs=[{run},{run}]")
    _run(installed, job, "osteo-export", f"ckpt_path={ckpt}", "format=torchscript")
    for task, result in [("segment", "metrics.json"), ("eval", "metrics.json"),
                         ("ensemble", "metrics.json"), ("export", "model.pt")]:  # fmt: skip
        (out,) = (job / "logs" / task / "runs").iterdir()
        assert (out / result).is_file(), (task, sorted(p.name for p in out.iterdir()))
    _run(installed, job, "osteo-predict", str(ckpt), str(phantom / "images"), "--out", "p.csv")
    with open(job / "p.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(list((phantom / "images").iterdir()))
    audit = _run(installed, job, "osteo-data", "audit", str(manifest), "out=audit.json")
    assert (job / "audit.json").is_file(), audit.stdout

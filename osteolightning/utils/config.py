"""Hydra/OmegaConf glue: config location, resolvers, instantiation of lists of objects."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from osteolightning.backbones import config_fact, facts_of
from osteolightning.errors import ConfigError

#: The configs ship inside the package, ``osteolightning/conf/``, so an installed wheel finds them
#: as a checkout does; OSTEO_CONFIG_DIR points elsewhere, e.g. at a copy with a lab's own defaults.
CONFIG_DIR = str(
    Path(os.environ.get("OSTEO_CONFIG_DIR", Path(__file__).resolve().parents[1] / "conf"))
)


def _multirun_job() -> Any:
    """The Hydra config of the running multirun job, or ``None`` outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg if hydra_cfg.get("mode") == RunMode.MULTIRUN else None


def sweep_group(default: str) -> str:
    """``${sweep_group:DEFAULT}``: in a multirun, the name of its directory (``hydra.sweep.dir``,
    e.g. ``2026-11-24_01-30-00_123456``), shared by all its jobs; else ``DEFAULT``."""
    job = _multirun_job()
    return Path(str(job.sweep.dir)).name if job is not None else str(default)


#: W&B caps run names; longer override lists are shortened with an ellipsis.
MAX_RUN_NAME = 128


def sweep_job_name(default: str) -> str:
    """``${sweep_job_name:DEFAULT}``: in a multirun, ``<job number>-<overrides>`` (e.g.
    ``3-model/backbone=xception,seed=1``); else ``DEFAULT``."""
    job = _multirun_job()
    if job is None:
        return str(default)
    name = f"{job.job.num}-{','.join(job.overrides.task) or 'defaults'}"
    return name if len(name) <= MAX_RUN_NAME else name[: MAX_RUN_NAME - 1] + "…"


def launch_dir() -> str:
    """``${launch_dir:}``: the folder the command was started in (``hydra.runtime.cwd`` once
    Hydra has set it, else the working directory). Unlike ``${hydra:runtime.cwd}`` it also
    resolves before a job starts, where the sweeper reads ``hydra.sweep.dir``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return str(cwd)
    return os.getcwd()


@functools.lru_cache(maxsize=8)
def _checkpoint_facts(path: str) -> dict[str, Any]:
    """What a classification checkpoint says about its network: its registry name, input
    size, channels, normalisation and saliency layer (from the run config and hyperparameters
    it carries; loaded with ``weights_only=True``)."""
    from osteolightning.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"Checkpoint '{path}' (model.net.checkpoint) does not exist. Pass the .ckpt of a "
            "classification run: logs/train/runs/<run>/checkpoints/<name>.ckpt."
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file: torch raises many types
        raise ConfigError(f"Cannot read checkpoint '{path}' (model.net.checkpoint): {err}") from err
    run = checkpoint.get("osteo_config") if isinstance(checkpoint, dict) else None
    hp = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    name = ((run or {}).get("model") or {}).get("net", {}).get("name")
    if not run or not hp or not name or "image_size" not in hp:
        raise ConfigError(
            f"'{path}' is not a checkpoint of an osteo-train classifier with a backbone network "
            "(model=classifier): its network, input size and normalisation cannot be read."
        )
    return {
        "name": str(name),
        "image_size": int(hp["image_size"]),
        "in_chans": int(hp["in_chans"]),
        "mean": [float(v) for v in hp["mean"]],
        "std": [float(v) for v in hp["std"]],
        "cam_layer": getattr(facts_of(run), "cam_layer", None),
    }


def checkpoint_fact(path: str, key: str) -> Any:
    """``${checkpoint:<ckpt>,<key>}``: one fact of a classification checkpoint's network
    (``name``, ``image_size``, ``in_chans``, ``mean``, ``std``, ``cam_layer``), so a trained
    knee network serves as a backbone with its own preprocessing (``model/backbone=checkpoint``)."""
    return _checkpoint_facts(str(path))[key]


def backbone_fact(key: str, *, _root_: DictConfig) -> Any:
    """``${backbone:<fact>}``: a fact of the backbone ``model.net.name`` names, from the
    backbone registry (:mod:`osteolightning.backbones`); a value set in config overrides it."""
    return config_fact(str(key), _root_)


def register_resolvers() -> None:
    """``${len:${class_names}}``, ``${launch_dir:}``, ``${sweep_group:...}``,
    ``${sweep_job_name:...}``, ``${checkpoint:<ckpt>,<key>}``, ``${backbone:<fact>}``; safe to
    call repeatedly."""
    resolvers = {
        "len": lambda seq: len(seq),
        "launch_dir": launch_dir,
        "sweep_group": sweep_group,
        "sweep_job_name": sweep_job_name,
        "checkpoint": checkpoint_fact,
        "backbone": backbone_fact,
    }
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()


def instantiate_list(group: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every entry of a config group that is a mapping of ``name: {_target_: ...}``.

    Entries set to ``null`` are skipped, so one override (``callbacks.early_stopping=null``)
    switches an entry off.
    """
    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise ConfigError(
            f"Expected the `{kind}` config to be a mapping of name → object, but got {group!r}."
        )
    objects = []
    for name, conf in group.items():
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ConfigError(f"Expected `{kind}.{name}` to have a `_target_`, but got {conf!r}.")
        objects.append(hydra.utils.instantiate(conf))
    return objects


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat ``dotted.key: value`` pairs (lists are values, not descended).

    An empty mapping below the top is a value of its own (``{"logger": {}}`` gives
    ``{"logger": {}}``), so a config that empties a group differs from one that lacks it; the
    run hash (:func:`osteolightning.runs.lifecycle.hashed_config`) depends on that. An empty
    config gives ``{}``.

    Args:
        config: plain dicts (``OmegaConf.to_container``, ``yaml.safe_load``).
        prefix: prepended to every key (``"data."``), ending in a dot.

    Example:
        >>> flatten_config({"data": {"batch_size": 8, "augment": {}}, "seed": 1})
        {'data.batch_size': 8, 'data.augment': {}, 'seed': 1}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain dicts/lists (safe to pickle with weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def warn_conflicts(cfg: DictConfig) -> None:
    """Warn about options that all apply where one of them was probably meant."""
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    if data.get("sampler") == "balanced" and model.get("class_weighting") == "balanced":
        # Both apply (neither wins): the imbalance is corrected twice.
        rank_zero_warn(
            "data.sampler=balanced already draws the classes equally often, and "
            "model.class_weighting=balanced also weights the loss by inverse frequency: the "
            "imbalance is corrected twice. Set model.class_weighting=none unless intended."
        )


def compose_config(
    config_name: str,
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> DictConfig:
    """Compose ``osteolightning/conf/<config_name>.yaml`` with ``overrides`` as its entry point
    would, outside a Hydra app (benchmarks, scripts, notebooks).

    Args:
        config_name: ``train``, ``segment``, ``eval``, ...
        overrides: Hydra overrides, e.g. ``["model/backbone=resnet18", "image_size=128"]``.
        output_dir: the run directory (``paths.output_dir``; created); ``None``: no run
            directory (``${hydra:...}`` stays unresolved: enough to instantiate ``cfg.data``).
        cache_dir: ``paths.cache_dir`` (phantoms and preprocessed images), if not the default.

    Returns:
        The composed config, without its ``hydra`` node (as an app's ``cfg``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    if output_dir is not None:
        run_dir = Path(output_dir)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.runtime.cwd = str(run_dir.parent)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(Path(output_dir).parent / "logs")
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
    return cfg

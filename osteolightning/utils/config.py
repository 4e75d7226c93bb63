"""Hydra/OmegaConf glue: config location, resolvers, instantiation of lists of objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from osteolightning.errors import ConfigError

#: The configs live in ``conf/`` at the top of the repository (DESIGN.md); OSTEO_CONFIG_DIR
#: points elsewhere, e.g. at a copy with a lab's own defaults.
CONFIG_DIR = str(
    Path(os.environ.get("OSTEO_CONFIG_DIR", Path(__file__).resolve().parents[2] / "conf"))
)


def register_resolvers() -> None:
    """``${len:${class_names}}`` and friends; safe to call repeatedly."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))


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


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain dicts/lists (safe to pickle with weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]

"""The config checked before any work: what would otherwise fail minutes or hours later.

* settings without a value (``???``, e.g. ``data.root``) or with an empty one;
* output folders that cannot be made because a path below a regular file
  (``paths.output_dir=notes.txt/run``; :func:`check_output_location`);
* arguments that the configured class does not take (``trainer.max_epoch=3``, a typo in a
  callback's or the data's options), with "did you mean";
* an optimiser (``model.optimizer``) and learning-rate schedule (``model.scheduler``) that
  cannot be built with their values (``lr=-1``, ``weight_decay=-0.1``): each is built once on a
  dummy parameter, as training would build it;
* values out of range (``data.batch_size=0``, ``data.num_workers=-1``, ``trainer.max_epochs=0``,
  ``data.num_folds=1``) and options that contradict each other (split fractions that leave no
  training images, ``data.fold`` outside the folds);
* monitored metrics (``monitor``, the callbacks' ``monitor``, ``optimized_metric``) that the
  model does not log (:func:`check_monitors`, once the model exists).

Every finding is a :class:`~osteolightning.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from osteolightning.errors import ConfigError, did_you_mean, shorten

#: Keys of an instantiable node that Hydra reads itself.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
#: Top-level groups whose nodes are instantiated, and whose keys are checked.
INSTANTIATED = ("trainer", "data", "model", "callbacks", "logger")
#: Settings that must name something: an empty value is as bad as none.
NON_EMPTY = ("data.root",)
#: Folders a run writes into (or creates): each must be a folder or creatable as one.
OUTPUT_FOLDERS = ("paths.output_dir", "paths.log_dir", "paths.cache_dir")


def check_config(cfg: DictConfig) -> None:
    """Check ``cfg`` before anything is built (see the module docstring).

    Raises:
        ConfigError: the first finding, naming the key and what would be accepted.
    """
    check_values(cfg)
    for key in OUTPUT_FOLDERS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and str(value).strip():
            check_output_location(value, key)
    for key, node in _nodes(cfg):
        check_arguments(node, key)
    check_ranges(cfg)
    check_conflicts(cfg)
    check_optimizer(cfg)


def missing_keys(cfg: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (not those that merely interpolate one)."""
    found = []
    keys = range(len(cfg)) if isinstance(cfg, ListConfig) else list(cfg.keys())
    for key in keys:
        node = cfg._get_node(key)
        name = f"{prefix}[{key}]" if isinstance(cfg, ListConfig) else f"{prefix}{key}"
        if node._is_interpolation():
            continue
        if node._is_missing():
            found.append(name)
        elif isinstance(node, DictConfig | ListConfig) and not node._is_none():
            found += missing_keys(node, f"{name}." if isinstance(node, DictConfig) else name)
    return found


def check_values(cfg: DictConfig) -> None:
    """Raise for settings with no value (``???``) or an empty one where one is needed."""
    missing = sorted(k for k in missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        examples = " ".join(f"{k}=..." for k in missing[:3])
        raise ConfigError(
            f"Expected a value for {shorten(missing)}, but none was given. Set it on the "
            f"command line, e.g. `{examples}`.",
            details=missing,
        )
    for key in NON_EMPTY:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and not str(value).strip():
            raise ConfigError(
                f"Expected `{key}` to name a folder or a CSV manifest, but it is empty "
                "(an empty value would read the current folder). Pass e.g. "
                f"{key}=/data/knees."
            )


def check_output_location(path: str | Path, key: str, file: bool | None = False) -> Path:
    """Raise when ``path`` cannot be written because it lies below a regular file, or is of
    the wrong kind itself.

    Args:
        path: the folder (or file) a command will write.
        key: how the user gave it (``paths.output_dir``, ``--out``), for the message.
        file: ``True``: ``path`` names a file to write (it must not be a folder); ``False``: a
            folder (it must not be a file); ``None``: either (only its parents are judged).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: naming the key, the path and the file in the way.

    Example:
        >>> check_output_location("/tmp/run", "paths.output_dir")
        PosixPath('/tmp/run')
    """
    path = Path(str(path)).expanduser()
    what = {True: "a file", False: "a folder", None: "a path"}[file]
    if file is not None and path.exists() and path.is_dir() == file:
        kind = "a folder" if file else "a file"
        raise ConfigError(
            f"Expected `{key}` to name {what}, but '{path}' is {kind}. Pass another path."
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"Expected `{key}` to name {what} that can be created, but '{path}' lies "
                    f"below '{parent}', which is a file, not a folder. Pass a path in a folder "
                    f"(e.g. '{parent.parent / path.name}')."
                )
            break
    return path


def _nodes(cfg: DictConfig) -> Iterator[tuple[str, DictConfig]]:
    """Every instantiable node under the instantiated groups, with its dotted key."""

    def walk(node: Any, key: str) -> Iterator[tuple[str, DictConfig]]:
        if isinstance(node, DictConfig):
            if "_target_" in node:
                yield key, node
            for name in node:
                if name not in HYDRA_KEYS:
                    yield from walk(node._get_node(name), f"{key}.{name}")
        elif isinstance(node, ListConfig):
            for i, item in enumerate(node):
                yield from walk(item, f"{key}[{i}]")

    for group in INSTANTIATED:
        if group in cfg and cfg[group] is not None:
            yield from walk(cfg[group], group)


def check_arguments(node: DictConfig, key: str) -> None:
    """Raise when ``node`` has keys its ``_target_`` does not take (targets that take any
    ``**kwargs`` are not checked).

    Raises:
        ConfigError: an unknown key, with the accepted ones and a "did you mean".
    """
    target = node.get("_target_")
    try:
        obj = hydra.utils.get_object(str(target))
    except Exception as err:  # noqa: BLE001 - any import failure of the configured target
        raise ConfigError(
            f"`{key}._target_` is {target!r}, which cannot be imported ({err}). Expected the "
            "dotted path of a class or function."
        ) from err
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in node if k not in HYDRA_KEYS and k not in params]
    if unknown:
        accepted = sorted(p for p in params if p not in ("self", "args", "kwargs"))
        raise ConfigError(
            f"`{key}.{unknown[0]}` is not an argument of {target}.{did_you_mean(unknown[0], accepted)} "
            f"It takes: {', '.join(accepted)}."
        )


def check_conflicts(cfg: DictConfig) -> None:
    """Raise for options that contradict each other."""
    evaluation = cfg.get("evaluation") or {}
    data = cfg.get("data") or {}
    trainer = cfg.get("trainer") or {}
    if (
        evaluation.get("temperature_scaling")
        and not data.get("evaluate_all")
        and data.get("val_fraction") is not None
        and float(data.get("val_fraction")) <= 0
    ):
        raise ConfigError(
            "evaluation.temperature_scaling=true fits the temperature on the validation split, "
            "but data.val_fraction=0 leaves none. Give the data a validation split or turn "
            "temperature scaling off."
        )
    folds, fold = data.get("num_folds"), data.get("fold")
    if folds is not None and fold is not None and not 0 <= int(fold) < int(folds):
        raise ConfigError(
            f"Expected `data.fold` in [0, {int(folds) - 1}] for data.num_folds={folds}, but got "
            f"{fold}."
        )
    low, high = trainer.get("min_epochs"), trainer.get("max_epochs")
    if low is not None and high is not None and high >= 0 and int(low) > int(high):
        raise ConfigError(
            f"Expected trainer.min_epochs <= trainer.max_epochs, but got {low} > {high}."
        )
    check_split_shares(data)


#: Words of torch's optimiser messages ("Invalid learning rate: -1") → the argument they name.
_OPTIMIZER_WORDS = {
    "learning rate": "lr",
    "weight_decay": "weight_decay",
    "epsilon": "eps",
    "beta": "betas",
    "momentum": "momentum",
    "dampening": "dampening",
}


def check_optimizer(cfg: DictConfig) -> None:
    """Build ``model.optimizer`` on a dummy parameter and ``model.scheduler`` on it, as
    training does after the data is ready; raise for a value they refuse.

    Raises:
        ConfigError: naming the key and its value (``model.optimizer.lr=-1``), or the node
            when the argument cannot be told.
    """
    import torch

    model = cfg.get("model") or {}
    node = model.get("optimizer") if isinstance(model, DictConfig) else None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    lr = node.get("lr")
    if isinstance(lr, int | float) and not isinstance(lr, bool) and lr <= 0:
        raise ConfigError(
            f"Expected `model.optimizer.lr` to be a positive learning rate, but got {lr}."
        )
    try:
        optimizer = hydra.utils.instantiate(node)(params=[torch.zeros(1, requires_grad=True)])
    except Exception as err:  # noqa: BLE001 - torch refuses values with ValueError/TypeError
        raise _optimizer_error("model.optimizer", node, err) from err
    schedule = model.get("scheduler")
    if isinstance(schedule, DictConfig) and "_target_" in schedule:
        try:
            hydra.utils.instantiate(schedule)(optimizer=optimizer, total_steps=100)
        except Exception as err:  # noqa: BLE001 - any refusal of its values
            raise _optimizer_error("model.scheduler", schedule, err) from err


def _optimizer_error(key: str, node: DictConfig, err: BaseException) -> ConfigError:
    """A ConfigError for ``node`` (``key``) that its target refused with ``err``."""
    while err.__cause__ is not None and type(err).__name__ == "InstantiationException":
        err = err.__cause__
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, ConfigError):  # ours names the argument: "argument `warmup_fraction`"
        return ConfigError(text.replace("argument `", f"`{key}."))
    named = next((a for w, a in _OPTIMIZER_WORDS.items() if w in text.lower() and a in node), None)
    if named:
        return ConfigError(
            f"Expected `{key}.{named}` to be a value {node._target_} accepts, but got "
            f"{node.get(named)} ({text})."
        )
    values = ", ".join(f"{k}={node.get(k)}" for k in node if k not in HYDRA_KEYS)
    return ConfigError(
        f"Expected `{key}` to hold values {node._target_} accepts, but building it failed: "
        f"{text}. Its values: {values or 'none'}."
    )


def _integer(key: str, value: Any, low: int, what: str) -> int | None:
    """``value`` as an int, or ``None`` when unset; raises when it is not an integer >= ``low``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"Expected `{key}` to be {what}, but got {value!r}.")
    return value


def _fraction(key: str, value: Any) -> float | None:
    """``value`` as a float, or ``None`` when unset; raises when it is not in (0, 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(
            f"Expected `{key}` to be a share of the images in the (0, 1) range, but got {value!r}."
        )
    return float(value)


def check_ranges(cfg: DictConfig) -> None:
    """Raise for sizes and counts that make no sense (see the module docstring)."""
    data = cfg.get("data") or {}
    trainer = cfg.get("trainer") or {}
    _integer("data.batch_size", data.get("batch_size"), 1, "a positive integer")
    _integer("data.num_workers", data.get("num_workers"), 0, "an integer >= 0 (0: no workers)")
    epochs = trainer.get("max_epochs")
    bounded = (trainer.get("max_steps") or -1) > 0 or trainer.get("max_time") is not None
    if not (epochs == -1 and bounded):  # -1 with max_steps or max_time: Lightning's "no limit"
        what = "a positive integer (or -1, no limit, with trainer.max_steps or max_time)"
        _integer("trainer.max_epochs", epochs, 1, what)
    _integer("data.num_folds", data.get("num_folds"), 2, "an integer >= 2 (or null)")
    inner = _integer("data.inner_folds", data.get("inner_folds"), 2, "an integer >= 2 (or null)")
    if inner is not None and not 0 <= int(data.get("inner_fold", 0)) < inner:
        raise ConfigError(
            f"Expected `data.inner_fold` in [0, {inner - 1}] for data.inner_folds={inner}, but "
            f"got {data.get('inner_fold')}."
        )
    share = data.get("train_fraction")
    if share is not None and not (isinstance(share, int | float) and 0 < share <= 1):
        raise ConfigError(f"Expected `data.train_fraction` in (0, 1], but got {share!r}.")


def check_split_shares(data: Any) -> None:
    """Raise for split shares outside (0, 1) or that leave no training images."""
    if data.get("evaluate_all"):  # every image is evaluated: no split
        return
    val = _fraction("data.val_fraction", data.get("val_fraction"))
    if val is None:
        return
    folds = data.get("num_folds")
    if folds is not None:
        if val + 1 / folds >= 1:
            raise ConfigError(
                f"Expected data.val_fraction + 1/data.num_folds < 1 (the rest is the training "
                f"split), but data.val_fraction={val:g} and data.num_folds={folds} (a test "
                f"fold of {1 / folds:.2g}) leave no training images. Lower data.val_fraction "
                f"or raise data.num_folds."
            )
        return
    test = _fraction("data.test_fraction", data.get("test_fraction"))
    if test is not None and val + test >= 1:
        raise ConfigError(
            f"Expected data.val_fraction + data.test_fraction < 1 (the rest is the training "
            f"split), but data.val_fraction={val:g} and data.test_fraction={test:g} add up to "
            f"{val + test:g}. Lower one of them, e.g. data.val_fraction=0.15 "
            f"data.test_fraction=0.15."
        )


def check_monitors(cfg: DictConfig, logged: Sequence[str]) -> None:
    """Raise when a monitored metric is not one the model logs every validation epoch.

    Args:
        cfg: the run config (``monitor``, ``callbacks.*.monitor``, ``optimized_metric``).
        logged: the keys the model logs (its ``monitorable``).

    Raises:
        ConfigError: naming the key, the metric, a "did you mean" and what is logged.
    """
    wanted = [("monitor", cfg.get("monitor"))]
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("monitor") is not None:
            wanted.append((f"callbacks.{name}.monitor", node.monitor))
    if cfg.get("optimized_metric"):
        wanted.append(("optimized_metric", cfg.optimized_metric))
    for key, metric in wanted:
        if metric is not None and str(metric) not in logged:
            raise ConfigError(
                f"Expected `{key}` to be a metric the model logs every validation epoch, but "
                f"got {metric!r}.{did_you_mean(str(metric), logged)} It logs: "
                f"{', '.join(logged)}."
            )

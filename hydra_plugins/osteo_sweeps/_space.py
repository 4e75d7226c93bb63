"""The search space of ``hydra.sweeper.params``, in hydra-optuna-sweeper's grammar, as Optuna
distributions.

======================================  ==============================================================
``choice(a, b, c)``                     categorical
``interval(lo, hi)``                    uniform float (int when both ends are ints)
``tag(log, interval(lo, hi))``          log-uniform
``range(start, stop, step)``            the values Hydra's grid would run (``stop`` excluded), as an
                                        int or float distribution with that step
``range(...)`` with ``shuffle``         categorical over those values
anything else (``trainer.max_epochs=5``) a fixed override of every trial
======================================  ==============================================================

(hydra-optuna-sweeper includes ``stop`` in a range; here a range means what it means in a grid.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from osteolightning.errors import ConfigError

#: override keys that say where a worker writes, not what a trial is
BOOKKEEPING = ("paths.", "hydra.")


@dataclass(frozen=True)
class SearchSpace:
    """A study's search space and the overrides every trial shares.

    Attributes:
        distributions: parameter (override key) → Optuna distribution, in config order.
        specs: parameter → the text it was given as (``tag(log, interval(1e-05, 0.003))``).
        fixed: override key → value (as override text) for every trial.
    """

    distributions: dict[str, BaseDistribution]
    specs: dict[str, str]
    fixed: dict[str, str]

    def describe(self) -> dict[str, object]:
        """What a study stores to recognise its space: parameter → {spec, distribution JSON}
        and the fixed overrides (bookkeeping aside: ``paths.*``, where a worker writes)."""
        return {
            "params": {
                k: {"spec": self.specs[k], "distribution": distribution_to_json(d)}
                for k, d in self.distributions.items()
            },
            "fixed": {k: v for k, v in self.fixed.items() if not k.startswith(BOOKKEEPING)},
        }

    def overrides(self, params: dict[str, object]) -> list[str]:
        """A trial's overrides: its sampled ``params`` and the fixed ones."""
        return [
            *(f"{k}={v}" for k, v in params.items()),
            *(f"{k}={v}" for k, v in self.fixed.items()),
        ]


def _values(override: Override) -> list:
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    bad = [v for v in values if not isinstance(v, str | int | float | bool | type(None))]
    if bad:
        raise ConfigError(
            f"Expected the choices of `{override.get_key_element()}` to be strings, numbers, "
            f"booleans or null, but got {bad}."
        )
    return values


def distribution_of(override: Override) -> BaseDistribution | None:
    """The distribution a sweep override stands for; ``None`` for a plain (fixed) override.

    Raises:
        ConfigError: an empty or inverted interval or range, or a choice of non-scalars.
    """
    if not override.is_sweep_override():
        return None
    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(_values(override))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = _values(override)
        if not values:
            raise ConfigError(f"Expected `{key}` to be a non-empty range, but got {value}.")
        if value.shuffle:
            return CategoricalDistribution(values)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        low, high, log = value.start, value.end, "log" in value.tags
        if low is None or high is None or not low < high or (log and low <= 0):
            raise ConfigError(
                f"Expected `{key}` to be an interval(low, high) with low < high (and low > 0 "
                f"with tag(log, ...)), but got {override.input_line}."
            )
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"`{override.input_line}`: this kind of sweep has no Optuna distribution.")


def parse_search_space(overrides: Sequence[str]) -> SearchSpace:
    """Parse ``key=<sweep>`` and ``key=value`` overrides (``hydra.sweeper.params`` first, then
    the command line: a later override of a key replaces an earlier one).

    Raises:
        ConfigError: an override that does not parse, or a sweep without a distribution.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as err:  # Hydra's OverrideParseException
        raise ConfigError(f"Cannot parse the search space {list(overrides)}: {err}") from err
    distributions: dict[str, BaseDistribution] = {}
    specs: dict[str, str] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        distributions.pop(key, None), specs.pop(key, None), fixed.pop(key, None)
        distribution = distribution_of(override)
        if distribution is None:
            fixed[key] = override.get_value_element_as_str()
        else:
            distributions[key] = distribution
            specs[key] = override.input_line.split("=", 1)[1]
    return SearchSpace(distributions, specs, fixed)


def space_differences(stored: dict, wanted: dict) -> list[str]:
    """The differences between two :meth:`SearchSpace.describe` records, in words."""
    differences = []
    old_params, new_params = stored.get("params") or {}, wanted.get("params") or {}
    for key in sorted(set(old_params) | set(new_params)):
        old, new = old_params.get(key), new_params.get(key)
        if old is None or new is None:
            where = "only in the stored study" if new is None else "only in this sweep"
            differences.append(f"{key}: {(old or new)['spec']} ({where})")
        elif json.loads(old["distribution"]) != json.loads(new["distribution"]):
            differences.append(f"{key}: {old['spec']} in the study, {new['spec']} here")
    old_fixed, new_fixed = stored.get("fixed") or {}, wanted.get("fixed") or {}
    for key in sorted(set(old_fixed) | set(new_fixed)):
        if old_fixed.get(key) != new_fixed.get(key):
            old, new = old_fixed.get(key, "<not set>"), new_fixed.get(key, "<not set>")
            differences.append(f"{key}={old} in the study, {key}={new} here")
    return differences


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """The values of each parameter for ``optuna.samplers.GridSampler`` (discrete ones only).

    Raises:
        ConfigError: a continuous parameter (an ``interval`` without step).
    """
    values: dict[str, list[Any]] = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = list(dist.choices)
        elif getattr(dist, "step", None) is not None:
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            values[name] = [dist.low + i * dist.step for i in range(n)]
        else:
            raise ConfigError(
                f"Expected the parameters of a GridSampler search to be choice(...) or "
                f"range(...), but `{name}` is {space.specs[name]}."
            )
    return values

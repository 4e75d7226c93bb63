"""GPU options of a LightningModule's network: ``torch.compile`` and the channels-last layout.

* ``model.compile=true`` compiles ``net`` with ``torch.compile`` (``nn.Module.compile``: in
  place, so the state dict's keys and the checkpoints stay those of the plain network); a
  mapping passes its keys to ``torch.compile`` (``model.compile={mode: max-autotune}``,
  ``{backend: aot_eager}``). The first steps are slower while it compiles.
* ``model.channels_last=true`` stores the convolution weights and the input batches in the
  NHWC layout, which tensor-core convolutions (bf16/fp16 on recent GPUs) prefer.

Both are set in ``configure_model``, on every process after DDP has started it, and are not
saved in checkpoints: a checkpoint loads into a plain network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from osteolightning.errors import ConfigError

#: the keys ``model.compile`` may pass to ``torch.compile``
COMPILE_KEYS = ("mode", "backend", "fullgraph", "dynamic", "options")


def compile_kwargs(value: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``torch.compile``'s keyword arguments from ``model.compile`` (``None``: off).

    Raises:
        ConfigError: neither a boolean nor a mapping of :data:`COMPILE_KEYS`.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(COMPILE_KEYS))
        if not unknown:
            return dict(value)
    raise ConfigError(
        f"Expected argument `compile` to be true, false or a mapping of torch.compile's "
        f"arguments {list(COMPILE_KEYS)}, but got {value!r}."
    )


class Accelerated:
    """``compile`` and ``channels_last`` for the ``net`` of a LightningModule (a mixin)."""

    net: torch.nn.Module

    def _init_acceleration(
        self, compile: bool | Mapping[str, Any] | None, channels_last: bool
    ) -> None:
        self._compile = compile_kwargs(compile)
        self._channels_last = bool(channels_last)
        self._accelerated = False

    def configure_model(self) -> None:
        """Lightning's hook, once per process before the optimiser is made."""
        if self._accelerated:
            return
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self._compile is not None:
            self.net.compile(**self._compile)
        self._accelerated = True

    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in the network's memory layout."""
        if self._channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

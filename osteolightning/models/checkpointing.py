"""What every checkpoint of an osteolightning module carries besides its weights."""

from __future__ import annotations

from typing import Any

#: the checkpoint key holding the fully resolved run config (read by ``osteo-eval``,
#: ``osteo-predict`` and the ensembles to rebuild the network and its preprocessing).
RUN_CONFIG_KEY = "osteo_config"


class StoresRunConfig:
    """LightningModule mixin: the resolved run config goes into every checkpoint the module
    writes, weights-only ones included (Lightning calls no callback hook for those, so the
    config cannot come from a callback). :class:`~osteolightning.callbacks.RunArtifacts` sets
    ``run_config`` when a run starts."""

    run_config: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config:
            checkpoint[RUN_CONFIG_KEY] = self.run_config

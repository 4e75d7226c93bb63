"""What a training step reports, at a cost that does not grow with the number of steps.

On a GPU a training step is queued, not run: the host only waits for the device where Python
reads a value (``loss.item()``, ``if not torch.isfinite(loss)``, a progress bar showing a
device tensor). One such wait per step leaves the GPU idle while the next step is prepared.
So the step's loss goes to the loggers and the progress bar only on logging steps
(``trainer.log_every_n_steps``), copied to the host there, and the check that the loss is
finite reads its flags on those steps too (every step on the CPU, where reading costs
nothing), naming the first bad step's batch and files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch


def logging_step(module: L.LightningModule) -> bool:
    """Whether this training step's values reach the loggers (``log_every_n_steps``); ``True``
    outside a trainer."""
    trainer = module._trainer
    if trainer is None:
        return True
    # Lightning's own rule for on-step values (its logger connector's `should_update_logs`)
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True)) or bool(trainer.fast_dev_run)


class StepLosses:
    """The training loss of each step: logged on logging steps, checked for NaN/inf.

    Args:
        advice: the end of the error message (what to check).
        every_step: check every step (``None``: where the loss is on the CPU, where reading
            it costs nothing); otherwise on logging steps and at :meth:`check`.

    Example:
        >>> watch = StepLosses("Check those images.")
        >>> module = L.LightningModule()
        >>> watch(module, torch.tensor(0.5), batch_idx=0, files=["a.png"])  # fine: no error
    """

    def __init__(self, advice: str, every_step: bool | None = None) -> None:
        self.advice, self.every_step = advice, every_step
        self._flags: list[torch.Tensor] = []
        self._where: list[tuple[int, int, int, list[str], torch.Tensor]] = []

    def __call__(
        self,
        module: L.LightningModule,
        loss: torch.Tensor,
        batch_idx: int,
        files: Sequence[str] | None = None,
    ) -> None:
        """Record this step's ``loss``; on a logging step (or on the CPU) check the steps since
        the last check, and on a logging step log the loss (a host value) for the loggers and
        the progress bar.

        Raises:
            FloatingPointError: a recorded loss is NaN or infinite, naming its step, batch and
                files.
        """
        loss = loss.detach()
        where = (module.global_step, module.current_epoch, batch_idx, list(files or [])[:8], loss)
        self._flags.append(torch.isfinite(loss))
        self._where.append(where)
        log_now = logging_step(module)
        every_step = loss.device.type == "cpu" if self.every_step is None else self.every_step
        if log_now or every_step:
            self.check()
        if log_now and module._trainer is not None:
            # a host tensor: the progress bar reads it every step without waiting for the GPU
            module.log("train/loss", loss.to("cpu"), on_step=True, on_epoch=False, prog_bar=True)

    def check(self) -> None:
        """Check the losses recorded since the last check (one wait for all of them).

        Raises:
            FloatingPointError: naming the first non-finite step's batch and files.
        """
        if not self._flags:
            return
        finite = torch.stack(self._flags).cpu()
        where, self._flags, self._where = self._where, [], []
        if bool(finite.all()):
            return
        step, epoch, batch_idx, files, loss = where[int((~finite).nonzero()[0, 0])]
        raise FloatingPointError(
            f"The training loss became {loss.item()} at step {step} (epoch {epoch}, batch "
            f"{batch_idx}; files: {files}). {self.advice}"
        )


def batch_files(batch: dict[str, Any]) -> list[str]:
    """The files of a batch (its ``path`` entry), for error messages."""
    return list(batch.get("path") or [])

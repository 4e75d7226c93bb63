"""A sweep's disk: keep the best K jobs' weights, and say what the sweep occupies.

Every job of a sweep writes its predictions (what leaderboards, comparisons, ensembles and
reports read) and its best weights (what ``osteo-eval``, ``osteo-predict`` and ``osteo-export``
read); its resumable ``last.ckpt`` goes once it has finished
(:func:`~osteolightning.callbacks.last_checkpoint.release_resume_state`). A sweep of a hundred
large backbones still keeps a hundred sets of weights; :class:`SweepCheckpoints` (a Hydra
callback, ``hydra.callbacks.checkpoints``) keeps only those of the best ``keep_best_k`` finished
jobs by the validation value their checkpoint was chosen on (``<monitor>_best`` in each job's
``metrics.json``: never a test metric), and writes ``<sweep>/disk.json``: the sweep's bytes,
its checkpoints' bytes and which jobs' weights were removed. Jobs that have not finished
(killed, failed: to be continued) and jobs without the value are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from osteolightning.errors import ConfigError
from osteolightning.runs import lifecycle, rundir
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: the summary a sweep leaves beside its jobs
DISK = "disk.json"


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def finished_jobs(sweep_dir: str | Path) -> list[Path]:
    """The job folders of ``sweep_dir`` whose run has finished (marker ``finished``)."""
    jobs = []
    for path in sorted(Path(sweep_dir).iterdir()):
        marker = lifecycle.read_marker(path) if path.is_dir() else None
        if marker and marker.get("state") == "finished":
            jobs.append(path)
    return jobs


def keep_best_weights(
    sweep_dir: str | Path, k: int, key: str, mode: str = "max"
) -> dict[str, list[str]]:
    """Remove the checkpoints of every finished job of ``sweep_dir`` but the best ``k`` by
    ``metrics.json[key]`` (``mode``: ``max`` or ``min``); jobs without ``key`` keep theirs.

    Returns:
        ``{"kept": [...], "removed": [...], "unranked": [...]}`` job folder names.

    Raises:
        ConfigError: ``k`` below 1, ``mode`` not max/min.
    """
    if int(k) < 1:
        raise ConfigError(f"Expected `keep_best_k` to be an integer >= 1 or null, but got {k}.")
    if mode not in ("max", "min"):
        raise ConfigError(f"Expected `mode` to be 'max' or 'min', but got {mode!r}.")
    scored, unranked = [], []
    for job in finished_jobs(sweep_dir):
        value = rundir.read_metrics(job).get(key) if (job / rundir.METRICS).is_file() else None
        if isinstance(value, (int, float)) and value == value:
            scored.append((float(value), job))
        else:
            unranked.append(job.name)
    scored.sort(key=lambda item: item[0], reverse=mode == "max")
    kept = [job for _, job in scored[: int(k)]]
    removed = []
    for _, job in scored[int(k) :]:
        files = sorted((job / rundir.CHECKPOINTS).glob("*.ckpt"))
        for file in files:
            file.unlink()
        if files:
            removed.append(job.name)
    return {"kept": [j.name for j in kept], "removed": removed, "unranked": unranked}


def disk_use(sweep_dir: str | Path) -> dict[str, Any]:
    """The bytes of ``sweep_dir``: all of it, its checkpoints, and how many of each kind."""
    sweep_dir = Path(sweep_dir)
    ckpts = list(sweep_dir.glob(f"*/{rundir.CHECKPOINTS}/*.ckpt"))
    last = [p for p in ckpts if p.name == Path(rundir.LAST_CKPT).name]
    return {
        "bytes": _bytes(sweep_dir),
        "checkpoint_bytes": sum(p.stat().st_size for p in ckpts),
        "checkpoints": len(ckpts),
        "resumable_checkpoints": len(last),
        "jobs": sum(1 for p in sweep_dir.iterdir() if p.is_dir() and lifecycle.read_marker(p)),
    }


class SweepCheckpoints(HydraCallback):
    """Hydra callback: when a multirun ends, keep the best ``keep_best_k`` jobs' weights (all
    when ``None``) and write and log ``<sweep>/disk.json``. It logs and never raises.

    Args:
        keep_best_k: how many finished jobs keep their checkpoints; ``None``: all.
        metric: the ``metrics.json`` key that ranks them; ``None``: ``<monitor>_best``, the
            validation value each job's best checkpoint was chosen on.
        mode: ``max`` | ``min``; ``None``: the checkpoint callback's mode.
        tasks: the ``task_name`` values it runs for.
    """

    def __init__(
        self,
        keep_best_k: int | None = None,
        metric: str | None = None,
        mode: str | None = None,
        tasks: Sequence[str] = ("train", "segment"),
    ) -> None:
        if keep_best_k is not None and int(keep_best_k) < 1:
            raise ConfigError(
                f"Expected `keep_best_k` to be an integer >= 1 or null, but got {keep_best_k}."
            )
        self.keep_best_k = None if keep_best_k is None else int(keep_best_k)
        self.metric, self.mode, self.tasks = metric, mode, [str(t) for t in tasks]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if str(config.get("task_name")) not in self.tasks:
            return
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            if not sweep_dir.is_dir():
                return
            summary: dict[str, Any] = {"before": disk_use(sweep_dir)}
            if self.keep_best_k is not None:
                key = self.metric or f"{config.get('monitor')}_best"
                mode = self.mode or OmegaConf.select(
                    config, "callbacks.model_checkpoint.mode", default="max"
                )
                pruned = keep_best_weights(sweep_dir, self.keep_best_k, key, str(mode))
                summary.update(keep_best_k=self.keep_best_k, ranked_by=key, mode=mode, **pruned)
                if pruned["removed"]:
                    log.info(
                        f"Kept the weights of the best {self.keep_best_k} job(s) by {key} "
                        f"({', '.join(pruned['kept'])}); removed those of "
                        f"{len(pruned['removed'])} other(s); their predictions stay."
                    )
            summary["after"] = after = disk_use(sweep_dir)
            atomic_write_json(sweep_dir / DISK, summary)
            log.info(
                f"Sweep disk use: {_mb(after['bytes'])} in {sweep_dir} ({after['jobs']} jobs; "
                f"{after['checkpoints']} checkpoints, {_mb(after['checkpoint_bytes'])}, "
                f"{after['resumable_checkpoints']} of them resumable last.ckpt) [{DISK}]"
            )
        except Exception as err:  # never hide the sweep's results behind a disk summary
            log.error(f"The sweep's disk summary failed ({type(err).__name__}: {err}).")

"""Runs that survive kills and never destroy results.

Every run directory gets a marker file, ``.osteo_run.json``, written when the run starts:
the task name, a hash of the resolved config (volatile keys left out: ``resume``,
``ckpt_path``, the ``paths`` group, anything stamped with ``${now:...}``), the W&B run id and a
state, ``running`` until the run completes, then ``finished``. From it:

* ``resume=auto`` finds the newest unfinished run of the same config that has a
  ``checkpoints/last.ckpt`` and continues *in that directory* (same CSV log, same W&B run);
* ``resume=<run dir>`` continues that run, refusing a different config (the keys are named);
* a run never writes into a directory holding results it did not make;
* a running run's marker carries a heartbeat (rewritten every ``HEARTBEAT_S`` seconds by a
  background thread), so ``resume`` leaves a run alone while its process lives, on this host
  (its pid) or on another node of a shared filesystem (a heartbeat younger than ``STALE_S``).

Every entry point runs inside :func:`session`: it claims the run directory (or continues one),
sets up the loggers, marks the run ``finished`` when the block completes, and on a failure
stops the heartbeat (the run stays ``running``, resumable) and marks the W&B run failed.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from osteolightning.errors import ConfigError, shorten
from osteolightning.runs import rundir
from osteolightning.runs.checks import check_output_location
from osteolightning.runs.failures import user_errors
from osteolightning.utils.config import flatten_config, instantiate_list, to_container
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

MARKER = rundir.MARKER
LAST_CKPT = rundir.LAST_CKPT
#: Top-level keys that may differ between a run and its continuation.
VOLATILE_KEYS = ("resume", "ckpt_path", "paths", "allow_unsafe_pickle")
#: Keys under ``logger.wandb`` set by resuming (the run name carries a timestamp; a multirun's
#: group is its directory's timestamp, so a sweep started again can continue its killed jobs).
VOLATILE_WANDB_KEYS = ("id", "resume", "name", "group")
#: A running run rewrites ``heartbeat`` (epoch seconds) in its marker this often ...
HEARTBEAT_S = 30.0
#: ... and a run on another host whose heartbeat is older than this is taken as dead.
STALE_S = 300.0


# --------------------------------------------------------------------------- config hash


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat ``dotted.key: value`` pairs, volatile keys left out."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key in VOLATILE_KEYS:
            if key in cfg and key != "paths":
                del cfg[key]
        # Paths become placeholders, so values built from them (checkpoint dir, log dirs)
        # compare equal between the run directory and a continuation started elsewhere.
        for key in list(cfg.get("paths") or {}):
            cfg.paths[key] = f"<paths.{key}>"
        wandb = (cfg.get("logger") or {}).get("wandb")
        if wandb is not None:
            for key in VOLATILE_WANDB_KEYS:
                wandb.pop(key, None)
    raw = flatten_config(OmegaConf.to_container(cfg, resolve=False))
    flat = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if "${now:" not in str(raw.get(k, ""))}


def config_hash(flat: dict[str, Any]) -> str:
    """SHA-1 of the flat config (sorted JSON); equal configs give equal hashes."""
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ (or exist on one side only), sorted."""
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


# --------------------------------------------------------------------------- marker


def read_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The marker of ``run_dir``, or ``None`` where there is none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


#: serialises the read-modify-write of markers between the run and its heartbeat thread
_MARKER_LOCK = threading.Lock()


@rank_zero_only
def update_marker(run_dir: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into the marker of ``run_dir`` (atomic write, rank zero only)."""
    with _MARKER_LOCK:
        marker = read_marker(run_dir) or {}
        marker.update(fields, updated=_now())
        atomic_write_json(Path(run_dir) / MARKER, marker)


class _Heartbeat:
    """A daemon thread that rewrites ``heartbeat`` in one run's marker every ``HEARTBEAT_S``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self._stop = run_dir, threading.Event()
        self._thread = threading.Thread(target=self._beat, name="osteo-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                update_marker(self.run_dir, heartbeat=time.time())
            except OSError as err:  # a full or vanished disk must not kill the run
                log.warning(f"Could not update the heartbeat of {self.run_dir}: {err}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


_heartbeat: _Heartbeat | None = None


def start_heartbeat(run_dir: str | Path) -> None:
    """Beat for ``run_dir`` from now on (rank zero; replaces the beat of an earlier run)."""
    global _heartbeat
    stop_heartbeat()
    if rank_zero_only.rank != 0:
        return
    update_marker(run_dir, heartbeat=time.time())
    _heartbeat = _Heartbeat(Path(run_dir))
    _heartbeat.start()


def stop_heartbeat() -> None:
    """Stop the current run's heartbeat (the run finished or failed)."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


def alive_elsewhere(marker: dict[str, Any]) -> bool:
    """Whether another process still runs the run of ``marker``: on this host, its pid is
    alive; on another host (a shared filesystem), its heartbeat is younger than ``STALE_S``."""
    pid = marker.get("pid")
    if marker.get("host") != socket.gethostname():
        beat = marker.get("heartbeat")
        return isinstance(beat, int | float) and time.time() - beat < STALE_S
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _owner(marker: dict[str, Any]) -> str:
    beat = marker.get("heartbeat")
    ago = f", heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, int | float) else ""
    return f"process {marker.get('pid')} on {marker.get('host')}{ago}"


# --------------------------------------------------------------------------- resuming


def find_resumable(log_dir: str | Path, task_name: str, digest: str) -> Path | None:
    """The newest run (or multirun job) of ``task_name`` under ``log_dir`` that is
    ``running``, has config hash ``digest``, a ``last.ckpt``, and no live process."""
    base = Path(log_dir) / task_name
    candidates = [*base.glob(f"runs/*/{MARKER}"), *base.glob(f"multiruns/*/*/{MARKER}")]
    found = []
    for path in candidates:
        marker = read_marker(path.parent) or {}
        ckpt = path.parent / LAST_CKPT
        if marker.get("state") != "running" or marker.get("config_hash") != digest:
            continue
        if not ckpt.is_file():
            continue
        if rank_zero_only.rank == 0 and alive_elsewhere(marker):
            log.info(f"Not resuming {path.parent}: its {_owner(marker)} is still running.")
            continue
        found.append((ckpt.stat().st_mtime, path.parent))
    return max(found)[1] if found else None


def check_resumable(run_dir: Path, flat: dict[str, Any]) -> None:
    """Raise unless ``run_dir`` is an unfinished run of the same config with a checkpoint."""
    marker = read_marker(run_dir)
    if marker is None:
        raise ConfigError(
            f"Cannot resume '{run_dir}': it has no {MARKER} (not an osteolightning run "
            "directory, or one from before resumable runs). Pass ckpt_path=<file.ckpt> to "
            "start a new run from a checkpoint."
        )
    if marker.get("state") == "finished":
        raise ConfigError(f"Cannot resume '{run_dir}': that run has finished.")
    if rank_zero_only.rank == 0 and alive_elsewhere(marker):
        raise ConfigError(
            f"Cannot resume '{run_dir}': its {_owner(marker)} is still running. Stop it "
            f"first; a run on another host counts as stopped {STALE_S:.0f} s after its last "
            "heartbeat."
        )
    if marker.get("config_hash") != config_hash(flat):
        keys = config_diff(marker.get("config", {}), flat)
        shown = shorten(keys, 10, quote=False)
        raise ConfigError(
            f"Cannot resume '{run_dir}': its config differs from this one in {shown}. "
            "Use the same overrides as the run had, or start a new run.",
            details=[
                f"{k}: {marker.get('config', {}).get(k, '<absent>')!r} -> "
                f"{flat.get(k, '<absent>')!r}"
                for k in keys
            ],
        )
    if not (run_dir / LAST_CKPT).is_file():
        raise ConfigError(
            f"Cannot resume '{run_dir}': it has no {LAST_CKPT} (killed before its first "
            "checkpoint). Start a new run."
        )


def check_fresh(output_dir: str | Path) -> None:
    """Raise if ``output_dir`` already holds results (of another run) this run would overwrite."""
    output_dir = Path(output_dir)
    taken = [name for name in rundir.RESULTS if (output_dir / name).exists()]
    if taken:
        raise ConfigError(
            f"The output directory '{output_dir}' already holds results of another run "
            f"({', '.join(taken)}); refusing to write into it. Start a run in a new "
            "directory (leave hydra.run.dir unset, or pick a new one), or continue that run "
            f"with resume={output_dir}."
        )


def _redirect(cfg: DictConfig, run_dir: Path, marker: dict[str, Any]) -> None:
    """Point this invocation at ``run_dir`` before anything is instantiated."""
    fresh = Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.ckpt_path = str(run_dir / LAST_CKPT)
        wandb = (cfg.get("logger") or {}).get("wandb")
        if wandb is not None and marker.get("wandb_id"):
            wandb.id, wandb.resume = marker["wandb_id"], "allow"
            wandb.name = marker.get("wandb_name") or wandb.get("name")
            wandb.group = marker.get("wandb_group") or wandb.get("group")
    if rank_zero_only.rank != 0:
        return
    if fresh.resolve() != run_dir.resolve():
        update_marker(fresh, state="redirected", resumed_in=str(run_dir), pid=os.getpid())
        # This invocation's log also goes to the resumed run's log file.
        handler = logging.FileHandler(run_dir / f"{cfg.task_name}.log")
        handler.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
        )
        logging.getLogger().addHandler(handler)
    log.info(f"Resuming the run in {run_dir} from {cfg.ckpt_path} (this invocation: {fresh}).")


def start_run(cfg: DictConfig) -> Path:
    """Decide where this run writes, then claim that directory with a marker.

    ``cfg.resume``: ``null`` (a fresh run in the Hydra directory), ``auto`` (continue the
    newest unfinished run of the same config, or start fresh) or a run directory (continue it).
    On resuming, ``paths.output_dir``, ``ckpt_path`` and the W&B id/resume are set in ``cfg``.

    Returns:
        The run directory this run writes into.

    Raises:
        ConfigError: the directory holds another run's results, or the run to resume does not
            fit (finished, other config, no checkpoint).
    """
    flat = hashed_config(cfg)
    digest = config_hash(flat)
    resume = cfg.get("resume")
    target: Path | None = None
    if resume and cfg.get("ckpt_path"):
        raise ConfigError("Pass either resume=... or ckpt_path=..., not both.")
    if resume == "auto":
        target = find_resumable(cfg.paths.log_dir, cfg.task_name, digest)
        if target is None:
            log.info(f"resume=auto: no unfinished `{cfg.task_name}` run of this config; new run.")
    elif resume:
        target = Path(str(resume)).expanduser().resolve()
        check_resumable(target, flat)
    if target is not None:
        marker = read_marker(target) or {}
        _redirect(cfg, target, marker)
        update_marker(
            target,
            state="running",
            pid=os.getpid(),
            host=socket.gethostname(),
            resumes=int(marker.get("resumes", 0)) + 1,
        )
        _keep_csv_history(cfg)
        start_heartbeat(target)
        return target
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:
        check_fresh(output_dir)
    update_marker(
        output_dir,
        task_name=cfg.task_name,
        config_hash=digest,
        state="running",
        started=_now(),
        pid=os.getpid(),
        host=socket.gethostname(),
        config=flat,
    )
    start_heartbeat(output_dir)
    return output_dir


def record_loggers(run_dir: str | Path, loggers: Sequence[Any]) -> None:
    """Store the W&B run id and name in the marker, so a continuation logs into the same run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and rank_zero_only.rank == 0:
            run = logger.experiment
            update_marker(run_dir, wandb_id=run.id, wandb_name=run.name, wandb_group=run.group)


def finish_run(run_dir: str | Path) -> None:
    """Mark the run ``finished`` (``resume=auto`` will not pick it again)."""
    stop_heartbeat()
    update_marker(run_dir, state="finished", finished=_now())


# --------------------------------------------------------------------------- CSV history


def _keep_csv_history(cfg: DictConfig) -> None:
    """Lightning's CSVLogger deletes an existing ``metrics.csv``; move it aside so the rows
    logged before the checkpoint can be put back (:func:`restore_csv_history`)."""
    csv_cfg = (cfg.get("logger") or {}).get("csv")
    if csv_cfg is None or rank_zero_only.rank != 0:
        return
    path = Path(csv_cfg.save_dir) / str(csv_cfg.name or "") / str(csv_cfg.version or "")
    path = path / Path(rundir.CSV_METRICS).name
    if path.is_file():
        os.replace(path, path.with_name("metrics.before-resume.csv"))


def restore_csv_history(loggers: Sequence[Any], ckpt_path: str | None) -> None:
    """Give a resumed run's CSVLogger the rows logged before its checkpoint's step."""
    if not ckpt_path or rank_zero_only.rank != 0:
        return
    for logger in loggers:
        if type(logger).__name__ != "CSVLogger":
            continue
        old = Path(logger.log_dir) / "metrics.before-resume.csv"
        if not old.is_file():
            continue
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        step = int(ckpt["global_step"])
        with open(old, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("step") and int(r["step"]) < step]
        writer = logger.experiment  # creating the writer removes any metrics.csv
        writer.metrics = [{k: v for k, v in r.items() if v != ""} for r in rows] + writer.metrics
        logger.save()
        old.unlink()


# --------------------------------------------------------------------------- the lifecycle


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the open W&B run, if any (``exit_code`` 1 marks it failed in W&B).

    Does nothing when ``wandb`` was never imported or no run is open, so it is safe to call
    after a run has already been closed.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


@dataclass
class Session:
    """A running run: its directory, its config (redirected when it continues a run) and its
    loggers (``cfg.logger``, instantiated, hyper-parameters logged)."""

    dir: Path
    cfg: DictConfig
    loggers: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def session(cfg: DictConfig, loggers: bool = True, model_card: bool = True) -> Iterator[Session]:
    """The life of one run, around an entry point's work::

        with lifecycle.session(cfg) as run:     # claims the directory, starts the loggers
            trainer = instantiate(cfg.trainer, logger=run.loggers, ...)
            trainer.fit(...); trainer.test(...)
        # here the run is `finished`; on an exception it stays `running` (resumable)

    On entry: :func:`start_run` (which may point ``cfg`` at the run it continues, so call it
    before anything reads ``cfg.paths.output_dir``), the loggers of ``cfg.logger`` (with
    ``loggers``), a resumed CSV log's earlier rows, the hyper-parameters logged and the W&B id
    recorded. On leaving normally: ``MODEL_CARD.md`` built from the run's files (with
    ``model_card``; :mod:`osteolightning.runs.model_card`), then :func:`finish_run`. On an exception: the heartbeat stops and
    the W&B run is finished as failed, then the exception propagates. Always: the loggers close.

    Raises:
        ConfigError: the directory holds another run's results, or ``resume`` names a run that
            cannot be continued (see :func:`start_run`).
    """
    run_dir = start_run(cfg)
    started: list[Any] = []
    try:
        if loggers:
            started = instantiate_list(cfg.get("logger"), "logger")
            say_wandb_off(cfg)
        restore_csv_history(started, cfg.get("ckpt_path"))
        for logger in started:
            logger.log_hyperparams(to_container(cfg))
        record_loggers(run_dir, started)
        yield Session(run_dir, cfg, started)
        if model_card:
            _write_model_card(run_dir, to_container(cfg))
        finish_run(run_dir)
    except BaseException as err:
        stop_heartbeat()
        if not (run_dir / LAST_CKPT).is_file():  # nothing to continue: the run has failed
            update_marker(run_dir, state="failed", error=f"{type(err).__name__}: {err}"[:500])
        # else the run stays `running`: resume=auto may continue it from last.ckpt at once
        finish_wandb(exit_code=1)  # the W&B run shows as failed, not as finished
        raise
    finally:
        close_loggers(started)


@rank_zero_only
def say_wandb_off(cfg: DictConfig) -> None:
    """One line when a ``debug`` preset (``debug=tiny``) chose a logger group without W&B, which
    the default logs to: the user who did not choose it learns that and where the metrics go."""
    from hydra.core.hydra_config import HydraConfig

    if "wandb" in (cfg.get("logger") or {}) or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    debug, chosen = hydra_cfg.runtime.choices.get("debug"), hydra_cfg.runtime.choices.get("logger")
    given = any(str(o).lstrip("+~").startswith("logger") for o in hydra_cfg.overrides.task)
    if debug and not given:
        log.info(
            f"W&B is off: debug={debug} sets logger={chosen} (the metrics go to "
            f"{Path(cfg.paths.output_dir) / rundir.CSV_DIR} only); add logger=default to log to "
            "W&B too."
        )


@rank_zero_only
def _write_model_card(run_dir: Path, config: dict[str, Any]) -> None:
    """The run's model card; a failure to build it is logged, never fails the finished run."""
    from osteolightning.runs.model_card import write_model_card

    try:
        path = write_model_card(run_dir, config)
        log.info(f"Wrote the model card {path}")
    except Exception as err:  # noqa: BLE001 - the results are written; the card is a summary
        log.warning(f"Could not write {rundir.MODEL_CARD} in {run_dir}: {err!r}")


def close_loggers(loggers: Sequence[Any]) -> None:
    """Finish W&B runs so the next job of a multirun starts its own run."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        finish_wandb(exit_code=0)


class RunDirGuard(HydraCallback):
    """Hydra callback: keep Hydra from writing into a ``hydra.run.dir`` that holds another run's
    results. Hydra runs it before ``run_job`` writes ``.hydra/`` and opens the log file, but turns
    its exceptions into warnings; so it switches both off for that directory, and the job's own
    :func:`start_run` then refuses the directory with a ConfigError.

    A ``hydra.run.dir`` or ``hydra.sweep.dir`` that cannot be created (below a regular file)
    would end in Hydra's ``mkdir`` with an OS traceback, before any code of the command: the
    guard ends the command there with the message alone (exit status 1)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Lightning's DDP launcher restarts the script for ranks > 0 in rank 0's directory.
        if rank_zero_only.rank != 0:
            return
        _refuse_unmakeable(config, "hydra.run.dir")
        # Hydra sets HydraConfig only inside run_job, after this hook: the run dir must resolve
        # without it (paths.root_dir is ${launch_dir:}, not ${hydra:runtime.cwd}).
        try:
            check_fresh(config.hydra.run.dir)
        except ConfigError:
            with open_dict(config):
                config.hydra.output_subdir = None
                config.hydra.job_logging.handlers.file.filename = os.devnull

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rank_zero_only.rank == 0:
            _refuse_unmakeable(config, "hydra.sweep.dir")


def _refuse_unmakeable(config: DictConfig, key: str) -> None:
    """End the command (message alone, exit status 1) when Hydra cannot create ``key``'s
    folder; an exception would only be a warning of Hydra's callbacks."""
    try:
        check_output_location(str(OmegaConf.select(config, key)), key)
    except ConfigError:
        with user_errors(f"osteo-{config.get('task_name', 'train')}"):
            raise

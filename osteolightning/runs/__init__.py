"""The run contract: what a run directory holds and how a run lives, fails, resumes and sweeps.

* :mod:`~osteolightning.runs.rundir`: the run-directory files (their names, readers and writers,
  ``splits.csv`` and the predictions included);
* :mod:`~osteolightning.runs.lifecycle`: a run's life (the marker, ``resume``, the heartbeat,
  :func:`~osteolightning.runs.lifecycle.session`);
* :mod:`~osteolightning.runs.checkpoint_requests`: how a sweep plugin or a signal handler asks
  the fitting run for its resumable checkpoint now;
* :mod:`~osteolightning.runs.checks`: the config checked before any work;
* :mod:`~osteolightning.runs.failures`: how a command ends on the user's mistake;
* :mod:`~osteolightning.runs.sweep`, :mod:`~osteolightning.runs.sweep_resume`,
  :mod:`~osteolightning.runs.sweep_disk`: multirun jobs (failures, continuation, disk);
* :mod:`~osteolightning.runs.model_card`: ``MODEL_CARD.md``, built from a run's own files.

It sits on the floor above :mod:`osteolightning.utils` and below ``data`` and ``metrics``: it
imports nothing from the package's higher floors. Import its modules, not this package's names
(a launcher imports :mod:`~osteolightning.runs.rundir` without torch).
"""

"""Lightning callbacks that write a run's artefacts."""

from osteolightning.callbacks.artifacts import RunArtifacts
from osteolightning.callbacks.evaluation import EvaluationWriter

__all__ = ["EvaluationWriter", "RunArtifacts"]

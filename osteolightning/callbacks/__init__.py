"""Lightning callbacks that write a run's artefacts."""

from osteolightning.callbacks.artifacts import RunArtifacts
from osteolightning.callbacks.evaluation import EvaluationWriter
from osteolightning.callbacks.finetune import FreezeBackbone

__all__ = ["EvaluationWriter", "FreezeBackbone", "RunArtifacts"]

"""Lightning callbacks that write a run's artefacts."""

from osteolightning.callbacks.artifacts import RunArtifacts
from osteolightning.callbacks.best_checkpoint import BestCheckpoint
from osteolightning.callbacks.evaluation import EvaluationWriter
from osteolightning.callbacks.finetune import FreezeBackbone
from osteolightning.callbacks.last_checkpoint import LastCheckpoint

__all__ = ["BestCheckpoint", "EvaluationWriter", "FreezeBackbone", "LastCheckpoint", "RunArtifacts"]

"""Runs from Python: `train(Run(...), out)` and `evaluate(EvalRun(...), out)`, no Hydra needed."""

from kdlight.run.evaluate import EvalRun, evaluate
from kdlight.run.spec import Run, RunResult
from kdlight.run.train import train

__all__ = ["EvalRun", "Run", "RunResult", "evaluate", "train"]

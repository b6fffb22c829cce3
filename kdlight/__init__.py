"""kdlight: knowledge distillation of autoregressive language models with Lightning and Hydra.

    from kdlight import Run, train, EvalRun, evaluate

Importing the package is cheap on purpose (no torch until one of the names above is used): the
SQL scorer's worker processes import `kdlight.eval` only.
"""

__version__ = "0.1.0"
__all__ = ["EvalRun", "Run", "RunResult", "evaluate", "train"]


def __getattr__(name: str):
    if name in __all__:
        import kdlight.run

        return getattr(kdlight.run, name)
    raise AttributeError(f"module 'kdlight' has no attribute '{name}'")

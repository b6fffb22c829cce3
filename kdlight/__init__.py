"""kdlight: knowledge distillation of autoregressive language models with Lightning and Hydra.

Importing the package is cheap on purpose (no torch): the SQL evaluator's worker processes import
`kdlight.eval` only.
"""

__version__ = "0.1.0"

"""Text-to-SQL scoring: safe execution, the three comparators, exact match, EX/TS/EM."""

from kdlight.eval.sql.scorer import ExecutionLimits, SqlScorer

__all__ = ["ExecutionLimits", "SqlScorer"]

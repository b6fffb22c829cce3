"""Evaluation: safe SQL execution, result comparators, exact match and the text-to-SQL scorer.

This package imports no torch, so the scorer's worker processes start quickly.
"""

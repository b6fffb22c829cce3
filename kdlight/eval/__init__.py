"""Scorers: decoded predictions in, metrics and per-example records out (SQL execution, NLG, answers, text match).

This package imports no torch, so the SQL scorer's worker processes start quickly.
"""

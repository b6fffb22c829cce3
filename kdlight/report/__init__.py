"""Comparison tables and charts built from runs' metrics.json files."""

from kdlight.report.table import Column, comparison_rows, format_markdown, plot_comparison, write_csv

__all__ = ["Column", "comparison_rows", "format_markdown", "plot_comparison", "write_csv"]

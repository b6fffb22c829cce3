"""Reports from run folders: one table stack (collect -> aggregate -> Markdown/CSV/chart) and paired tests."""

from kdlight.report.write import ReportSpec, write_report

__all__ = ["ReportSpec", "write_report"]

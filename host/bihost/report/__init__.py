"""`bihost report`: one HTML page with PNG figures from whatever the results store holds."""

from .page import Report, write_report
from .selection import ReportData, select

__all__ = ["Report", "ReportData", "select", "write_report"]

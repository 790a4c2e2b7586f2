"""Reports of a finished scan for people: one self-contained HTML page (:func:`write_report`)."""

from .html import write_report

__all__ = ["write_report"]

"""Kanban bins, reorder alarms, history and report (issue #8)."""

"""Placeholder: Kanban analytics lands with issue #8."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def report_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("Kanban analytics is not available yet (issue #8)")


def refilled_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("Kanban analytics is not available yet (issue #8)")

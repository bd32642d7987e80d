"""Placeholder: the live daemon lands with issue #3/4."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def run_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("the live daemon is not available yet (issue #3/4)")

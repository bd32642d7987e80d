"""Placeholder: discover lands with issue #3."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def discover_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("discover is not available yet (issue #3)")

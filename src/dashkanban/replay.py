"""Placeholder: replay lands with issue #3."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def replay_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("replay is not available yet (issue #3)")

"""Placeholder: the sandbox lands with issue #5."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def sandbox_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("the sandbox is not available yet (issue #5)")

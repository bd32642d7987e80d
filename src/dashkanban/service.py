"""Placeholder: the systemd service lands with issue #7."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def install_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("the systemd service is not available yet (issue #7)")


def uninstall_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("the systemd service is not available yet (issue #7)")

"""Placeholder: the outbox lands with issue #6."""

from __future__ import annotations

import argparse

from dashkanban.errors import NotAvailableError


def status_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("the outbox is not available yet (issue #6)")


def flush_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("the outbox is not available yet (issue #6)")

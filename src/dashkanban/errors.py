"""One exception hierarchy; each error knows its exit code (docs/cli.md lists the exit codes).

Messages are written for the user: one sentence, with the fix where there is one. Secrets never go
into a message.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNDELIVERED = 3


class DashkanbanError(Exception):
    """Any failure the CLI reports in one line. Exit code 1 unless a subclass says otherwise."""

    exit_code = EXIT_FAILURE


class ConfigError(DashkanbanError):
    """A usage or configuration error: the config file, the buttons file, or an argument."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        if self.path is None:
            return self.message
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class CaptureError(DashkanbanError):
    """A frame source could not be opened or read (a corrupt file, a missing interface)."""


class PermissionDeniedError(CaptureError):
    """Live capture needs CAP_NET_RAW; a usage problem, so exit code 2."""

    exit_code = EXIT_USAGE


class UplinkError(DashkanbanError):
    """Cumulocity could not be reached or refused us."""


class UndeliveredError(DashkanbanError):
    """Events could not be delivered in time; they stay queued in the outbox (exit code 3)."""

    exit_code = EXIT_UNDELIVERED

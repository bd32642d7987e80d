"""The sandbox's own tests use the reusable fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.sandbox_fixture import device_factory, sandbox, sandbox_tls

__all__ = ["device_factory", "sandbox", "sandbox_tls"]


@pytest.fixture(autouse=True)
def _no_stale_root_handlers() -> Iterator[None]:
    """Earlier tests that run `cli.main()` in-process leave `setup_logging`'s handler on the root
    logger, bound to a capture stream pytest has since closed; the sandbox thread's log lines then
    print "--- Logging error ---". Drop such handlers for these tests and restore them after."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [
        h for h in saved
        if not (isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False))
    ]
    yield
    root.handlers[:] = saved

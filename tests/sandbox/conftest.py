"""The sandbox's own tests use the reusable fixtures."""

from __future__ import annotations

from tests.sandbox_fixture import device_factory, sandbox, sandbox_tls

__all__ = ["device_factory", "sandbox", "sandbox_tls"]


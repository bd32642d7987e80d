"""The sandbox's own tests use the reusable fixtures."""

from tests.sandbox_fixture import device_factory, sandbox, sandbox_tls

__all__ = ["device_factory", "sandbox", "sandbox_tls"]

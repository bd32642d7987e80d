"""Fixtures of the real-process tests."""

from tests.e2e.netns import veth_pair
from tests.sandbox_fixture import sandbox, sandbox_tls

__all__ = ["sandbox", "sandbox_tls", "veth_pair"]

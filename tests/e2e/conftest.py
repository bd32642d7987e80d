"""Fixtures of the real-process tests."""

from tests.e2e.netns import veth_pair

__all__ = ["veth_pair"]

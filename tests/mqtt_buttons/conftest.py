"""The MQTT buttons' tests use the sandbox as Cumulocity."""

from __future__ import annotations

from tests.sandbox_fixture import sandbox

__all__ = ["sandbox"]

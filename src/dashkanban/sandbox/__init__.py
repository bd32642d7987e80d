"""The local Cumulocity stand-in (docs/sandbox.md): `Sandbox(SandboxOptions(...)).start()`."""

from dashkanban.sandbox.broker import BrokerRules
from dashkanban.sandbox.server import Sandbox, SandboxError, SandboxOptions

__all__ = ["BrokerRules", "Sandbox", "SandboxError", "SandboxOptions"]

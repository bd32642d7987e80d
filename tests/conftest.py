"""Shared fixtures: real brokers, certificates and files made per test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.brokers import Mosquitto, TlsFiles, free_port, make_tls_files, mosquitto_binary

if TYPE_CHECKING:
    from tests.c8y.support import Recorder

BROKER_USER = "t12345/dash-gateway"
BROKER_PASSWORD = "s3cret-test-pw"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`cli.main()` run in-process sets up the root logger on a stream pytest later closes; put
    the root logger back after each test so no later test logs into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("dashkanban.sandbox", "httpx")}
    # A handler bound to a stream pytest has closed would print "--- Logging error ---" for
    # every line a background thread (the sandbox, say) logs: leave such handlers out meanwhile.
    root.handlers[:] = [
        h for h in handlers
        if not (isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False))
    ]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def _need_mosquitto() -> None:
    if mosquitto_binary() is None:
        pytest.skip("Debian's mosquitto is not installed (make test installs it when run as root)")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Plain MQTT, anonymous."""
    _need_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_password(tmp_path: Path) -> Iterator[Mosquitto]:
    """Plain MQTT with a password file holding BROKER_USER / BROKER_PASSWORD."""
    _need_mosquitto()
    broker = Mosquitto(
        tmp_path / "mosquitto", free_port(), users={BROKER_USER: BROKER_PASSWORD}
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_tls(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    """MQTT over TLS (server certificate for localhost and 127.0.0.1) with password auth."""
    _need_mosquitto()
    broker = Mosquitto(
        tmp_path / "mosquitto",
        free_port(),
        tls=tls_files,
        users={BROKER_USER: BROKER_PASSWORD},
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def recorder(mosquitto_tls: Mosquitto, tls_files: TlsFiles) -> Iterator[Recorder]:
    """An independent subscriber to `#` on the TLS broker: what Cumulocity would have received."""
    from tests.c8y.support import Recorder

    rec = Recorder(mosquitto_tls, tls_files)
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def system_dashkanban() -> Iterator[Path]:
    """`bin/dashkanban` of a venv made by the system's Python under /opt/dashkanban-tests (as
    root), holding its own copy of the package: what `service install` accepts and what `nobody`
    can run, wherever the checkout lives. Made once per test run."""
    import shutil

    from tests.service_helpers import make_system_venv, system_python_usable, system_venv_folder

    reason = system_python_usable()
    if reason:
        pytest.skip(reason)
    folder = system_venv_folder("test-venv")
    shutil.rmtree(folder, ignore_errors=True)
    yield make_system_venv(folder)
    shutil.rmtree(folder, ignore_errors=True)
